"""`indistill compare`: what compression bought, model beside model: parameters, MACs, bytes on disk,
latency on this machine (eager and an optimised path), and with --data the accuracy and retrieval mAP it
cost; every figure also as a ratio against the first model (the reference, usually the teacher).

Quality comes from the `evaluate` and `retrieve` stages themselves, so the numbers are theirs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from indistill_cli import progress
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import Checkpoint, read_source
from indistill_cli.metrics import cost
from indistill_cli.metrics.scores import Scores
from indistill_cli.models import export as ex
from indistill_cli.models import ModelSpec, create_model
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import CompareSettings, EvaluateSettings, RetrieveSettings
from indistill_cli.stages.evaluate import run_evaluate
from indistill_cli.stages.export import deployable_checkpoint
from indistill_cli.stages.retrieve import run_retrieve
from indistill_cli.stages.session import Session, check_batch

OPTIMIZED = ("auto", "onnxruntime", "compile", "none")


@dataclasses.dataclass
class CompareConfig:
    """How the models are timed: batches, runs, threads, and which optimised path (if any)."""

    batch: int = 64
    runs: int = 30
    warmup: int = 5
    threads: int | None = None
    optimized: str = "auto"

    def check(self) -> None:
        if self.batch < 1 or self.runs < 1 or self.warmup < 0:
            raise BadInput("--batch and --runs must be at least 1, --warmup at least 0")
        if self.threads is not None and self.threads < 1:
            raise BadInput(f"--threads must be at least 1, got {self.threads}")
        if self.optimized not in OPTIMIZED:
            raise BadInput(f"--optimized must be one of {', '.join(OPTIMIZED)}, got '{self.optimized}'")


def _label(ck: Checkpoint, taken: set[str]) -> str:
    """A short name for a row: the file's stem, with its folder when another row has that stem."""
    if ck.source == "stdin":
        return "stdin"
    p = Path(ck.source)
    stem = p.name.removesuffix(".safetensors")
    for label in (stem, f"{p.parent.name}/{stem}", ck.source):
        if label not in taken:
            return label
    return f"{ck.source} ({len(taken)})"


def optimised_runner(kind: str, model: torch.nn.Module, spec: ModelSpec, threads: int) -> Any:
    """fn(x) for the optimised path: onnxruntime (CPU) on the model exported in memory, or torch.compile."""
    if kind == "compile":
        return torch.compile(model)
    ex.onnx_available()
    deploy = ex.Deployable(model, "logits", spec.embedding.name)
    data, _ = ex.to_onnx(deploy, torch.zeros(2, spec.in_channels, *spec.input_size), {})
    return ex.onnx_runner(data, threads)


def timed_paths(device: torch.device, channels_last: bool, optimized: str, threads: int) -> dict[str, dict[str, Any]]:
    """What each timed path runs on and in what precision (--json's `paths`, the latency table's heads).
    Eager runs the fp32 model on the run's device, without autocast (--precision is for training); the
    onnxruntime path runs the exported fp32 graph on the CPU whatever the device (CPUExecutionProvider);
    torch.compile runs where eager does."""
    eager = {"device": str(device), "precision": "fp32",
             "layout": "channels_last" if channels_last else "contiguous"}
    if device.type == "cpu":
        eager["threads"] = threads
    paths = {"eager": eager}
    if optimized == "onnxruntime":
        paths["onnxruntime"] = {"device": "cpu", "precision": "fp32", "layout": "contiguous", "threads": threads}
    elif optimized == "compile":
        paths["compile"] = dict(eager)
    return paths


def path_head(name: str, path: dict[str, Any]) -> str:
    """A latency column's head: the path, where it ran and in what precision, e.g. 'onnxruntime cpu fp32'."""
    return f"{name} {path['device']} {path['precision']}"


