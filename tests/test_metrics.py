"""Tests for indistill_cli.metrics, checked against independent computations.

Two independent references:
* scikit-learn's average_precision_score per query, on continuous random float64
  embeddings (no distance ties, where sklearn's AP equals the exact AP);
* a brute-force Python ranking with exact integer / rational arithmetic and the documented
  tie rule (key ascending, then database index ascending), on integer embeddings full of ties.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from indistill_cli.metrics.flow import mse
from indistill_cli.metrics import nearest, retrieval_metrics, topk_correct

# --------------------------------------------------------------------------- references


def _continuous_data(seed: int = 0, num_q: int = 40, num_db: int = 300, dim: int = 16):
    """Random float64 embeddings with uneven classes; class 5 is absent from the database."""
    gen = torch.Generator().manual_seed(seed)
    db_labels = torch.multinomial(torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05]), num_db, True, generator=gen)
    q_labels = torch.randint(0, 6, (num_q,), generator=gen)
    centres = torch.randn(6, dim, generator=gen, dtype=torch.float64)
    noise = lambda n: torch.randn(n, dim, generator=gen, dtype=torch.float64) * 1.5  # noqa: E731
    return centres[q_labels] + noise(num_q), q_labels, centres[db_labels] + noise(num_db), db_labels


def _integer_data(seed: int = 1, num_q: int = 30, num_db: int = 200, dim: int = 6, high: int = 2):
    """Small non-negative integer embeddings: many duplicate vectors, hence many exact ties."""
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randint(0, high, (num_q, dim), generator=gen).double()
    database = torch.randint(0, high, (num_db, dim), generator=gen).double()
    db_labels = torch.multinomial(torch.tensor([0.5, 0.3, 0.15, 0.05]), num_db, True, generator=gen)
    q_labels = torch.randint(0, 4, (num_q,), generator=gen)
    return queries, q_labels, database, db_labels


def _exact_key(q: list[int], d: list[int], metric: str):
    """Exact rational key, smaller = nearer: squared distance, or -sign(cos)*cos^2 * |q|^2."""
    if metric == "euclidean":
        return sum((a - b) ** 2 for a, b in zip(q, d))
    dot, norm_d = sum(a * b for a, b in zip(q, d)), sum(b * b for b in d)
    return Fraction(0) if norm_d == 0 else -Fraction(dot * abs(dot), norm_d)


def _brute_rankings(queries, database, metric):
    """Rank every database index per query by (exact key, index) — the documented tie rule."""
    db = [list(map(int, row)) for row in database.tolist()]
    rankings = []
    for q in queries.tolist():
        q = list(map(int, q))
        rankings.append(sorted(range(len(db)), key=lambda i: (_exact_key(q, db[i], metric), i)))
    return rankings


def _brute_metrics(rankings, q_labels, db_labels, ks):
    """AP (exact and 11-point), P@k and R@k from explicit rankings, in plain Python."""
    q_labels, db_labels = q_labels.tolist(), db_labels.tolist()
    ap, ap11, prec, rec = [], [], {k: [] for k in ks}, {k: [] for k in ks}
    for ranking, label in zip(rankings, q_labels):
        rel = [db_labels[i] == label for i in ranking]
        n = sum(rel)
        for k in ks:
            kk = min(k, len(rel))
            prec[k].append(sum(rel[:kk]) / kk)
            if n:
                rec[k].append(sum(rel[:kk]) / n)
        if not n:
            continue
        hits, precisions, points = 0, [], []
        for rank, is_rel in enumerate(rel, start=1):
            hits += is_rel
            points.append((hits, Fraction(hits, rank)))
            if is_rel:
                precisions.append(hits / rank)
        ap.append(sum(precisions) / n)
        interp = [max(p for h, p in points if 10 * h >= t * n) for t in range(11)]
        ap11.append(float(sum(interp)) / 11)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"map": mean(ap), "map11": mean(ap11)}
    for k in ks:
        out[f"precision@{k}"], out[f"recall@{k}"] = mean(prec[k]), mean(rec[k])
    return out


def _numpy_distances(queries, database, metric):
    q, d = queries.numpy(), database.numpy()
    if metric == "euclidean":
        return np.sqrt(((q[:, None, :] - d[None, :, :]) ** 2).sum(-1))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    return 1.0 - qn @ dn.T


# --------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_sklearn_on_continuous_embeddings(metric):
    queries, q_labels, database, db_labels = _continuous_data()
    ks = (1, 10, 50, 1000)
    got = retrieval_metrics(queries, q_labels, database, db_labels, metric=metric, ks=ks, chunk_size=16)

    dist = _numpy_distances(queries, database, metric)
    assert all(len(np.unique(row)) == len(row) for row in dist), "test data must be tie-free"
    relevant = q_labels.numpy()[:, None] == db_labels.numpy()[None, :]
    has_rel = relevant.any(1)
    aps = [average_precision_score(relevant[i], -dist[i]) for i in np.flatnonzero(has_rel)]
    assert got["map"] == pytest.approx(np.mean(aps), abs=1e-12)

    order = np.argsort(dist, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(relevant, order, axis=1)
    for k in ks:
        kk = min(k, database.shape[0])
        hits = rel_sorted[:, :kk].sum(1)
        assert got[f"precision@{k}"] == pytest.approx((hits / kk).mean(), abs=1e-12)
        recall = hits[has_rel] / relevant.sum(1)[has_rel]
        assert got[f"recall@{k}"] == pytest.approx(recall.mean(), abs=1e-12)
    assert got["queries_without_relevant"] == int((~has_rel).sum()) > 0
    assert (got["num_queries"], got["num_database"]) == (40, 300)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_brute_force_with_ties(metric):
    queries, q_labels, database, db_labels = _integer_data()
    ks = (1, 5, 37, 500)
    ref = _brute_metrics(_brute_rankings(queries, database, metric), q_labels, db_labels, ks)
    exact = retrieval_metrics(queries, q_labels, database, db_labels, metric=metric, ks=ks, chunk_size=7)
    pt11 = retrieval_metrics(queries, q_labels, database, db_labels, metric=metric, ks=ks, map_mode="11pt")
    assert exact["map"] == pytest.approx(ref["map"], abs=1e-12)
    assert pt11["map"] == pytest.approx(ref["map11"], abs=1e-12)
    for k in ks:
        assert exact[f"precision@{k}"] == pytest.approx(ref[f"precision@{k}"], abs=1e-12)
        assert exact[f"recall@{k}"] == pytest.approx(ref[f"recall@{k}"], abs=1e-12)


def test_ties_are_broken_by_database_index():
    # Every database item is equidistant; only the relevant one's index decides its rank.
    queries, q_labels = torch.ones(1, 3), torch.tensor([1])
    database = torch.ones(4, 3)
    for position in range(4):
        db_labels = torch.zeros(4, dtype=torch.long)
        db_labels[position] = 1
        got = retrieval_metrics(queries, q_labels, database, db_labels, ks=(1, 2))
        assert got["map"] == pytest.approx(1 / (position + 1))
        assert got["precision@1"] == (1.0 if position == 0 else 0.0)


def test_11pt_matches_brute_force_on_continuous_embeddings():
    queries, q_labels, database, db_labels = _continuous_data(seed=3)
    rankings = np.argsort(_numpy_distances(queries, database, "euclidean"), axis=1, kind="stable")
    ref = _brute_metrics(rankings.tolist(), q_labels, db_labels, ks=(10,))
    got = retrieval_metrics(queries, q_labels, database, db_labels, metric="euclidean", map_mode="11pt")
    assert got["map"] == pytest.approx(ref["map11"], abs=1e-12)
    assert got["map"] >= retrieval_metrics(queries, q_labels, database, db_labels, metric="euclidean")["map"]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_perfect_embeddings_score_one(metric):
    class_sizes = [5, 12, 3, 20]
    db_labels = torch.repeat_interleave(torch.arange(4), torch.tensor(class_sizes))
    db_labels = db_labels[torch.randperm(len(db_labels), generator=torch.Generator().manual_seed(0))]
    q_labels = torch.tensor([0, 1, 2, 3, 1, 3])
    eye = torch.eye(4)
    ks = (1, 3)
    for mode in ("exact", "11pt"):
        got = retrieval_metrics(eye[q_labels], q_labels, eye[db_labels] * 2.0, db_labels, metric, ks, mode)
        assert got["map"] == 1.0
        assert got["precision@1"] == got["precision@3"] == 1.0
    got = retrieval_metrics(eye[q_labels], q_labels, eye[db_labels], db_labels, metric, ks=(5,))
    sizes = [class_sizes[c] for c in q_labels.tolist()]
    assert got["precision@5"] == pytest.approx(np.mean([min(5, n) / 5 for n in sizes]))
    assert got["recall@5"] == pytest.approx(np.mean([min(5, n) / n for n in sizes]))


@pytest.mark.parametrize("data", [_continuous_data, _integer_data])
@pytest.mark.parametrize("map_mode", ["exact", "11pt"])
def test_results_do_not_depend_on_chunk_size(data, map_mode):
    queries, q_labels, database, db_labels = data()
    queries, database = queries.float(), database.float()
    runs = [
        retrieval_metrics(queries, q_labels, database, db_labels, "cosine", (1, 10), map_mode, chunk_size=c)
        for c in (1, 7, 1000, None)
    ]
    for run in runs[1:]:
        assert run.keys() == runs[0].keys()
        for key, value in run.items():
            assert value == pytest.approx(runs[0][key], abs=1e-12, rel=0), key


def test_cosine_and_euclidean_agree_on_normalised_embeddings():
    queries, q_labels, database, db_labels = _continuous_data(seed=5)
    queries = queries / queries.norm(dim=1, keepdim=True)
    database = database / database.norm(dim=1, keepdim=True)
    for mode in ("exact", "11pt"):
        cos = retrieval_metrics(queries, q_labels, database, db_labels, "cosine", (1, 20), mode)
        euc = retrieval_metrics(queries, q_labels, database, db_labels, "euclidean", (1, 20), mode)
        for key in cos:
            assert cos[key] == pytest.approx(euc[key], abs=1e-12, rel=0), key


def test_progress_reports_every_chunk():
    queries, q_labels, database, db_labels = _integer_data()
    calls = []
    record = lambda done, total: calls.append((done, total))  # noqa: E731
    retrieval_metrics(queries, q_labels, database, db_labels, chunk_size=8, progress=record)
    assert calls == [(8, 30), (16, 30), (24, 30), (30, 30)]


def test_queries_without_relevant_and_label_types():
    database, db_labels = torch.eye(3), torch.tensor([10, 20, 20])
    queries, q_labels = torch.eye(3), torch.tensor([10, 20, 99])
    got = retrieval_metrics(queries, q_labels, database, db_labels, ks=(1,))
    assert got["queries_without_relevant"] == 1
    # Query 20 finds item 1 first, then the tied items 0 and 2 in index order: AP = (1 + 2/3) / 2.
    assert got["map"] == pytest.approx((1.0 + 5 / 6) / 2)
    assert got["precision@1"] == pytest.approx(2 / 3)
    none = retrieval_metrics(queries[2:], q_labels[2:], database, db_labels)
    assert math.isnan(none["map"]) and math.isnan(none["recall@100"])
    assert none["precision@100"] == 0.0


def test_invalid_arguments_raise():
    x, y = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x, y, metric="manhattan")
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x, y, map_mode="voc")
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, torch.zeros(2, 4), y)
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x, y, ks=(0,))
    with pytest.raises(ValueError):
        retrieval_metrics(x, y, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(x, y, torch.full((2, 3), float("nan")), y)
    with pytest.raises(ValueError, match="NaN"):
        nearest(torch.tensor([float("inf"), 0.0, 0.0]), x)


# --------------------------------------------------------------------------- nearest


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_agrees_with_brute_force(metric):
    queries, _, database, _ = _integer_data(num_q=9, num_db=60)
    rankings = _brute_rankings(queries, database, metric)
    idx, dist = nearest(queries, database, metric=metric, k=10, chunk_size=4)
    assert idx.shape == dist.shape == (9, 10)
    assert idx.tolist() == [r[:10] for r in rankings]
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())
    ref = torch.from_numpy(_numpy_distances(queries, database, metric))
    if metric == "cosine":  # numpy cannot normalise zero vectors; those are at distance 1
        ref = torch.where(database.norm(dim=1) == 0, torch.ones(()), ref)
    torch.testing.assert_close(dist, ref.gather(1, idx), atol=1e-12, rtol=0)


def test_nearest_single_query_and_k_clipping():
    database = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [1.0, 0.0]])
    idx, dist = nearest(torch.tensor([0.9, 0.0]), database, metric="euclidean", k=10)
    assert idx.tolist() == [2, 3, 0, 1]
    torch.testing.assert_close(dist, torch.tensor([0.1, 0.1, 0.9, math.hypot(2.1, 4.0)], dtype=torch.float64))
    idx, dist = nearest(torch.tensor([1.0, 0.0]), database, metric="cosine", k=2)
    assert idx.tolist() == [2, 3] and dist.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------------- classification / taps


def test_topk_correct_hand_example():
    logits = torch.tensor(
        [
            [0.1, 0.9, 0.0],  # label 1: top-1
            [0.5, 0.2, 0.3],  # label 2: second
            [0.2, 0.3, 0.5],  # label 0: third
            [0.7, 0.2, 0.1],  # label 0: top-1
        ]
    )
    labels = torch.tensor([1, 2, 0, 0])
    assert topk_correct(logits, labels, ks=(1, 2, 5)) == {1: 2, 2: 3, 5: 4}
    assert topk_correct(logits, labels) == {1: 2, 5: 4}


def test_tap_mse_pools_the_larger_map():
    student = torch.arange(16.0).view(1, 1, 4, 4)  # 2x2 block means: 2.5, 4.5, 10.5, 12.5
    teacher = torch.tensor([[[[2.5, 4.5], [10.5, 14.5]]]])  # only the last cell differs, by 2
    same_a, same_b = torch.ones(2, 3, 5, 5), torch.zeros(2, 3, 5, 5)
    wide = torch.ones(1, 1, 2, 8)  # pools to 2x4 against a 4x4 map pooled to 2x4
    assert float(mse(student, teacher)) == pytest.approx(1.0)
    assert float(mse(same_a, same_b)) == pytest.approx(1.0)
    assert float(mse(teacher, student)) == pytest.approx(1.0)
    assert float(mse(wide, torch.ones(1, 1, 4, 4))) == 0.0
    assert float(mse(torch.ones(4, 8), torch.zeros(4, 8))) == 1.0
    with pytest.raises(ValueError):
        mse(student, torch.zeros(1, 2, 2, 2))
