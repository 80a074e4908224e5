"""`indistill import`: parse, then `stages.importer`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from indistill_cli.cli.app import app, run
from indistill_cli.cli.options import OUTPUT, command, run_options


@command(app, ("source", "arch", "output", "data", "new_head", "mean", "std", "ema", "ignore", "val_fraction",
               "data_root", "image_size", "cache", "eval_batch_size", "seed", "device", "precision", *OUTPUT),
         command_name="import")
def import_(
    source: Annotated[str, typer.Argument(help="Weights to bring in: a .pth / .pt / .bin (torch.save of a state dict "
                                               "or of a training checkpoint), a .safetensors (timm / Hugging Face), "
                                               "or a hub id: timm:NAME or hf-hub:ORG/NAME (published weights).")],
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="The architecture the file was trained as: "
                                                "timm:NAME, tv:NAME or a native name (not for hub ids).")] = None,
    new_head: Annotated[bool, typer.Option("--new-head", help="Replace a classifier trained for another number of "
                                           "classes with a fresh one for the data's (fine-tune it with `indistill "
                                           "train OUT`).")] = False,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean the weights expect, e.g. 0.485,0.456,0.406 "
                                                "(default: the architecture's published configuration, else the "
                                                "data's).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std the weights expect (with --mean).")] = None,
    ema: Annotated[bool, typer.Option("--ema", help="Take the EMA weights of a training checkpoint (model_ema, ema, "
                                      "state_dict_ema).")] = False,
    ignore: Annotated[Optional[list[str]], typer.Option("--ignore", help="Glob of file keys to leave out (e.g. "
                                                        "'aux_head.*'), repeatable; everything else must match the "
                                                        "architecture exactly.")] = None,
    **o: Any,
) -> None:
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
    def body() -> Any:
        from indistill_cli.stages.importer import run_import

        opts = run_options(o, augment=False)
        return run_import(source, arch, o["output"], opts, new_head=new_head, mean=mean, std=std, ema=ema,
                          ignore=ignore or [], force=o["force"])

    run(body, o["json_out"], o["quiet"], o["output"])
