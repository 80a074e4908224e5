"""`indistill import`: a teacher trained elsewhere becomes an indistill checkpoint.

The source is a foreign file (`.pth`/`.pt`/`.bin` from `torch.save`, a timm / Hugging Face `.safetensors`)
whose keys are fitted onto `--arch` built at the data's shape (`models.imported`), or a hub id
(`timm:NAME`, `hf-hub:ORG/NAME`) whose published weights are fetched. The spec records the normalisation
the weights expect (`--mean/--std`, else the published configuration, else the data's) and the input size;
the history records the source and its sha256. The imported model is evaluated on the validation split at
once, so a teacher whose classes do not line up with the folder's shows it before any distillation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.errors import BadInput
from indistill_cli.io.spec import ModelSpec
from indistill_cli.metrics import classify
from indistill_cli.models import create_model
from indistill_cli.models.create import source_of
from indistill_cli.models.imported import SUFFIXES, Fit, file_channels, fit_weights, read_foreign
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import ImportSettings
from indistill_cli.stages.session import Session

HUB_PREFIXES = ("timm:", "hf-hub:", "tv:")


def hub_arch(source: str) -> str | None:
    """The architecture a hub id names (hf-hub ids are timm's), or None for a file."""
    if source.startswith("hf-hub:"):
        return "timm:" + source
    return source if source.startswith(("timm:", "tv:")) else None


def parse_floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{option} takes comma-separated numbers (e.g. 0.485,0.456,0.406), got '{text}'") from None
    if not values:
        raise BadInput(f"{option} takes comma-separated numbers (e.g. 0.485,0.456,0.406), got '{text}'")
    return values


class Import(Stage):
    name = "import"
    s: ImportSettings

    def __init__(self, s: ImportSettings, tracker: Any = None) -> None:
        super().__init__(s, tracker)
        self.source, self.arch, self.new_head, self.ema = s.source, s.arch, s.new_head, s.ema
        self.ignore = list(s.ignore)
        self.mean, self.std = parse_floats(s.mean, "--mean"), parse_floats(s.std, "--std")

    def check(self) -> None:
        hub = hub_arch(self.source)
        if hub is not None:
            if self.arch and self.arch != hub:
                raise BadInput(f"{self.source} is a hub id: it names its own architecture; drop --arch {self.arch}")
            self.arch = hub
        elif not self.arch:
            raise BadInput(f"{self.source}: give the architecture the weights were trained as, e.g. --arch tv:resnet50 "
                           f"or --arch timm:vit_small_patch16_224 (or a native name such as resnet56)")
        elif Path(self.source).suffix.lower() not in SUFFIXES:
            raise BadInput(f"{self.source}: import reads .pth / .pt / .bin (torch.save) and .safetensors files, or a "
                           f"hub id (timm:NAME, hf-hub:ORG/NAME)")
        if (self.mean is None) != (self.std is None):
            raise BadInput("--mean and --std go together: give both, or neither")
        if self.std is not None and (len(self.std) != len(self.mean) or min(self.std) <= 0):
            raise BadInput("--std needs one positive number per --mean value")
        if self.ignore and hub is not None:
            raise BadInput("--ignore applies to files; hub weights are loaded as published")

    def execute(self, s: Session) -> Result:
        info = s.ds.info
        hub = hub_arch(self.source) is not None
        built = create_model(self.arch, info.shape, self.opts.seed, pretrained=hub)
        spec, model = built
        if hub:
            self.foreign, fit = None, Fit(len(model.state_dict()), [], [])
            how = f"{self.source}: published weights"
        else:
            self.foreign = read_foreign(self.source, self.ema)
            channels = file_channels(model, source_of(spec.arch).adapt_foreign(model, dict(self.foreign.state)))
            if channels in (1, 3) and channels != spec.in_channels:  # keep the stem the weights were trained for
                progress.info(f"{self.source}: its weights take {channels}-channel images; the data's "
                              f"{info.in_channels}-channel images are adapted to them")
                spec, model = create_model(self.arch, info.shape._replace(in_channels=channels), self.opts.seed)
            fit = fit_weights(model, spec, self.foreign, self.new_head, self.ignore)
            how = f"{self.source}: {self.foreign.describe()}; {fit.loaded} tensors into {spec.name}"
        self.spec = spec.replace(norm=self._norm(spec, model))
        self.model, self.fit = model, fit
        self.note_fit(fit, how)
        return self.result(s, self.evaluate(s))

    def _norm(self, spec: ModelSpec, model: torch.nn.Module) -> dict[str, list[float]]:
        """--mean/--std, else what the architecture's published weights expect, else the data's (said once)."""
        if self.mean is not None:
            norm, why = {"mean": self.mean, "std": self.std}, "--mean/--std"
        else:
            published = source_of(spec.arch).weights_norm(model)
            norm, why = (published, "the architecture's published configuration") if published else \
                (dict(spec.norm), f"the data's ({self.session.ds.info.name}); pass --mean/--std if the weights "
                                  f"were trained with another")
        if spec.in_channels == 1 and len(norm["mean"]) == 3 and self.mean is None:  # RGB statistics, gray stem
            norm = {k: [sum(v) / 3] for k, v in norm.items()}
        if len(norm["mean"]) not in (1, spec.in_channels):
            raise BadInput(f"--mean has {len(norm['mean'])} values for a {spec.in_channels}-channel model")
        progress.info(f"normalisation mean {norm['mean']} std {norm['std']} ({why}); input "
                      f"{spec.in_channels}x{spec.input_size[0]}x{spec.input_size[1]}")
        return norm

    def note_fit(self, fit: Fit, how: str) -> None:
        progress.info(how)
        if fit.ignored:
            progress.info(f"ignored {len(fit.ignored)} tensors of the file (--ignore): {', '.join(fit.ignored[:4])}"
                          + (" ..." if len(fit.ignored) > 4 else ""))
        if fit.new_head:
            progress.warn(f"--new-head: {', '.join(fit.new_head)} start fresh for {self.spec.num_classes} classes; "
                          f"fine-tune it with `indistill train {self.out} --data {self.opts.data} -o tuned.safetensors`"
                          f" before using it as a teacher")

    def evaluate(self, s: Session) -> dict[str, Any]:
        """Top-1 on the validation split (the test split without one): does the teacher work on this data?"""
        split = s.val_split or "test"
        model = self.model.to(s.rt.device)
        r = classify(model, s.eval_loader(split, self.spec, shard=False), s.rt, s.ds.info.num_classes)
        self.top1 = r["top1"]
        chance = 1 / s.ds.info.num_classes
        progress.info(f"imported {self.spec.name}: {split} top-1 {100 * r['top1']:.2f}% on {r['n']} images of "
                      f"{s.ds.info.name} (chance {100 * chance:.1f}%)" + (" - a fresh head, untrained"
                                                                         if self.fit.new_head else ""))
        return {"stage": "import", "model": self.spec.name, "source": self.source, "output": self.out,
                "split": split, "top1": r["top1"], "n": r["n"], "new_head": self.fit.new_head,
                "tensors": self.fit.loaded, "norm": self.spec.norm, "input_size": list(self.spec.input_size),
                "sha256_source": self.foreign.sha256 if self.foreign else None, "wall_s": round(self.wall(), 3)}

    def result(self, s: Session, summary: dict[str, Any]) -> Result:
        """The checkpoint: the weights, the spec with its normalisation, the source (and its sha256) as parent."""
        f = self.foreign
        parent = {"path": self.source, "sha256": f.sha256} if f else {"hub": self.source}
        options = {"arch": self.spec.name, "ignore": self.ignore, "norm": self.spec.norm}
        extra = {"format": f.fmt, "container": f.container, "prefixes": f.stripped} if f else {}
        entry = self.entry(s, options, [parent], {f"{summary['split']}_top1": self.top1}, **extra)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return Result(summary, state, self.spec, [], entry, {"dataset": s.ds.info.as_dict()})

    def report(self, r: Result) -> None:
        progress.info(f"wrote {self.out if self.out != '-' else 'stdout'}: use it as --teacher, or `indistill "
                      f"inspect` it")


def run_import(settings: ImportSettings) -> dict[str, Any]:
    """Bring `settings.source` (a foreign file or a hub id) in as an indistill checkpoint (see `Import`)."""
    return Import(settings).run()
