"""Model zoo: native CIFAR families, the paper's CNNs, and timm/torchvision by name; taps on any of them.

Models import only `errors` (and torch/timm/torchvision); a pruned spec's structural plan is replayed
by `pruning.rebuild`, never here.
"""

from indistill_cli.models.registry import (  # noqa: F401
    build_model,
    check_spec,
    list_models,
    load_state,
    make_spec,
    parse_name,
    probe_taps,
    spec_name,
)

# the native families register themselves with the registry on import (importing any module of this
# package runs this file first, so the registry is complete before it is used)
from indistill_cli.models import cifar_resnet, cnn, preact_resnet, vgg, wrn  # noqa: E402,F401
