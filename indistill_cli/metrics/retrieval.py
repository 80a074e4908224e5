"""Retrieval metrics: mAP / P@k / R@k, nearest neighbours.

Retrieval follows the InDistill paper's protocol: every query is ranked against the whole
database and an item is relevant when it has the query's label.

Metrics
-------
* ``map``: mean over queries of AP. ``map_mode="exact"``: AP is the mean, over the
  relevant items, of the precision at each one's rank. ``"11pt"``: the mean of the
  interpolated precision ``max{precision at any rank with recall >= r}`` for
  r = 0, 0.1, ..., 1, over the entire ranking.
* ``precision@k``: relevant items among the first ``min(k, B)`` divided by ``min(k, B)``;
  averaged over all queries.
* ``recall@k``: relevant items among the first ``min(k, B)`` divided by the query's
  number of relevant items.

Queries with no relevant item in the database are left out of ``map`` and ``recall@k``
(they would be 0/0) and counted in ``queries_without_relevant``; if every query is such,
those metrics are NaN.

Ranking and tie rule
--------------------
Database items are ordered by a float64 *ranking key* (smaller = nearer), with ties broken
by database index ascending (a stable sort of the key). The keys are

* ``cosine``:    ``-(q . d) / max(|q|, eps) / max(|d|, eps)``, i.e. ``-cos``. It orders
  exactly like the distance ``1 - cos`` but is not rounded by the subtraction, which would
  merge distinct near-duplicates into ties. A zero vector has cosine 0 to everything.
* ``euclidean``: ``max(|q|^2 + |d|^2 - 2 q . d, 0)``, the squared distance, which ranks
  exactly like the plain distance but is not rounded by a square root.

Ties are only ties of the *computed* keys. For integer-valued embeddings (small enough
for float64 to hold every dot product exactly) the dot products, squared norms and
squared distances are exact, so ties are exact and well defined. For general float
embeddings two keys equal in real arithmetic may differ in the last bit.

Dot products are taken in fixed-shape blocks of query rows (the last block zero-padded), so
a query's keys do not depend on how many queries share its chunk; together with per-query
float64 accumulation this makes the results independent of ``chunk_size`` (bitwise on the
CPU BLAS we test on, and to rounding level in general).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "METRICS",
    "MAP_MODES",
    "retrieval_metrics",
    "nearest",
]

METRICS = ("cosine", "euclidean")
MAP_MODES = ("exact", "11pt")

# Memory for one chunk's (chunk x database) float64 key matrix when chunk_size is None.
# Sorting holds keys, sorted keys, int64 order and sort scratch at once: ~4x this at peak.
_CHUNK_BYTES = 256 * 2**20
# Largest number of query rows per matrix product; every product uses one fixed shape.
_MAX_MM_BLOCK = 64
# Normalisation floor for cosine, as in torch.nn.functional.normalize.
_EPS = 1e-12


def retrieval_metrics(
    queries: Tensor,
    q_labels: Tensor,
    database: Tensor,
    db_labels: Tensor,
    metric: str = "cosine",
    ks: Sequence[int] = (100,),
    map_mode: str = "exact",
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    exclude_self: bool = False,
) -> dict[str, float | int]:
    """Mean average precision, precision@k and recall@k of label-based retrieval.

    ``exclude_self``: the queries ARE the database (same items, same order), and each query is
    ranked against all the others (leave-one-out), e.g. the validation split searched in itself
    when selecting a checkpoint on retrieval mAP.

    Each query ranks the FULL database (see the module docstring for the tie rule).

    The metrics (``map``, ``precision@k``, ``recall@k``) are defined in the module docstring.

    Queries are processed ``chunk_size`` at a time so only a (chunk x B) matrix ever exists;
    ``None`` picks the chunk so that its float64 key matrix is about 256 MB (peak working
    memory is about four times that). ``device`` (e.g. ``"cuda"``) is where the database
    lives and chunks are computed; it defaults to the database's device.
    ``progress(done, total)`` is called after each chunk.
    """
    _check_retrieval_inputs(queries, q_labels, database, db_labels, metric, map_mode)
    if exclude_self and (queries.shape != database.shape or not torch.equal(q_labels.cpu(), db_labels.cpu())):
        raise ValueError("exclude_self needs the queries to be the database itself")
    ks = check_ks(ks)
    device = _resolve_device(device, database)
    db = _Database.build(database, metric, device)
    q_lab, db_lab = _compact_labels(q_labels, db_labels, device)
    num_relevant = torch.bincount(db_lab, minlength=int(q_lab.max()) + 1)[q_lab] - int(exclude_self)
    # A fixed padded width keeps per-query reductions identical whatever the chunking.
    width = max(int(num_relevant.max()), 1)

    num_q, num_db = queries.shape[0], db.size - int(exclude_self)
    chunk = _resolve_chunk_size(chunk_size, db.size)
    ap = torch.zeros(num_q, dtype=torch.float64, device=device)
    hits = {k: torch.zeros(num_q, dtype=torch.long, device=device) for k in ks}
    for start in range(0, num_q, chunk):
        stop = min(start + chunk, num_q)
        relevant = _ranked_relevance(queries[start:stop], q_lab[start:stop], db, db_lab,
                                     start if exclude_self else None)
        for k in ks:
            hits[k][start:stop] = relevant[:, : min(k, num_db)].sum(dim=1)
        precisions = _precisions_at_relevant(relevant, num_relevant[start:stop], width)
        del relevant
        ap[start:stop] = _average_precision(precisions, num_relevant[start:stop], map_mode)
        if progress is not None:
            progress(stop, num_q)
    return _summarise(ap, hits, num_relevant, num_db)


def nearest(
    query: Tensor,
    database: Tensor,
    metric: str = "cosine",
    k: int = 10,
    chunk_size: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The k database items nearest to each query, nearest first.

    ``query`` is (D,) or (Q, D); the result is (k,) or (Q, k) indices (long) and float64
    distances (``1 - cos`` or plain euclidean), on the query's device. ``k`` is clipped to
    the database size. Ordering and ties follow the same rule as :func:`retrieval_metrics`,
    so a search result agrees with the rankings the retrieval metrics score.
    """
    single = query.ndim == 1
    queries = query.unsqueeze(0) if single else query
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(
            "expected query (D,) or (Q, D) and database (B, D), "
            f"got {tuple(query.shape)} and {tuple(database.shape)}"
        )
    _check_metric(metric)
    if database.shape[0] == 0:
        raise ValueError("database is empty")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_finite(query=query, database=database)
    device = _resolve_device(device, database)
    db = _Database.build(database, metric, device)
    k = min(k, db.size)
    chunk = _resolve_chunk_size(chunk_size, db.size)
    indices, distances = [], []
    for start in range(0, queries.shape[0], chunk):
        keys = _ranking_keys(queries[start : start + chunk], db)
        top_keys, top_idx = torch.sort(keys, dim=1, stable=True)
        del keys
        indices.append(top_idx[:, :k].to(query.device))
        distances.append(_keys_to_distances(top_keys[:, :k], metric).to(query.device))
    idx = torch.cat(indices) if indices else torch.empty(0, k, dtype=torch.long)
    dist = torch.cat(distances) if distances else torch.empty(0, k, dtype=torch.float64)
    return (idx[0], dist[0]) if single else (idx, dist)


