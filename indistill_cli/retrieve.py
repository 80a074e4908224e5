"""`indistill retrieve`: the InDistill paper's retrieval protocol on a model's embedding.

Embedding = the model's embedding tap (penultimate, after ReLU) or any `--tap` pooled to a vector.
Database = the train split with test-time transforms, queries = the test split, relevant = same
label; exhaustive ranking by cosine and/or Euclidean distance; exact mAP (or the reference's
11-point interpolated mAP, without its bug), precision@k and recall@k. Embeddings can be exported
and re-used (`--export` / `--index`), and `--query IMAGE` turns the model into a search engine.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from indistill_cli.common import resolve_model
from indistill_cli.data import DataInfo, Split, TensorLoader, make_loader
from indistill_cli.errors import BadInput
from indistill_cli.metrics import MAP_MODES, nearest, retrieval_metrics
from indistill_cli.models import spec_name
from indistill_cli.session import RunOptions, Session, open_session
from indistill_cli.taps import TapSet, as_vector


@torch.inference_mode()
def embed(model: nn.Module, tap: str, loader: Any, rt: Any, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings float32 (N, D) on CPU, labels) of every batch, in loader order."""
    model.eval()
    embs, labels = [], []
    with TapSet(model, [tap], stop_after=tap) as taps, progress.bar() as bars:
        task = bars.add_task(f"embed {label}", total=len(loader), status="")
        for batch in loader:
            with rt.autocast():
                taps.forward(batch.x)
            embs.append(as_vector(taps.out[tap]).float().cpu())
            labels.append(batch.y.cpu())
            bars.advance(task)
    return torch.cat(embs), torch.cat(labels)


def _split_loader(s: Session, name: str, spec: dict[str, Any]) -> tuple[Any, str]:
    """A split name (train/val/test) or imagefolder:PATH (class sub-folders) as an eval loader."""
    if name.startswith("imagefolder:"):
        from indistill_cli.folder_data import scan

        folder = scan(Path(name.split(":", 1)[1]), list(s.ds.info.classes))
        return make_loader(folder, s.ds.info, s.opts.eval_batch_size, device=s.rt.device,
                           model_channels=spec["in_channels"], model_size=tuple(spec["input_size"])), name
    return s.eval_loader(name, spec, shard=False), name


