"""What a source of architectures provides: native families, timm and torchvision are the three.

A source checks a name, builds a module for a spec, and declares the module's taps in one place
(`declare`): which modules are taps, which is the embedding, where pre-activations are, and how a tap's
output becomes a feature map (token models). `models.create.create_model` dispatches on the spec's
source and does the rest (seeding, probing, size errors, weights) the same way for all of them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn

from indistill_cli.io.spec import ModelSpec


class Source:
    prefix: ClassVar[str]  # the name prefix before ':' ("" for the native families)

    def check(self, arch: str, width: float, args: dict[str, Any] | None) -> None:
        """BadInput when the name is unknown or its width / constructor arguments do not apply."""

    def in_channels(self, data_channels: int) -> int:
        """The channels a model of this source takes for data of `data_channels` (grayscale may be repeated)."""
        return data_channels

    def build(self, spec: ModelSpec, pretrained: bool) -> nn.Module:
        """A fresh module for the spec (hub weights when `pretrained`); taps are declared separately."""
        raise NotImplementedError

    def declare(self, model: nn.Module, spec: ModelSpec) -> None:
        """Set `tap_names` and `embedding_name` (and `preact_taps`, `tap_layouts` where they exist) on a fresh
        module. Native families set them in their constructors."""

    def adapt_foreign(self, model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
        """A foreign state dict in the layout this source's module loads (e.g. a position embedding resampled
        to the module's input size); the keys as they are by default."""
        return state

    def weights_norm(self, model: nn.Module) -> dict[str, list[float]] | None:
        """The normalisation this architecture's published weights expect (None: nothing is known)."""
        return None

    def load_hint(self, spec: ModelSpec, filename: str) -> str:
        """One line of Python that loads a plain state dict of this model (`export --format state-dict`)."""
        return (f"from indistill_cli.io.spec import ModelSpec; from indistill_cli.models import create_model; "
                f"from safetensors.torch import load_file; m = create_model(ModelSpec.from_dict(SPEC)).model; "
                f"m.load_state_dict(load_file('{filename}'))  # SPEC: the checkpoint's spec (indistill inspect --json)")

    def default_size(self, model: nn.Module | None, arch: str) -> int | None:
        """The input size the architecture is usually run at (named in size errors), when known."""
        return None