# --------------------------------------------------------------------------- validation


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def check_ks(ks: Sequence[int]) -> list[int]:
    ks = list(ks)
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    return [int(k) for k in ks]


def _check_retrieval_inputs(
    queries: Tensor, q_labels: Tensor, database: Tensor, db_labels: Tensor, metric: str, map_mode: str
) -> None:
    _check_metric(metric)
    if map_mode not in MAP_MODES:
        raise ValueError(f"unknown map_mode {map_mode!r}; expected one of {MAP_MODES}")
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(
            "expected queries (Q, D) and database (B, D), "
            f"got {tuple(queries.shape)} and {tuple(database.shape)}"
        )
    if q_labels.shape != (queries.shape[0],) or db_labels.shape != (database.shape[0],):
        raise ValueError("labels must be 1-D with one entry per query / database item")
    if queries.shape[0] == 0 or database.shape[0] == 0:
        raise ValueError("queries and database must be non-empty")
    _check_finite(queries=queries, database=database)


# --------------------------------------------------------------------------- ranking


def _resolve_device(device: torch.device | str | None, database: Tensor) -> torch.device:
    """The requested device, else the database's; MPS has no float64, so it falls back to CPU."""
    resolved = torch.device(device) if device is not None else database.device
    return torch.device("cpu") if resolved.type == "mps" else resolved


