"""Models: one door (`create_model`), three sources (the native families, timm, torchvision), taps on all.

Models import only `io` (and `errors`, torch, timm, torchvision): a spec is `io.spec.ModelSpec`, and a
chained pruned teacher's structural plan is replayed here (`structural`) when its spec is built, so no
layer above builds a module any other way.
"""

from indistill_cli.io.spec import DataShape, ModelSpec  # noqa: F401
from indistill_cli.models.create import Built, create_model, load_state, parse_name, probe_taps  # noqa: F401
from indistill_cli.models.registry import list_models  # noqa: F401

# the native families register themselves with the registry on import (importing any module of this
# package runs this file first, so the registry is complete before it is used)
from indistill_cli.models import cifar_resnet, cnn, preact_resnet, vgg, wrn  # noqa: E402,F401
