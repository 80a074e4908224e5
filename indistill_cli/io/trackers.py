"""Experiment trackers (`--log`): a run's options, its per-epoch rows (the engine's `on_epoch`), final
metrics, plots and output checkpoint, written where people watch curves. Every one works offline:

    tensorboard  event files        LOG_DIR/tensorboard/NAME/          (a pipeline: NAME/STAGE/ per stage)
    mlflow       a file store       LOG_DIR/mlruns/ (or $MLFLOW_TRACKING_URI), experiment "indistill"
                                    (a pipeline: one parent run, one child run per stage)
    wandb        offline runs       LOG_DIR/wandb/offline-run-*/ unless $WANDB_MODE says otherwise
                                    (a pipeline: its stages' runs share the pipeline's group)
    csv          plain files        LOG_DIR/csv/NAME/metrics.csv, params.json, final.json, the plots

`Tracker` is the one small interface a stage talks to; the libraries are imported only when asked for
(`pip install 'indistill[log]'`), and only rank 0 opens one (the stage decides).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from indistill_cli.errors import BadInput

KINDS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "csv": None}  # kind -> module it needs
EXPERIMENT = "indistill"


def check_available(kinds: list[str]) -> None:
    """Each --log kind is known and its library importable, before any work: else one line with the fix."""
    for kind in kinds:
        if kind not in KINDS:
            raise BadInput(f"--log {kind}: unknown tracker; choose {', '.join(KINDS)}")
        module = KINDS[kind]
        if module and importlib.util.find_spec(module) is None:
            raise BadInput(f"--log {kind} needs the {module} package: pip install 'indistill[log]'")


def numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of a (nested) mapping, flat: {'final_mse': {'b1': 0.2}} -> {'final_mse/b1': 0.2}."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


def _flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Tracker:
    """The run in every tracker asked for; a pipeline's stage is a `child` of the pipeline's run."""

    def __init__(self, backends: list[Any]) -> None:
        self.backends = backends

    def params(self, params: dict[str, Any], command: str) -> None:
        """The resolved options (and the command they belong to)."""
        flat = {**_flat_params(params), "command": command}
        for b in self.backends:
            b.params(flat)

    def epoch(self, epoch: int, row: dict[str, float]) -> None:
        """One epoch's row as the checkpoint's history keeps it (losses per term, validation, lr, img/s, flow)."""
        step = int(row.get("epoch", epoch + 1))
        values = {k: v for k, v in numbers(row).items() if k != "epoch"}
        for b in self.backends:
            b.epoch(step, values)

    def final(self, metrics: dict[str, Any], output: str | None, sha256: str | None, artifacts: list[str]) -> None:
        """Final metrics, the output checkpoint's path and sha256, and the plots."""
        for b in self.backends:
            b.final(numbers(metrics), output, sha256, [a for a in artifacts if Path(a).is_file()])

    def child(self, name: str) -> Tracker:
        return Tracker([b.child(name) for b in self.backends])

    def close(self, ok: bool = True) -> None:
        for b in self.backends:
            b.close(ok)


def open_trackers(kinds: list[str], log_dir: str, name: str) -> Tracker:
    """A run named `name` in each tracker of `kinds` under `log_dir`."""
    check_available(kinds)
    root = Path(log_dir)
    root.mkdir(parents=True, exist_ok=True)
    make = {"tensorboard": _TensorBoard, "mlflow": _MLflow, "wandb": _Wandb, "csv": _CSV}
    return Tracker([make[k](root, name) for k in dict.fromkeys(kinds)])