def _check_finite(**tensors: Tensor) -> None:
    """NaN keys would sort silently to the end and yield plausible-looking garbage."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains NaN or infinite values")


@dataclass(frozen=True)
class _Database:
    """Database prepared once per call: transposed vectors plus per-item norm terms."""

    vectors_t: Tensor  # (D, B)
    norm_term: Tensor  # (B,): clamped norm (cosine) or squared norm (euclidean)
    metric: str
    mm_block: int  # query rows per matrix product

    @property
    def size(self) -> int:
        return self.vectors_t.shape[1]

    @staticmethod
    def build(database: Tensor, metric: str, device: torch.device) -> "_Database":
        vectors = database.detach().to(device=device, dtype=torch.float64)
        mm_block = min(_MAX_MM_BLOCK, _rows_in_budget(vectors.shape[0]))
        return _Database(vectors.t(), _norm_term(vectors, metric), metric, mm_block)


def _norm_term(vectors: Tensor, metric: str) -> Tensor:
    squared = (vectors * vectors).sum(dim=1)
    return squared.sqrt().clamp_min(_EPS) if metric == "cosine" else squared


def _rows_in_budget(num_db: int) -> int:
    """Query rows whose float64 (rows x num_db) key matrix fits in _CHUNK_BYTES (at least 1)."""
    return max(_CHUNK_BYTES // (8 * max(num_db, 1)), 1)


def _resolve_chunk_size(chunk_size: int | None, num_db: int) -> int:
    """Explicit sizes are honoured; None caps the chunk's float64 key matrix at ~256 MB."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    rows = _rows_in_budget(num_db)
    return rows - rows % _MAX_MM_BLOCK if rows >= _MAX_MM_BLOCK else rows


def _block_matmul(rows: Tensor, db: _Database) -> Tensor:
    """rows @ db.vectors_t, one fixed-shape product per block so results ignore the chunking."""
    block, dim = db.mm_block, rows.shape[1]
    out = torch.empty(rows.shape[0], db.size, dtype=rows.dtype, device=rows.device)
    for start in range(0, rows.shape[0], block):
        part = rows[start : start + block]
        if part.shape[0] == block:
            torch.mm(part, db.vectors_t, out=out[start : start + block])
        else:
            padded = torch.zeros(block, dim, dtype=rows.dtype, device=rows.device)
            padded[: part.shape[0]] = part
            out[start:] = torch.mm(padded, db.vectors_t)[: part.shape[0]]
    return out


def _ranking_keys(queries: Tensor, db: _Database) -> Tensor:
    """(chunk, B) float64 keys, smaller = nearer (see the module docstring)."""
    q = queries.detach().to(device=db.vectors_t.device, dtype=db.vectors_t.dtype)
    keys = _block_matmul(q, db)
    q_norm_term = _norm_term(q, db.metric).unsqueeze(1)
    if db.metric == "cosine":
        return keys.div_(q_norm_term).div_(db.norm_term).neg_()
    return keys.mul_(-2.0).add_(db.norm_term).add_(q_norm_term).clamp_min_(0.0)