class Compare(Stage):
    name = "compare"
    loads_data = False  # quality, with --data, comes from the evaluate and retrieve stages

    s: CompareSettings

    def __init__(self, s: CompareSettings, tracker: Any = None) -> None:
        super().__init__(s, tracker)
        self.models, self.quality, self.plot = s.models, s.data is not None, s.plot
        self.cfg = CompareConfig(s.batch, s.runs, s.warmup, s.threads, s.optimized)  # `auto` resolved in prepare

    def check(self) -> None:
        if not self.models:
            raise BadInput("give at least one checkpoint (the first is the reference the others are compared with)")
        self.cfg.check()
        if self.plot and not self.quality:
            raise BadInput("--plot draws top-1 against latency: give --data too")

    def prepare(self) -> None:
        self.cks = [deployable_checkpoint(m) for m in self.models]
        classes = {c.spec.name + f" ({c.source})": c.spec.num_classes for c in self.cks}
        if self.quality and len(set(classes.values())) > 1:
            shown = ", ".join(f"{k}: {v}" for k, v in classes.items())
            raise BadInput(f"--data scores every model on one dataset, but their class counts differ ({shown})")
        self.threads_before = torch.get_num_threads()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        opt = self.cfg.optimized
        if opt == "auto":
            try:
                ex.onnx_available()
                self.cfg.optimized = "onnxruntime"
            except BadInput:
                self.cfg.optimized, self.no_opt = "none", "onnxruntime not installed (pip install 'indistill[export]')"
        elif opt == "onnxruntime":
            ex.onnx_available()

    def measure(self, ck: Checkpoint, s: Session, bars: Any, task: Any) -> dict[str, Any]:
        """Size, parameters, MACs (batch 1) and latency at batch 1 and --batch, eager and optimised."""
        spec, device, cfg = ck.spec, s.rt.device, self.cfg
        check_batch(spec, cfg.batch, False, device)
        model = create_model(ck).model.eval()
        row: dict[str, Any] = {"checkpoint": ck.source, "model": spec.name, "sha256": ck.sha256,
                               "parameters": cost.parameters(model), "file_bytes": len(read_source(ck.source)),
                               "macs": cost.macs(model, torch.zeros(1, spec.in_channels, *spec.input_size))}
        fmt = torch.channels_last if s.rt.channels_last else torch.contiguous_format
        model = model.to(device, memory_format=fmt)
        sync = torch.cuda.synchronize if device.type == "cuda" else None
        tick = lambda: bars.advance(task)  # noqa: E731
        paths: dict[str, Any] = {"eager": model}
        if cfg.optimized != "none":
            try:
                paths[cfg.optimized] = optimised_runner(cfg.optimized, model.cpu() if cfg.optimized == "onnxruntime"
                                                        else model, spec, torch.get_num_threads())
            except Exception as e:  # noqa: BLE001 - the optimised path failing is a row's note, not the command's
                paths[cfg.optimized] = f"n/a: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
            model.to(device)
        row["latency"] = {}
        for name, fn in paths.items():
            def x(b: int) -> torch.Tensor:  # onnxruntime reads contiguous CPU arrays; torch the run's layout
                t = torch.randn(b, spec.in_channels, *spec.input_size)
                return t if name == "onnxruntime" else t.to(device).contiguous(memory_format=fmt)

            row["latency"][name] = {"error": fn} if isinstance(fn, str) else {
                str(b): cost.latency(fn, x(b), cfg.warmup, cfg.runs, sync, tick) for b in dict.fromkeys((1, cfg.batch))}
        return row

    def score(self, ck: Checkpoint, row: dict[str, Any]) -> None:
        """The test `Scores` (percent): top-1/5 (evaluate) and retrieval mAP and P@100 (retrieve: train split as
        database, test as queries)."""
        with progress.silenced():
            batch = self.opts.eval_batch_size
            ev = run_evaluate(EvaluateSettings(model=ck.source, split="test", per_class=False, batch_size=batch,
                                               opts=self.opts))
            rt = run_retrieve(RetrieveSettings(model=ck.source, batch_size=batch,
                                               opts=dataclasses.replace(self.opts, val_fraction=0.0)))
        row.update({**Scores.from_stages(ev, rt).as_dict(), "data": ev["data"]})

    def execute(self, s: Session) -> Result:
        cfg = self.cfg
        n_paths = 1 + (cfg.optimized != "none")
        rows = []
        with progress.bar() as bars:
            task = bars.add_task("time", total=len(self.cks) * n_paths * len({1, cfg.batch}) * (cfg.warmup + cfg.runs),
                                 status="")
            for ck in self.cks:
                bars.update(task, description=f"time {ck.spec.name}")
                rows.append(self.measure(ck, s, bars, task))
        if self.quality:
            with progress.bar() as bars:
                task = bars.add_task("evaluate + retrieve", total=len(self.cks), status="")
                for ck, row in zip(self.cks, rows):
                    self.score(ck, row)
                    bars.advance(task)
        taken: set[str] = set()
        for ck, row in zip(self.cks, rows):
            row["label"] = _label(ck, taken)
            taken.add(row["label"])
            row["vs_reference"] = ratios(rows[0], row, cfg.batch)
        out = {"reference": rows[0]["label"], "device": s.rt.device_name(), "threads": torch.get_num_threads(),
               "paths": timed_paths(s.rt.device, s.rt.channels_last, cfg.optimized, torch.get_num_threads()),
               "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
               "batch": cfg.batch, "runs": cfg.runs, "warmup": cfg.warmup, "optimized": cfg.optimized,
               "macs_counter": "torch.utils.flop_counter (conv, linear, matmul), MACs = FLOPs / 2, batch 1",
               "models": rows, "wall_s": round(self.wall(), 3)}
        if getattr(self, "no_opt", None):
            out["optimized_note"] = self.no_opt
        show(out)
        if self.plot:
            self.draw(out)
        return Result(out, artifacts=[self.plot] if self.plot else [])

    def finish(self) -> None:
        torch.set_num_threads(self.threads_before)  # --threads is this command's, not the process's

    def draw(self, out: dict[str, Any]) -> None:
        from indistill_cli.io.plots import plot_tradeoff

        b = str(out["batch"])
        pts = [(r["label"], r["latency"]["eager"][b]["median_ms"] / out["batch"], r["top1"]) for r in out["models"]]
        plot_tradeoff(pts, self.plot, f"latency per image at batch {b}, {path_head('eager', out['paths']['eager'])} "
                                      f"(ms; {out['device']})",
                      f"top-1 on {out['models'][0]['data']} test (%)", "what compression bought")
        out["plot"] = self.plot


