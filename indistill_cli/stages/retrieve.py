"""`indistill retrieve`: the InDistill paper's retrieval protocol on a model's embedding.

Embedding = the model's embedding tap (penultimate, after ReLU) or any `--tap` pooled to a vector.
Database = the train split with test-time transforms, queries = the test split, relevant = same
label; exhaustive ranking by cosine and/or Euclidean distance; exact mAP (or the reference's
11-point interpolated mAP, without its bug), precision@k and recall@k. Embeddings can be exported
and re-used (`--export` / `--index`), and `--query IMAGE` turns the model into a search engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from indistill_cli import progress
from indistill_cli.data import DataInfo, Split, TensorLoader, make_loader
from indistill_cli.errors import BadInput
from indistill_cli.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from indistill_cli.metrics import MAP_MODES, nearest, retrieval_metrics
from indistill_cli.models import ModelSpec
from indistill_cli.models.taps import TapSet, as_vector
from indistill_cli.stages.base import Result, Stage
from indistill_cli.stages.commands import RetrieveSettings
from indistill_cli.stages.resolve import resolve_model
from indistill_cli.stages.session import Session, loader_norm


@torch.inference_mode()
def embed(model: nn.Module, tap: str, loader: Any, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings float32 (N, D) on CPU, labels) of every batch, in loader order, computed in fp32."""
    model.eval()
    embs, labels = [], []
    with TapSet(model, [tap], stop_after=tap) as taps, progress.bar() as bars:
        task = bars.add_task(f"embed {label}", total=len(loader), status="")
        for batch in loader:
            taps.forward(batch.x)  # fp32 (no autocast), like `classify`: the same mAP on any device
            embs.append(as_vector(taps.out[tap]).float().cpu())
            labels.append(batch.y.cpu())
            bars.advance(task)
    return torch.cat(embs), torch.cat(labels)


def _split_loader(s: Session, name: str, spec: ModelSpec) -> tuple[Any, str]:
    """A split name (train/val/test) or imagefolder:PATH (class sub-folders) as an eval loader."""
    if name.startswith("imagefolder:"):
        from indistill_cli.data.folder import scan

        folder = scan(Path(name.split(":", 1)[1]), list(s.ds.info.classes))
        return make_loader(folder, s.ds.info, s.opts.eval_batch_size, device=s.rt.device,
                           model_channels=spec.in_channels, model_size=spec.input_size,
                           model_norm=loader_norm(spec, s.ds.info)), name
    return s.eval_loader(name, spec, shard=False), name


def load_image(path: str, info: DataInfo, spec: ModelSpec, device: torch.device) -> torch.Tensor:
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
                          model_channels=spec.in_channels, model_size=spec.input_size,
                          model_norm=loader_norm(spec, info))
    return next(iter(loader)).x