def _keys_to_distances(keys: Tensor, metric: str) -> Tensor:
    return keys + 1.0 if metric == "cosine" else keys.sqrt()


def _compact_labels(q_labels: Tensor, db_labels: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Map labels to 0..C-1 (int32 on the database side) so gathers stay small and bincount works."""
    both = torch.cat([q_labels.to(device).reshape(-1), db_labels.to(device).reshape(-1)])
    _, inverse = torch.unique(both, return_inverse=True)
    num_q = q_labels.shape[0]
    return inverse[:num_q].long(), inverse[num_q:].to(torch.int32)


def _ranked_relevance(queries: Tensor, q_lab: Tensor, db: _Database, db_lab: Tensor,
                      self_start: int | None = None) -> Tensor:
    """(chunk, B) bool: is the item at each rank relevant to the query.

    `self_start`: query i of this chunk is database item self_start + i; it is ranked last (key +inf,
    every other key is finite) and that last column dropped, giving (chunk, B - 1)."""
    keys = _ranking_keys(queries, db)
    if self_start is not None:
        rows = torch.arange(keys.shape[0], device=keys.device)
        keys[rows, rows + self_start] = float("inf")
    order = torch.sort(keys, dim=1, stable=True).indices  # stable: ties by database index
    del keys
    if self_start is not None:
        order = order[:, :-1]
    return db_lab[order] == q_lab.to(torch.int32).unsqueeze(1)


# --------------------------------------------------------------------------- precision


def _precisions_at_relevant(relevant: Tensor, num_relevant: Tensor, width: int) -> Tensor:
    """(chunk, width) float64: entry j of row q is precision at q's (j+1)-th relevant rank.

    Uses only the relevant positions, whose hit count is simply their ordinal, instead of a
    cumulative sum over all B ranks. Entries past a query's relevant count are 0.
    """
    rows, cols = relevant.nonzero(as_tuple=True)  # row-major, so each row's ranks ascend
    row_starts = torch.cumsum(num_relevant, 0) - num_relevant
    ordinal = torch.arange(rows.shape[0], device=rows.device) - row_starts[rows]
    out = torch.zeros(relevant.shape[0], width, dtype=torch.float64, device=relevant.device)
    out[rows, ordinal] = (ordinal + 1).double() / (cols + 1).double()
    return out


def _average_precision(precisions: Tensor, num_relevant: Tensor, map_mode: str) -> Tensor:
    """Per-query AP in float64 (0 where a query has no relevant item; excluded later)."""
    denom = num_relevant.clamp_min(1).double()
    if map_mode == "exact":
        return precisions.sum(dim=1) / denom
    # Precision peaks at relevant ranks, so max precision at recall >= j/n is a suffix max.
    suffix_max = precisions.flip(1).cummax(dim=1).values.flip(1)
    levels = torch.arange(11, device=precisions.device)
    # Smallest ordinal j with j/n >= t/10, in integers: ceil(t*n/10), at least 1.
    first = ((levels.unsqueeze(0) * num_relevant.unsqueeze(1) + 9) // 10).clamp_min(1)
    return suffix_max.gather(1, first - 1).mean(dim=1)


def _summarise(
    ap: Tensor, hits: dict[int, Tensor], num_relevant: Tensor, num_db: int
) -> dict[str, float | int]:
    """Average per-query values once, at the end, so chunking cannot change the sums."""
    valid = num_relevant > 0
    num_valid = int(valid.sum())
    nan = float("nan")
    result: dict[str, float | int] = {"map": float(ap[valid].mean()) if num_valid else nan}
    for k, hit in hits.items():
        result[f"precision@{k}"] = float((hit.double() / min(k, num_db)).mean())
        recall = hit[valid].double() / num_relevant[valid].double()
        result[f"recall@{k}"] = float(recall.mean()) if num_valid else nan
    result["num_queries"] = int(num_relevant.shape[0])
    result["num_database"] = int(num_db)
    result["queries_without_relevant"] = int(num_relevant.shape[0] - num_valid)
    return result
