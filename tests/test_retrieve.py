"""Tests for `indistill retrieve`: the paper's retrieval protocol on a real trained model.

The trained model is the cnn3 trained one epoch on fashion-mnist-mini (shared with test_warmup /
test_distill through a file cache built once per run); the baseline is the same architecture with
random weights. Database = the whole train split (10000 images), queries = the test split (2000).
Metrics read back from `--index` runs are cross-checked against a brute-force ranking of the exported
embeddings. Everything runs single-threaded.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch
import torch.nn.functional as F

from indistill_cli.io.checkpoint import load_checkpoint
from indistill_cli.io.history import write_model
from indistill_cli.models import make_spec
from indistill_cli.pruning.rebuild import model_from_checkpoint

from conftest import suite_seed
from stage_helpers import (  # noqa: F401 - fixtures
    DATA, _bad, _ok, _shared_file, build_cnn3_teacher,
)

pytestmark = pytest.mark.usefixtures("one_thread")



# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def ds():
    from indistill_cli.data import load_dataset

    return load_dataset(DATA, val_fraction=0.0)  # retrieve's default: the database is the whole train split


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("retrieve")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    return _shared_file(tmp_path_factory, "cnn3_teacher", build_cnn3_teacher)


@pytest.fixture(scope="module")
def random_model(work, ds) -> str:
    info = ds.info
    torch.manual_seed(suite_seed())
    spec, model = make_spec("cnn3", info.in_channels, info.num_classes, info.image_size,
                            {"mean": info.mean, "std": info.std})
    path = work / "random_cnn3.safetensors"
    write_model(str(path), {k: v.detach() for k, v in model.state_dict().items()}, spec, [],
                {"dataset": info.as_dict()})
    return str(path)


@pytest.fixture(scope="module")
def exported(work, trained):
    """`retrieve TRAINED --export EMB`: the summary and the embeddings file."""
    emb = work / "emb.safetensors"
    summary = _ok("retrieve", trained, "--data", DATA, "--export", emb)
    return summary, emb


def _write_png(path: Path, image: torch.Tensor) -> str:
    from PIL import Image

    Image.fromarray(image[0].numpy()).save(path)
    return str(path)


# ----------------------------------------------------------------------------- trained vs random

@pytest.mark.trained
def test_trained_model_beats_random_weights(exported, random_model, record):
    trained, _ = exported
    rand = _ok("retrieve", random_model, "--data", DATA)
    assert trained["model"] == rand["model"] == "cnn3" and trained["tap"] == "embed" and trained["dim"] == 128
    assert (trained["num_database"], trained["num_queries"]) == (10000, 2000)
    assert trained["database"] == "train" and trained["queries"] == "test" and trained["map_mode"] == "exact"
    for mt in ("cosine", "euclidean"):
        t, r = trained["metrics"][mt], rand["metrics"][mt]
        print(f"{mt}: trained mAP {t['map']:.3f} P@100 {t['precision@100']:.3f}; "
              f"random mAP {r['map']:.3f} P@100 {r['precision@100']:.3f}")
        # observed: trained mAP ~0.59/0.56, P@100 ~0.68/0.67; random ~0.40/0.37, ~0.59/0.58; chance 0.1
        record(f"map {mt}", t["map"], 0.5, ">=")
        record(f"map {mt} - random", t["map"] - r["map"], 0.1, ">=")
        record(f"precision@100 {mt} - random", t["precision@100"] - r["precision@100"], 0.05, ">=")
        assert r["map"] > 0.1  # random weights still rank above chance (a property of the untrained net)
        assert t["recall@100"] == pytest.approx(t["precision@100"] * 100 / 1000, rel=1e-9)  # 1000 per class
        assert t["queries_without_relevant"] == 0


def test_export_holds_the_embeddings(exported, trained, ds):
    summary, emb = exported
    assert summary["export"] == str(emb)
    ck = load_checkpoint(emb, role="embeddings")
    e = ck.extras
    assert e["database/embeddings"].shape == (10000, 128) and e["database/embeddings"].dtype == torch.float32
    assert e["queries/embeddings"].shape == (2000, 128)
    assert torch.equal(e["database/labels"], ds.train.labels)
    assert torch.equal(e["queries/labels"], ds.test.labels)
    assert (e["database/embeddings"] >= 0).all()  # the penultimate layer after its ReLU
    assert ck.info["tap"] == "embed" and ck.info["database"] == "train" and ck.info["queries"] == "test"
    assert ck.info["model_sha256"] == load_checkpoint(trained).sha256
    # database = train split in order with test-time transforms (normalised, no augmentation)
    model = model_from_checkpoint(load_checkpoint(trained)).eval()
    info = ds.info
    for split, key in ((ds.train, "database"), (ds.test, "queries")):
        x = (split.images[:8].float() / 255 - info.mean[0]) / info.std[0]
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-info.mean[0] / info.std[0])  # served at 32x32
        with torch.no_grad():
            ref = model.embed(model.flatten(model.block3(model.block2(model.block1(x)))))
        torch.testing.assert_close(e[f"{key}/embeddings"][:8], ref, rtol=1e-4, atol=1e-5)


def test_index_gives_identical_metrics(exported):
    summary, emb = exported
    again = _ok("retrieve", "--index", emb)
    assert again["metrics"] == summary["metrics"]
    assert again["tap"] == "embed" and again["model"] == "cnn3" and again["index"] == str(emb)
    assert (again["num_database"], again["num_queries"], again["dim"]) == (10000, 2000, 128)


@pytest.mark.trained
def test_map_11pt_and_ks_against_brute_force(exported, record):
    summary, emb = exported
    pt11 = _ok("retrieve", "--index", emb, "--metric", "cosine", "--k", "10", "--k", "100", "--map", "11pt")
    assert list(pt11["metrics"]) == ["cosine"] and pt11["map_mode"] == "11pt"
    ex, pt = summary["metrics"]["cosine"], pt11["metrics"]["cosine"]
    assert set(pt) >= {"precision@10", "recall@10", "precision@100", "recall@100"}
    assert pt["precision@100"] == ex["precision@100"] and pt["recall@100"] == ex["recall@100"]
    assert abs(pt["map"] - ex["map"]) > 1e-3  # the interpolated mAP is another number...
    assert pt["map"] == pytest.approx(ex["map"], abs=0.1)  # ...of the same ranking
    record("precision@10 - precision@100 cosine", pt["precision@10"] - pt["precision@100"], 0.0, ">")
    record("precision@100 cosine", pt["precision@100"], 0.5, ">")
    # precision@k by brute force over the exported embeddings
    e = load_checkpoint(emb, role="embeddings").extras
    sim = F.normalize(e["queries/embeddings"], dim=1) @ F.normalize(e["database/embeddings"], dim=1).T
    top = sim.topk(100, dim=1).indices
    rel = (e["database/labels"][top] == e["queries/labels"][:, None]).double()
    assert pt["precision@10"] == pytest.approx(float(rel[:, :10].mean()), abs=2e-3)
    assert pt["precision@100"] == pytest.approx(float(rel.mean()), abs=2e-3)
    assert pt["recall@10"] == pytest.approx(float(rel[:, :10].sum(1).mean() / 1000), abs=2e-4)


def test_query_image_returns_nearest_first(work, trained, exported, ds):
    """A database image as the query finds itself first (distance ~0); neighbours = brute force."""
    from indistill_cli.data import FASHION_CLASSES

    _, emb = exported
    db_e = load_checkpoint(emb, role="embeddings").extras["database/embeddings"]
    i = 1234
    png = _write_png(work / "query.png", ds.train.images[i])
    r = _ok("retrieve", trained, "--data", DATA, "--query", png, "--top-k", "5", "--metric", "cosine")
    hits = r["neighbours"]
    assert r["metric"] == "cosine" and len(hits) == 5 and "metrics" not in r
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    d = [h["distance"] for h in hits]
    assert d == sorted(d) and d[0] == pytest.approx(0.0, abs=1e-5)
    assert hits[0]["index"] == i
    label = int(ds.train.labels[i])
    assert hits[0]["label"] == label and hits[0]["class"] == FASHION_CLASSES[label]
    for h in hits:
        assert h["label"] == int(ds.train.labels[h["index"]]) and h["class"] == FASHION_CLASSES[h["label"]]
    cos = 1 - F.normalize(db_e, dim=1) @ F.normalize(db_e[i], dim=0)
    ref = torch.topk(cos, 5, largest=False)
    assert [h["index"] for h in hits] == ref.indices.tolist()
    assert d == pytest.approx(ref.values.tolist(), abs=1e-5)


def test_query_euclidean_test_image(work, trained, exported, ds):
    _, emb = exported
    e = load_checkpoint(emb, role="embeddings").extras
    j = 77
    png = _write_png(work / "query_test.png", ds.test.images[j])
    r = _ok("retrieve", trained, "--data", DATA, "--query", png, "--top-k", "7", "--metric", "euclidean")
    hits = r["neighbours"]
    assert len(hits) == 7 and r["metric"] == "euclidean"
    d = [h["distance"] for h in hits]
    assert d == sorted(d) and d[0] > 0
    dist = (e["database/embeddings"] - e["queries/embeddings"][j]).norm(dim=1)
    ref = torch.topk(dist, 7, largest=False)
    assert [h["index"] for h in hits] == ref.indices.tolist()
    assert d == pytest.approx(ref.values.tolist(), rel=1e-4, abs=1e-4)


def test_other_tap_and_splits(trained):
    r = _ok("retrieve", trained, "--tap", "block2", "--database", "val", "--queries", "val", "--val-fraction",
            "0.05", "--metric", "euclidean")
    assert r["tap"] == "block2" and r["dim"] == 32  # pooled to a vector of its channels
    assert r["num_database"] == r["num_queries"] == 500 and list(r["metrics"]) == ["euclidean"]
    # each query finds itself at rank 1, so P@1 = 1
    r1 = _ok("retrieve", trained, "--database", "val", "--queries", "val", "--val-fraction", "0.05", "--k", "1")
    assert r1["metrics"]["cosine"]["precision@1"] == pytest.approx(1.0, abs=0.01)


# ----------------------------------------------------------------------------- bad inputs

SMALL = ("--database", "val", "--queries", "val", "--val-fraction", "0.02")


@pytest.mark.parametrize("args, needles", [
    (("--tap", "blok1"), ("unknown tap 'blok1'", "did you mean 'block1'")),
    (("--metric", "foo"), ("--metric", "foo")),
    (("--k", "0"), ("--k",)),
    (("--k", "10", "--k", "-1"), ("--k",)),
    (("--map", "11point"), ("--map", "exact", "11pt")),
    (("--top-k", "0"), ("--top-k",)),
    (("--database", "validation"), ("validation",)),
])
def test_bad_options(trained, args, needles):
    _bad("retrieve", trained, *SMALL, *args, needles=needles)


def test_bad_query_and_index(trained, exported, work):
    _, emb = exported
    _bad("retrieve", trained, *SMALL, "--query", work / "missing.png", needles=("missing.png", "not found"))
    junk = work / "junk.png"
    junk.write_bytes(b"not an image at all")
    _bad("retrieve", trained, *SMALL, "--query", junk, needles=("junk.png", "not a readable image"))
    _bad("retrieve", "--index", trained, needles=("expected a embeddings checkpoint",))
    _bad("retrieve", "--index", emb, "--query", junk, needles=("--query needs the MODEL",))
    _bad("retrieve", needles=("--index",))
    _bad("retrieve", trained, *SMALL, "--export", emb, needles=("exists", "--force"))
    _bad("retrieve", "--index", emb, "--tap", "block1", needles=("'embed'",))
    _bad("retrieve", work / "nope.safetensors", *SMALL, needles=("nope.safetensors",))