def ratios(ref: dict[str, Any], row: dict[str, Any], batch: int) -> dict[str, Any]:
    """The row against the reference: x smaller / fewer / faster (> 1: better), differences in quality."""
    def faster(b: int, path: str = "eager") -> float | None:
        a, c = ref["latency"].get(path, {}).get(str(b)), row["latency"].get(path, {}).get(str(b))
        return a["median_ms"] / c["median_ms"] if a and c else None

    out = {"smaller": ref["file_bytes"] / row["file_bytes"], "fewer_parameters": ref["parameters"] / row["parameters"],
           "fewer_macs": ref["macs"] / row["macs"] if row["macs"] else None, "faster_batch1": faster(1),
           f"faster_batch{batch}": faster(batch)}
    for key in ("top1", "map_cosine"):  # percentage points
        if key in row:
            out[f"delta_{key}"] = row[key] - ref[key]
    return out


def _ms(lat: dict[str, Any], b: int) -> str:
    if "error" in lat:
        return "n/a"
    m = lat[str(b)]
    return f"{m['median_ms']:.2f} ({m['p90_ms']:.2f})"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "n/a"


def show(out: dict[str, Any]) -> None:
    """Three tables on stderr: what each model is, how fast it runs here, what it bought against the first."""
    b, opt, rows = out["batch"], out["optimized"], out["models"]
    quality = "top1" in rows[0]
    progress.table("models" + (f" (top-1 and cosine mAP on {rows[0]['data']} test, %)" if quality else ""),
                   ["checkpoint", "model", "params", "MACs", "file"] + (["top-1", "mAP"] if quality else []),
                   [[r["label"], r["model"], f"{r['parameters'] / 1e6:.3f}M", f"{r['macs'] / 1e6:.2f}M",
                     f"{r['file_bytes'] / 1024:.0f} KiB"] + ([f"{r['top1']:.2f}%", f"{r['map_cosine']:.2f}"]
                                                           if quality else []) for r in rows])
    paths = ["eager"] + ([opt] if opt != "none" else [])
    sizes = dict.fromkeys((1, b))
    progress.table(f"latency, ms: median (p90) of {out['runs']} runs after {out['warmup']}; {out['device']}, "
                   f"{out['threads']} CPU threads, load {out['load_average']:.1f}",
                   ["checkpoint"] + [f"{path_head(p, out['paths'][p])} b={n}" for p in paths for n in sizes],
                   [[r["label"]] + [_ms(r["latency"][p], n) for p in paths for n in dict.fromkeys((1, b))]
                    for r in rows])
    rcols = ["checkpoint", "smaller", "fewer params", "fewer MACs", "faster b=1", f"faster b={b}"]
    rcols += ["Δ top-1", "Δ mAP"] if quality else []
    progress.table(f"against {out['reference']} (Δ in percentage points)", rcols, [
        [r["label"]] + [_x(r["vs_reference"][k]) for k in ("smaller", "fewer_parameters", "fewer_macs",
                                                            "faster_batch1", f"faster_batch{b}")]
        + ([f"{r['vs_reference']['delta_top1']:+.2f}", f"{r['vs_reference']['delta_map_cosine']:+.2f}"]
           if quality else []) for r in rows])
    if out.get("optimized_note"):
        progress.info(f"optimised path: none ({out['optimized_note']})")
    cores = os.cpu_count() or 1
    if out["load_average"] >= cores:
        progress.warn(f"this machine is busy (load {out['load_average']:.1f} on {cores} cores): latencies are inflated "
                      f"and noisy; --threads 1 suffers least")


def run_compare(settings: CompareSettings) -> dict[str, Any]:
    """Compare checkpoints (see `Compare`)."""
    return Compare(settings).run()
