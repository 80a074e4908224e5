"""Model zoo: native CIFAR families, the paper's CNNs, and timm/torchvision by name."""

from indistill_cli.models.registry import (  # noqa: F401
    build_model,
    list_models,
    load_state,
    make_spec,
    model_from_checkpoint,
    parse_name,
    spec_name,
)