def load_image(path: str, info: DataInfo, spec: dict[str, Any], device: torch.device) -> torch.Tensor:
    """One image file as a normalised (1, C, H, W) batch the model accepts."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2.functional import pil_to_tensor

    try:
        with Image.open(path) as im:
            img = pil_to_tensor(im.convert("L" if info.in_channels == 1 else "RGB"))
    except FileNotFoundError:
        raise BadInput(f"--query {path}: file not found") from None
    except (OSError, UnidentifiedImageError, ValueError):
        raise BadInput(f"--query {path}: not a readable image") from None
    img = torch.nn.functional.interpolate(img[None].float(), size=tuple(info.stored_size), mode="bilinear",
                                          antialias=True, align_corners=False).round().clamp(0, 255).byte()
    loader = TensorLoader(Split(img, torch.zeros(1, dtype=torch.long)), info, 1, device=device,
                          model_channels=spec["in_channels"], model_size=tuple(spec["input_size"]))
    return next(iter(loader)).x


def run_retrieve(model_arg: str | None, opts: RunOptions, tap: str | None, database: str, queries: str,
                 metric: str, map_mode: str, ks: list[int], export: str | None, index: str | None,
                 query: str | None, top_k: int, chunk_size: int | None, force: bool = False) -> dict[str, Any]:
    if metric not in ("cosine", "euclidean", "both"):
        raise BadInput(f"--metric must be cosine, euclidean or both, got '{metric}'")
    if map_mode not in MAP_MODES:
        raise BadInput(f"--map must be one of {', '.join(MAP_MODES)}, got '{map_mode}'")
    if any(k < 1 for k in ks):
        raise BadInput("--k values must be at least 1")
    if top_k < 1:
        raise BadInput("--top-k must be at least 1")
    if model_arg is None and index is None:
        raise BadInput("give a MODEL checkpoint, or --index EMB.safetensors from an earlier --export")
    if query and model_arg is None:
        raise BadInput("--query needs the MODEL too (to embed the query image)")
    if export and export != "-" and Path(export).exists() and not force:
        raise BadInput(f"--export {export}: exists; pass --force to overwrite it")
    t0 = time.perf_counter()
    s = open_session(opts)
    metrics = ("cosine", "euclidean") if metric == "both" else (metric,)
    m = resolve_model(model_arg, s.ds.info, "model", trained=True, role=None) if model_arg else None
    model = m.model.to(s.rt.device) if m else None
    tap_name = tap or (m.spec["embedding"]["name"] if m else None)
    result: dict[str, Any] = {"data": s.ds.info.name}
    if index:
        emb = load_checkpoint(index, role="embeddings")
        try:
            db_e, db_y = emb.extras["database/embeddings"], emb.extras["database/labels"]
            q_e, q_y = emb.extras["queries/embeddings"], emb.extras["queries/labels"]
        except KeyError as e:
            raise BadInput(f"{index}: embeddings file lacks {e}") from None
        result.update({"model": spec_name(emb.spec), "tap": emb.info.get("tap"), "index": index,
                       "database": emb.info.get("database"), "queries": emb.info.get("queries")})
        if tap and tap != emb.info.get("tap"):
            raise BadInput(f"--index {index} holds tap '{emb.info.get('tap')}' embeddings, not '{tap}'")
        tap_name = emb.info.get("tap")
    else:
        assert m is not None and model is not None and tap_name is not None
        TapSet(model, [tap_name]).close()  # validates the tap name with a did-you-mean
        db_loader, db_name = _split_loader(s, database, m.spec)
        q_loader, q_name = _split_loader(s, queries, m.spec)
        db_e, db_y = embed(model, tap_name, db_loader, s.rt, f"database ({db_name})")
        q_e, q_y = embed(model, tap_name, q_loader, s.rt, f"queries ({q_name})")
        result.update({"model": m.name, "tap": tap_name, "database": db_name, "queries": q_name})
        if export:
            ck = Checkpoint(role="embeddings", spec=m.spec, state={},
                            extras={"database/embeddings": db_e, "database/labels": db_y,
                                    "queries/embeddings": q_e, "queries/labels": q_y},
                            info={"tap": tap_name, "database": db_name, "queries": q_name,
                                  "dataset": s.ds.info.as_dict(), "model_sha256": m.ckpt.sha256 if m.ckpt else None})
            save_checkpoint(ck, export)
            result["export"] = export
    result.update({"dim": int(db_e.shape[1]), "num_database": int(db_e.shape[0]), "num_queries": int(q_e.shape[0])})
    if query:
        assert model is not None and m is not None
        with torch.inference_mode(), TapSet(model.eval(), [tap_name], stop_after=tap_name) as taps:
            taps.forward(load_image(query, s.ds.info, m.spec, s.rt.device))
            qv = as_vector(taps.out[tap_name]).float().cpu()[0]
        idx, dist = nearest(qv, db_e, metrics[0], top_k, device=s.rt.device)
        classes = s.ds.info.classes
        hits = [{"rank": r + 1, "index": int(i), "label": int(db_y[i]), "class": classes[int(db_y[i])]
                 if int(db_y[i]) < len(classes) else str(int(db_y[i])), "distance": float(d)}
                for r, (i, d) in enumerate(zip(idx.tolist(), dist.tolist()))]
        progress.table(f"nearest to {query} ({metrics[0]})", ["rank", "index", "label", "class", "distance"],
                       [[h["rank"], h["index"], h["label"], h["class"], h["distance"]] for h in hits])
        result.update({"query": query, "metric": metrics[0], "neighbours": hits})
        return result
    per_metric: dict[str, Any] = {}
    with progress.bar() as bars:
        for mt in metrics:
            task = bars.add_task(f"rank {mt}", total=int(q_e.shape[0]), status="")
            per_metric[mt] = retrieval_metrics(q_e, q_y, db_e, db_y, mt, ks, map_mode, chunk_size,
                                               s.rt.device, lambda done, tot, t=task: bars.update(t, completed=done))
    result.update({"map_mode": map_mode, "metrics": per_metric, "wall_s": round(time.perf_counter() - t0, 3)})
    cols = ["metric", "mAP"] + [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks]
    rows = [[mt, r["map"]] + [r[f"precision@{k}"] for k in ks] + [r[f"recall@{k}"] for k in ks]
            for mt, r in per_metric.items()]
    progress.table(f"retrieval: {result['model']} tap {tap_name} ({result['dim']}-d), {result['num_queries']} "
                   f"queries x {result['num_database']} database, {map_mode} mAP", cols, rows)
    return result