class Retrieve(Stage):
    """Retrieval evaluation of a model's embedding (or of embeddings exported earlier, `index`)."""

    name = "retrieve"
    s: RetrieveSettings

    def check(self) -> None:
        if self.s.metric not in ("cosine", "euclidean", "both"):
            raise BadInput(f"--metric must be cosine, euclidean or both, got '{self.s.metric}'")
        if self.s.map_mode not in MAP_MODES:
            raise BadInput(f"--map must be one of {', '.join(MAP_MODES)}, got '{self.s.map_mode}'")
        if any(k < 1 for k in self.s.k):
            raise BadInput("--k values must be at least 1")
        if self.s.top_k < 1:
            raise BadInput("--top-k must be at least 1")
        if self.s.model is None and self.s.index is None:
            raise BadInput("give a MODEL checkpoint, or --index EMB.safetensors from an earlier --export")
        if self.s.query and self.s.model is None:
            raise BadInput("--query needs the MODEL too (to embed the query image)")
        if self.s.export and self.s.export != "-" and Path(self.s.export).exists() and not self.force:
            raise BadInput(f"--export {self.s.export}: exists; pass --force to overwrite it")

    def execute(self, s: Session) -> Result:
        self.metrics = ("cosine", "euclidean") if self.s.metric == "both" else (self.s.metric,)
        m = self.m = resolve_model(self.s.model, s.ds.info, "model", trained=True, role=None) \
            if self.s.model else None
        self.model = m.model.to(s.rt.device) if m else None
        result: dict[str, Any] = {"data": s.ds.info.name}
        db_e, db_y, q_e, q_y = self.from_index(result) if self.s.index else self.embed_splits(s, result)
        result.update({"dim": int(db_e.shape[1]), "num_database": int(db_e.shape[0]), "num_queries": int(q_e.shape[0])})
        if self.s.query:
            return Result(self.search(s, result, db_e, db_y))
        out = self.score(s, result, db_e, db_y, q_e, q_y)
        metrics = {mt: {k: v for k, v in r.items() if k == "map" or k.startswith("precision@")}
                   for mt, r in out["metrics"].items()}
        return Result(out, entry={"metrics": metrics})

    def from_index(self, result: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Embeddings written by an earlier --export."""
        emb = load_checkpoint(self.s.index, role="embeddings")
        try:
            db_e, db_y = emb.extras["database/embeddings"], emb.extras["database/labels"]
            q_e, q_y = emb.extras["queries/embeddings"], emb.extras["queries/labels"]
        except KeyError as e:
            raise BadInput(f"{self.s.index}: embeddings file lacks {e}") from None
        result.update({"model": emb.spec.name, "tap": emb.info.get("tap"), "index": self.s.index,
                       "database": emb.info.get("database"), "queries": emb.info.get("queries")})
        if self.s.tap and self.s.tap != emb.info.get("tap"):
            raise BadInput(f"--index {self.s.index} holds tap '{emb.info.get('tap')}' embeddings, not '{self.s.tap}'")
        self.tap_name = emb.info.get("tap")
        return db_e, db_y, q_e, q_y

    def embed_splits(self, s: Session, result: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """The model's embeddings of the database and the queries (and --export of them)."""
        m, model = self.m, self.model
        assert m is not None and model is not None
        tap = self.tap_name = self.s.tap or m.spec.embedding.name
        TapSet(model, [tap]).close()  # validates the tap name with a did-you-mean
        db_loader, db_name = _split_loader(s, self.s.database, m.spec)
        q_loader, q_name = _split_loader(s, self.s.queries, m.spec)
        db_e, db_y = embed(model, tap, db_loader, f"database ({db_name})")
        q_e, q_y = embed(model, tap, q_loader, f"queries ({q_name})")
        result.update({"model": m.name, "tap": tap, "database": db_name, "queries": q_name})
        if self.s.export:
            ck = Checkpoint(role="embeddings", spec=m.spec, state={},
                            extras={"database/embeddings": db_e, "database/labels": db_y,
                                    "queries/embeddings": q_e, "queries/labels": q_y},
                            info={"tap": tap, "database": db_name, "queries": q_name,
                                  "dataset": s.ds.info.as_dict(), "model_sha256": m.ckpt.sha256 if m.ckpt else None})
            save_checkpoint(ck, self.s.export)
            result["export"] = self.s.export
        return db_e, db_y, q_e, q_y

    def search(self, s: Session, result: dict[str, Any], db_e: torch.Tensor, db_y: torch.Tensor) -> dict[str, Any]:
        """--query IMAGE: its nearest database items."""
        m, model, tap, metric = self.m, self.model, self.tap_name, self.metrics[0]
        assert model is not None and m is not None
        with torch.inference_mode(), TapSet(model.eval(), [tap], stop_after=tap) as taps:
            taps.forward(load_image(self.s.query, s.ds.info, m.spec, s.rt.device))
            qv = as_vector(taps.out[tap]).float().cpu()[0]
        idx, dist = nearest(qv, db_e, metric, self.s.top_k, device=s.rt.device)
        classes = s.ds.info.classes
        hits = [{"rank": r + 1, "index": int(i), "label": int(db_y[i]), "class": classes[int(db_y[i])]
                 if int(db_y[i]) < len(classes) else str(int(db_y[i])), "distance": float(d)}
                for r, (i, d) in enumerate(zip(idx.tolist(), dist.tolist()))]
        progress.table(f"nearest to {self.s.query} ({metric})", ["rank", "index", "label", "class", "distance"],
                       [[h["rank"], h["index"], h["label"], h["class"], h["distance"]] for h in hits])
        result.update({"query": self.s.query, "metric": metric, "neighbours": hits})
        return result

    def score(self, s: Session, result: dict[str, Any], db_e: torch.Tensor, db_y: torch.Tensor, q_e: torch.Tensor,
              q_y: torch.Tensor) -> dict[str, Any]:
        """mAP, P@k and R@k of every query ranked against the whole database, per metric."""
        ks, per_metric = self.s.k, {}
        with progress.bar() as bars:
            for mt in self.metrics:
                task = bars.add_task(f"rank {mt}", total=int(q_e.shape[0]), status="")
                per_metric[mt] = retrieval_metrics(q_e, q_y, db_e, db_y, mt, ks, self.s.map_mode, self.s.chunk_size,
                                                   s.rt.device, lambda done, tot, t=task: bars.update(t, completed=done))
        result.update({"map_mode": self.s.map_mode, "metrics": per_metric, "wall_s": round(self.wall(), 3)})
        cols = ["metric", "mAP"] + [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks]
        rows = [[mt, r["map"]] + [r[f"precision@{k}"] for k in ks] + [r[f"recall@{k}"] for k in ks]
                for mt, r in per_metric.items()]
        progress.table(f"retrieval: {result['model']} tap {self.tap_name} ({result['dim']}-d), "
                       f"{result['num_queries']} queries x {result['num_database']} database, {self.s.map_mode} mAP",
                       cols, rows)
        return result


def run_retrieve(settings: RetrieveSettings) -> dict[str, Any]:
    """The paper's retrieval protocol (see `Retrieve`)."""
    return Retrieve(settings).run()