class _TensorBoard:
    """Event files: scalars per epoch (step = epoch), the options as text and as HParams with the final metrics."""

    def __init__(self, root: Path, name: str, folder: Path | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = folder or root / "tensorboard" / name
        self.root, self.w, self.hp = root, SummaryWriter(str(self.dir)), {}
        self.last = 0

    def params(self, params: dict[str, Any]) -> None:
        self.hp = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        self.w.add_text("options", "\n".join(f"    {k}: {v}" for k, v in params.items()))

    def epoch(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        self.last = step

    def final(self, metrics: dict[str, float], output: str | None, sha256: str | None, artifacts: list[str]) -> None:
        from torch.utils.tensorboard.summary import hparams

        for k, v in metrics.items():
            self.w.add_scalar(f"final/{k}", v, self.last)
        if output:
            self.w.add_text("output", f"{output}  sha256 {sha256}")
        for a in artifacts:
            self.w.add_image(Path(a).stem, _rgb(a), self.last, dataformats="HWC")
        if self.hp:
            for summary in hparams(self.hp, {f"final/{k}": v for k, v in metrics.items()}):
                self.w.file_writer.add_summary(summary)
        self.w.flush()

    def child(self, name: str) -> _TensorBoard:
        return _TensorBoard(self.root, name, self.dir / name)

    def close(self, ok: bool) -> None:
        self.w.close()


def _rgb(path: str) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class _MLflow:
    """A run in an MLflow store (the file store under LOG_DIR/mlruns unless $MLFLOW_TRACKING_URI is set)."""

    def __init__(self, root: Path, name: str, parent: _MLflow | None = None) -> None:
        if parent is None:
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (root / "mlruns").resolve().as_uri()
            if uri.startswith("file:"):  # MLflow 3 keeps the file store behind this switch ("maintenance mode")
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            logging.getLogger("mlflow").setLevel(logging.ERROR)
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(EXPERIMENT)
            self.exp = exp.experiment_id if exp is not None else self.client.create_experiment(EXPERIMENT)
        else:
            self.client, self.exp = parent.client, parent.exp
        tags = {"mlflow.parentRunId": parent.run_id} if parent is not None else {}
        self.root, self.run_id = root, self.client.create_run(self.exp, run_name=name, tags=tags).info.run_id

    def params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def epoch(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), v, now, step) for k, v in values.items()])

    def final(self, metrics: dict[str, float], output: str | None, sha256: str | None, artifacts: list[str]) -> None:
        self.epoch(0, {f"final/{k}": v for k, v in metrics.items()})
        if output:
            self.client.set_tag(self.run_id, "output", output)
            self.client.set_tag(self.run_id, "output_sha256", sha256 or "")
        for a in artifacts:
            self.client.log_artifact(self.run_id, a)

    def child(self, name: str) -> _MLflow:
        return _MLflow(self.root, name, self)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def _key(k: str) -> str:
    """A metric name MLflow accepts (letters, digits, _ - . / and spaces)."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in k)


class _Wandb:
    """A W&B run, offline unless $WANDB_MODE says otherwise (sync later with `wandb sync LOG_DIR/wandb/...`).
    A pipeline's stages are runs in the pipeline's group; the pipeline's own options and final table are one
    more run of that group, written when it ends."""

    def __init__(self, root: Path, name: str, group: str | None = None, start: bool = True) -> None:
        self.root, self.name, self.group, self.run, self.hp = root, name, group, None, {}
        if start:
            self.run = self._init(name, group, None)

    def _init(self, name: str, group: str | None, job: str | None, config: dict[str, Any] | None = None) -> Any:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        settings = wandb.Settings(console="off", silent=True)
        return wandb.init(project=os.environ.get("WANDB_PROJECT", EXPERIMENT), name=name, group=group, job_type=job,
                          dir=str(self.root), mode=os.environ.get("WANDB_MODE", "offline"), config=config,
                          reinit="create_new", settings=settings)  # type: ignore[arg-type]

    def params(self, params: dict[str, Any]) -> None:
        self.hp = params
        if self.run is not None:
            self.run.config.update(params, allow_val_change=True)

    def epoch(self, step: int, values: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def final(self, metrics: dict[str, float], output: str | None, sha256: str | None, artifacts: list[str]) -> None:
        import wandb

        if self.run is None:  # a pipeline's own run: its options and final table, once its stages are done
            self.run = self._init(self.name, self.name, "pipeline", self.hp)
        self.run.summary.update({**metrics, **({"output": output, "output_sha256": sha256} if output else {})})
        if artifacts:
            self.run.log({f"plots/{Path(a).stem}": wandb.Image(a) for a in artifacts})

    def child(self, name: str) -> _Wandb:
        child = _Wandb(self.root, name, self.group or self.name, start=False)
        child.run = child._init(name, child.group, name)
        return child

    def close(self, ok: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)


class _CSV:
    """LOG_DIR/csv/NAME/: metrics.csv (one row per epoch, rewritten each epoch), params.json, final.json, plots."""

    def __init__(self, root: Path, name: str, folder: Path | None = None) -> None:
        self.dir = folder or root / "csv" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, float]] = []

    def params(self, params: dict[str, Any]) -> None:
        _write(self.dir / "params.json", json.dumps(params, indent=1, default=str) + "\n")

    def epoch(self, step: int, values: dict[str, float]) -> None:
        import csv
        import io

        self.rows.append({"epoch": step, **values})
        cols = list(dict.fromkeys(k for r in self.rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows)
        _write(self.dir / "metrics.csv", buf.getvalue())

    def final(self, metrics: dict[str, float], output: str | None, sha256: str | None, artifacts: list[str]) -> None:
        _write(self.dir / "final.json", json.dumps({"metrics": metrics, "output": output, "sha256": sha256},
                                                   indent=1) + "\n")
        for a in artifacts:
            shutil.copyfile(a, self.dir / Path(a).name)

    def child(self, name: str) -> _CSV:
        return _CSV(self.dir, name, self.dir / name)

    def close(self, ok: bool) -> None:
        pass


def _write(path: Path, text: str) -> None:
    from indistill_cli.io.atomic import atomic_write

    atomic_write(path, text.encode())
