"""`indistill import`: its options are `stages.commands.ImportSettings`; the work is `stages.importer`."""

from __future__ import annotations

from typing import Any

from indistill_cli.cli.app import app
from indistill_cli.cli.options import command
from indistill_cli.stages.commands import ImportSettings


@command(app, ImportSettings)
def import_(s: ImportSettings) -> Any:
    """Bring a teacher trained elsewhere in as an indistill checkpoint, and evaluate it on the data.

    Reads the file without running code (torch.load with weights_only=True), unwraps training-checkpoint
    containers (state_dict, model, model_ema, ema) and the module. / _orig_mod. prefixes of DDP and
    torch.compile, and loads the keys strictly into the architecture built at the data's size. The
    normalisation and input size go into the checkpoint's spec, the file's sha256 into its history; the
    validation top-1 is printed at once.

    Examples:

        indistill import resnet50_finetuned.pth --arch tv:resnet50 --data imagefolder:flowers -o teacher.safetensors

        indistill import model.safetensors --arch timm:vit_small_patch16_224 --data cifar10 --image-size 224 -o vit.safetensors

        indistill import timm:resnet18.a1_in1k --data imagefolder:pets --new-head -o r18.safetensors
    """
    from indistill_cli.stages.importer import run_import

    return run_import(s)
