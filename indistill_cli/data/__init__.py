"""Data: built-in sets, splits, one sharding rule, the tensor loader and the folder loader.

Imports only `io`-free bottom utilities (errors, progress); models never see this package's internals,
only the `DataInfo` they are built for.
"""

from indistill_cli.data.base import Batch, Dataset, DataInfo, Split, check_compatible, serving_phrase  # noqa: F401
from indistill_cli.data.builtin import BUILTIN, FASHION_CLASSES, NAMES, PACKAGE_DATA, data_root, locate  # noqa: F401
from indistill_cli.data.datasets import load_dataset, make_loader, serve_size  # noqa: F401
from indistill_cli.data.pixels import crop_flip, fit_size  # noqa: F401
from indistill_cli.data.tensor_loader import TensorLoader  # noqa: F401
