"""`indistill inspect` / `models` / `datasets`: read-only views for people and scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.data import BUILTIN, PACKAGE_DATA, data_root, locate, serving_phrase
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.models import DataShape, create_model, list_models
from indistill_cli.models.coverage import describe


def inspect_checkpoint(src: str) -> dict[str, Any]:
    """Spec, taps, parameter count, pruning record and history of a checkpoint."""
    c = load_checkpoint(src)
    n_params = sum(int(t.numel()) for k, t in c.state.items() if t.is_floating_point() and "running_" not in k)
    out: dict[str, Any] = {
        "path": c.source, "sha256": c.sha256, "role": c.role, "model": c.spec.name, "spec": c.spec.to_dict(),
        "parameters": n_params, "tensors": len(c.state), "extras": sorted(c.extras), "info": c.info,
        "history": c.history,
    }
    sp = c.spec
    sees = _sees(c)
    if sees is not None:
        out["sees"] = sees
    progress.table(f"{c.source}: {c.role} {out['model']}", ["field", "value"], [
        ["architecture", sp.arch], ["width", sp.width], ["input", f"{sp.in_channels}x"
         f"{'x'.join(str(v) for v in sp.input_size)}"], ["classes", sp.num_classes],
        ["parameters", f"{n_params:,}"], ["embedding", f"{sp.embedding.name} ({sp.embedding.dim}-d)"],
        ["dataset", c.info.get("dataset", {}).get("name", "?")],
        *([["images", "{images}; size: {size}; {channels} channel(s); cache: {cache}".format(**folder)]]
          if (folder := c.info.get("dataset", {}).get("folder")) else []),
        *([["sees", f"{sees['serving']}; {sees['text']}"]] if sees else []), ["sha256", c.sha256[:16]]])
    pruning = c.info.get("pruning")
    kept = {p["teacher_tap"]: p for p in pruning["pairs"]} if pruning else {}
    rows = []
    for t in sp.taps:
        p = kept.get(t.name)
        rows.append([t.name, t.channels, t.stride, "x".join(map(str, t.size or ())),
                     f"{p['kept']} ({p['student_tap']})" if p else ""])
    progress.table("taps", ["tap", "channels", "stride", "size", "kept (pairs with)"], rows)
    if pruning:
        progress.info(f"pruning: criterion {pruning.get('criterion')}, mode {pruning.get('mode')}, "
                      f"like {pruning.get('student')}")
    hrows = []
    for h in c.history:
        m = h.get("metrics", {})
        shown = ", ".join(f"{k}={progress.fmt(v)}" for k, v in m.items() if isinstance(v, (int, float)))
        hrows.append([h.get("stage"), h.get("time", ""), h.get("data") or "", shown, f"{h.get('wall_s', 0):.1f}s"])
    progress.table("history", ["stage", "time", "data", "metrics", "wall"], hrows)
    return out


def _sees(c: Any) -> dict[str, Any] | None:
    """What the model sees of its dataset's images (models.coverage); None for non-model files."""
    if c.role not in ("model", "pruned-teacher"):
        return None
    ds = c.info.get("dataset", {})
    size = list(c.spec.input_size)
    stored = ds.get("source_size") or ds.get("image_size") or size
    try:
        out = describe(create_model(c).model, c.spec, tuple(stored))
    except BadInput:
        return None
    out["serving"] = serving_phrase(stored, size)
    return out


def list_models_table() -> list[dict[str, Any]]:
    """Every native architecture with parameters and taps at CIFAR shape (3x32x32, 10 classes)."""
    rows, out = [], []
    for e in list_models():
        spec, model = create_model(e.name, DataShape(3, 10, (32, 32)))
        n = sum(p.numel() for p in model.parameters())
        taps = " ".join(f"{t.name}:{t.channels}/s{t.stride}" for t in spec.taps)
        rows.append([e.name, e.family, f"{n / 1e6:.2f}M", taps, spec.embedding.dim, e.summary])
        out.append({"name": e.name, "family": e.family, "parameters": n, "taps": [t.to_dict() for t in spec.taps],
                    "embedding": spec.embedding.to_dict(), "summary": e.summary})
    progress.table("models (3x32x32, 10 classes; any native name takes -wX, e.g. resnet20-w0.5; "
                   "also timm:NAME and tv:NAME)", ["name", "family", "params", "taps (name:channels/stride)",
                                                   "emb", "about"], rows)
    return out


def list_datasets(root: str | None = None) -> list[dict[str, Any]]:
    """Built-in datasets and where a local copy was found (nothing is downloaded); `root`: --data-root."""
    where_root = Path(root) if root else data_root()
    out = [{"name": "fashion-mnist-mini", "available": True, "where": str(PACKAGE_DATA / "fashion_mnist_mini"),
            "note": "embedded 10k/2k Fashion-MNIST subset"}]
    for name in BUILTIN:
        where = locate(name, where_root)
        out.append({"name": name, "available": where is not None, "where": str(where) if where else "",
                    "note": "" if where else f"not found locally (downloads into {where_root} when online)"})
    out.append({"name": "imagefolder:PATH", "available": True, "where": "", "note": "PATH/train/CLASS/*, PATH/val/"})
    out.append({"name": "synthetic:CxHxW:K:N", "available": True, "where": "", "note": "random tensors, by seed"})
    progress.table("datasets", ["name", "local", "where / note"],
                   [[d["name"], "yes" if d["available"] else "no", d["where"] or d["note"]] for d in out])
    return out
