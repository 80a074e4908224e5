"""Tests for indistill_cli.losses.

Reference values are recomputed here from the published formulas with numpy
and plain loops (float64), never by calling the implementation.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from indistill_cli import losses
from indistill_cli.losses import DistillLoss, Feats, KDBatch

ALL = ["at", "crd", "dkd", "fitnet", "kd", "pkt", "pkt-cosine", "rkd", "sp"]
# the methods added later; their own tests are in test_methods.py
NEW = ["ab", "cc", "dist", "dkd-ls", "fsp", "ft", "kd-ls", "kdsvd", "mlkd", "nst", "ofd", "reviewkd", "vid"]


# ---------------------------------------------------------------- helpers


def as_teacher(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A teacher tensor made the way the trainer makes it: under inference_mode, then cloned."""
    with torch.inference_mode():
        t = torch.as_tensor(np.asarray(x, dtype=np.float64)).clone()
    assert t.is_inference()
    return t.clone()


def as_student(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)


def build(name: str, s_shapes, t_shapes, num_classes: int = 5, num_data: int = 40, **hp) -> DistillLoss:
    return losses.get(name)(s_shapes, t_shapes, num_classes, num_data, **hp).double()


def call(loss: DistillLoss, s_logits, t_logits, s_feats=(), t_feats=(), labels=None, index=None, epoch=0):
    s_logits = as_student(s_logits) if not isinstance(s_logits, torch.Tensor) else s_logits
    t_logits = as_teacher(t_logits) if not isinstance(t_logits, torch.Tensor) else t_logits
    n = s_logits.shape[0]
    labels = torch.zeros(n, dtype=torch.long) if labels is None else torch.as_tensor(labels)
    s = Feats(s_logits, list(s_feats))
    t = Feats(t_logits, list(t_feats))
    return loss(KDBatch(s, t, labels, index, epoch))


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_block_pool(f: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average pooling of (N, C, H, W) to (N, C, h, w) for integer factors."""
    n, c, hh, ww = f.shape
    return f.reshape(n, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


RNG = np.random.default_rng(1234)  # parametrisation data, drawn at import


@pytest.fixture(autouse=True)
def _fresh_rng() -> None:
    """Data drawn inside a test does not depend on test order (pytest-xdist, -k)."""
    global RNG
    RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


# ---------------------------------------------------------------- registry


def test_registry_lists_all_methods() -> None:
    assert sorted(losses.names()) == sorted(ALL + NEW)
    for name in ALL + NEW:
        cls = losses.get(name)
        assert issubclass(cls, DistillLoss)
        assert cls.name == name
        assert cls.uses in ("logits", "embedding", "taps")
        assert cls.default_weight > 0 and cls.ce_weight >= 0
        assert isinstance(cls.hparams, dict)
        assert (cls.__doc__ or "").strip() and cls.cite
        assert (__import__(cls.__module__, fromlist=["x"]).__doc__ or "").strip()


def test_unknown_name_suggests_close_one() -> None:
    with pytest.raises(KeyError, match="did you mean 'pkt-cosine'"):
        losses.get("pkt-cosin")
    with pytest.raises(KeyError, match="'fitnet'"):
        losses.get("fitnets")


def test_unknown_hparam_names_valid_keys() -> None:
    with pytest.raises(ValueError, match="temperature"):
        losses.get("kd")([], [], 10, 100, temp=3)
    assert losses.get("kd")([], [], 10, 100, temperature=2).hp["temperature"] == 2.0
    assert losses.get("dkd")([], [], 10, 100).hp == {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20}


# ---------------------------------------------------------------- kd


def ref_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    total = 0.0
    for i in range(s.shape[0]):
        for c in range(s.shape[1]):
            total += pt[i, c] * (math.log(pt[i, c]) - math.log(ps[i, c]))
    return temp**2 * total / s.shape[0]


@pytest.mark.parametrize(
    "s,t,temp",
    [
        ([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]], 4.0),
        (rand(5, 7), rand(5, 7) * 3, 2.0),
    ],
)
def test_kd_value(s, t, temp) -> None:
    s, t = np.asarray(s), np.asarray(t)
    loss = build("kd", [], [], num_classes=s.shape[1], temperature=temp)
    assert call(loss, s, t).item() == pytest.approx(ref_kd(s, t, temp), rel=1e-10)


# ---------------------------------------------------------------- dkd


def ref_dkd(s, t, labels, alpha, beta, temp) -> float:
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    total = 0.0
    for i, g in enumerate(labels):
        bs = [ps[i, g], 1.0 - ps[i, g]]
        bt = [pt[i, g], 1.0 - pt[i, g]]
        tckd = sum(b_t * math.log(b_t / b_s) for b_s, b_t in zip(bs, bt))
        others = [c for c in range(s.shape[1]) if c != g]
        qs = ps[i, others] / ps[i, others].sum()
        qt = pt[i, others] / pt[i, others].sum()
        nckd = sum(b * math.log(b / a) for a, b in zip(qs, qt))
        total += alpha * tckd + beta * nckd
    return temp**2 * total / len(labels)


@pytest.mark.parametrize(
    "s,t,labels",
    [
        ([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]], [0, 2]),
        (rand(6, 5) * 2, rand(6, 5) * 2, [0, 1, 2, 3, 4, 1]),
    ],
)
def test_dkd_value_and_warmup(s, t, labels) -> None:
    s, t = np.asarray(s), np.asarray(t)
    loss = build("dkd", [], [], num_classes=s.shape[1])
    ref = ref_dkd(s, t, labels, 1.0, 8.0, 4.0)
    # epoch is 0-based: factor min((epoch + 1) / 20, 1)
    assert call(loss, s, t, labels=labels, epoch=19).item() == pytest.approx(ref, rel=1e-9)
    assert call(loss, s, t, labels=labels, epoch=100).item() == pytest.approx(ref, rel=1e-9)
    assert call(loss, s, t, labels=labels, epoch=4).item() == pytest.approx(ref * 5 / 20, rel=1e-9)
    loss2 = build("dkd", [], [], num_classes=s.shape[1], alpha=0.5, beta=2.0, temperature=1.0, warmup=0)
    ref2 = ref_dkd(s, t, labels, 0.5, 2.0, 1.0)
    assert call(loss2, s, t, labels=labels, epoch=0).item() == pytest.approx(ref2, rel=1e-9)


# ---------------------------------------------------------------- pkt


def ref_pkt_kernels(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    cos_k, dist_k = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ui = x[i] / (math.sqrt((x[i] ** 2).sum()) + eps)
            uj = x[j] / (math.sqrt((x[j] ** 2).sum()) + eps)
            cos_k[i, j] = (float(ui @ uj) + 1.0) / 2.0
            dist_k[i, j] = 1.0 / (1.0 + math.sqrt(((x[i] - x[j]) ** 2).sum() + 1e-6))
    return cos_k / cos_k.sum(1, keepdims=True), dist_k / dist_k.sum(1, keepdims=True)


def ref_pkt(s: np.ndarray, t: np.ndarray) -> float:
    total = 0.0
    for ks, kt in zip(ref_pkt_kernels(s, 1e-6), ref_pkt_kernels(t, 1e-6)):
        total += np.mean([(b - a) * (math.log(b) - math.log(a)) for a, b in zip(ks.ravel(), kt.ravel())])
    return total


def ref_pkt_cosine(s: np.ndarray, t: np.ndarray) -> float:
    eps = 1e-7
    ps, pt = ref_pkt_kernels(s, eps)[0], ref_pkt_kernels(t, eps)[0]
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


EMB_CASES = [
    ([[1.0, 0.0, 2.0], [0.5, -1.0, 1.0], [0.0, 2.0, -1.0]], [[1.0, 1.0, 0.0, 0.5], [0.0, -1.0, 2.0, 1.0], [2.0, 0.0, 1.0, -1.0]]),
    (rand(6, 5), rand(6, 8) * 2),
]


@pytest.mark.parametrize("s,t", EMB_CASES)
def test_pkt_value(s, t) -> None:
    s, t = np.asarray(s), np.asarray(t)
    loss = build("pkt", [s.shape[1:]], [t.shape[1:]])
    got = call(loss, rand(len(s), 5), rand(len(s), 5), [as_student(s)], [as_teacher(t)]).item()
    assert got == pytest.approx(ref_pkt(s, t), rel=1e-7)


@pytest.mark.parametrize("s,t", EMB_CASES)
def test_pkt_cosine_value(s, t) -> None:
    s, t = np.asarray(s), np.asarray(t)
    loss = build("pkt-cosine", [s.shape[1:]], [t.shape[1:]])
    got = call(loss, rand(len(s), 5), rand(len(s), 5), [as_student(s)], [as_teacher(t)]).item()
    assert got == pytest.approx(ref_pkt_cosine(s, t), rel=1e-7)


def test_pkt_finite_for_opposite_vectors() -> None:
    s = as_student([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    loss = build("pkt", [(2,)], [(2,)])
    val = call(loss, rand(3, 5), rand(3, 5), [s], [as_teacher(rand(3, 2))])
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- rkd


def ref_rkd(s: np.ndarray, t: np.ndarray, wd: float = 25.0, wa: float = 50.0) -> float:
    n = s.shape[0]

    def psi_d(e):
        d = np.array([[math.sqrt(((e[i] - e[j]) ** 2).sum()) for j in range(n)] for i in range(n)])
        mu = sum(d[i, j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return d / mu

    def psi_a(e):
        out = np.zeros((n, n, n))
        for j, i, k in itertools.product(range(n), repeat=3):
            u, v = e[i] - e[j], e[k] - e[j]
            nu, nv = math.sqrt(u @ u), math.sqrt(v @ v)
            if nu > 0 and nv > 0:
                out[j, i, k] = (u @ v) / (nu * nv)
        return out

    ld = np.mean([huber(a - b) for a, b in zip(psi_d(s).ravel(), psi_d(t).ravel())])
    la = np.mean([huber(a - b) for a, b in zip(psi_a(s).ravel(), psi_a(t).ravel())])
    return wd * ld + wa * la


@pytest.mark.parametrize("s,t", EMB_CASES + [(rand(5, 3) * 5, rand(5, 2))])
def test_rkd_value(s, t) -> None:
    s, t = np.asarray(s), np.asarray(t)
    loss = build("rkd", [s.shape[1:]], [t.shape[1:]])
    got = call(loss, rand(len(s), 5), rand(len(s), 5), [as_student(s)], [as_teacher(t)]).item()
    assert got == pytest.approx(ref_rkd(s, t), rel=1e-7)


# ---------------------------------------------------------------- at


def ref_at(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    total = 0.0
    for fs, ft in pairs:
        h, w = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
        fs, ft = np_block_pool(fs, h, w), np_block_pool(ft, h, w)
        vals = []
        for i in range(fs.shape[0]):
            a_s = (fs[i] ** 2).mean(axis=0).ravel()
            a_t = (ft[i] ** 2).mean(axis=0).ravel()
            a_s, a_t = a_s / np.linalg.norm(a_s), a_t / np.linalg.norm(a_t)
            vals.extend((a_s - a_t) ** 2)
        total += float(np.mean(vals))
    return total


TAP_CASES = [
    # one pair, same spatial size, different channels; hand-made
    [(np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2) / 7.0 - 1.0, np.cos(np.arange(2 * 4 * 2 * 2)).reshape(2, 4, 2, 2))],
    # two pairs with spatial mismatch both ways
    [(rand(3, 2, 8, 8), rand(3, 5, 4, 4)), (rand(3, 4, 2, 2), rand(3, 3, 4, 4))],
]


@pytest.mark.parametrize("pairs", TAP_CASES)
def test_at_value(pairs) -> None:
    loss = build("at", [fs.shape[1:] for fs, _ in pairs], [ft.shape[1:] for _, ft in pairs])
    s_feats = [as_student(fs) for fs, _ in pairs]
    t_feats = [as_teacher(ft) for _, ft in pairs]
    got = call(loss, rand(len(pairs[0][0]), 5), rand(len(pairs[0][0]), 5), s_feats, t_feats).item()
    assert got == pytest.approx(ref_at(pairs), rel=1e-9)


# ---------------------------------------------------------------- sp


def ref_sp(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    total = 0.0
    for fs, ft in pairs:
        n = fs.shape[0]
        g = []
        for f in (fs.reshape(n, -1), ft.reshape(n, -1)):
            gram = np.array([[f[i] @ f[j] for j in range(n)] for i in range(n)])
            g.append(gram / np.linalg.norm(gram, axis=1, keepdims=True))
        total += float(((g[0] - g[1]) ** 2).sum()) / n**2
    return total


@pytest.mark.parametrize("pairs", TAP_CASES)
def test_sp_value(pairs) -> None:
    loss = build("sp", [fs.shape[1:] for fs, _ in pairs], [ft.shape[1:] for _, ft in pairs])
    s_feats = [as_student(fs) for fs, _ in pairs]
    t_feats = [as_teacher(ft) for _, ft in pairs]
    got = call(loss, rand(len(pairs[0][0]), 5), rand(len(pairs[0][0]), 5), s_feats, t_feats).item()
    assert got == pytest.approx(ref_sp(pairs), rel=1e-9)


# ---------------------------------------------------------------- fitnet


def set_regressor(reg: torch.nn.Module, weight: np.ndarray, mean, var, gamma, beta) -> None:
    conv, bn = reg[0], reg[1]
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight)[:, :, None, None])
        bn.running_mean.copy_(torch.as_tensor(mean))
        bn.running_var.copy_(torch.as_tensor(var))
        bn.weight.copy_(torch.as_tensor(gamma))
        bn.bias.copy_(torch.as_tensor(beta))


def ref_fitnet(pairs, params, bn_eps: float = 1e-5) -> float:
    total = 0.0
    for (fs, ft), (w, mean, var, gamma, beta) in zip(pairs, params):
        h, wd = min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3])
        fs, ft = np_block_pool(fs, h, wd), np_block_pool(ft, h, wd)
        n, _, hh, ww = fs.shape
        out = np.zeros((n, w.shape[0], hh, ww))
        for i, o, y, x in itertools.product(range(n), range(w.shape[0]), range(hh), range(ww)):
            z = float(w[o] @ fs[i, :, y, x])
            out[i, o, y, x] = (z - mean[o]) / math.sqrt(var[o] + bn_eps) * gamma[o] + beta[o]
        total += float(((out - ft) ** 2).mean())
    return total


@pytest.mark.parametrize("pairs", TAP_CASES)
def test_fitnet_value(pairs) -> None:
    loss = build("fitnet", [fs.shape[1:] for fs, _ in pairs], [ft.shape[1:] for _, ft in pairs]).eval()
    params = []
    for reg, (fs, ft) in zip(loss.regressors, pairs):
        cs, ct = fs.shape[1], ft.shape[1]
        p = (rand(ct, cs), rand(ct) * 0.1, 1.0 + rand(ct) ** 2, 1.0 + 0.2 * rand(ct), 0.1 * rand(ct))
        set_regressor(reg, *p)
        params.append(p)
    s_feats = [as_student(fs) for fs, _ in pairs]
    t_feats = [as_teacher(ft) for _, ft in pairs]
    got = call(loss, rand(len(pairs[0][0]), 5), rand(len(pairs[0][0]), 5), s_feats, t_feats).item()
    assert got == pytest.approx(ref_fitnet(pairs, params), rel=1e-9)


def test_fitnet_identity_regressor_gives_zero() -> None:
    f = rand(3, 4, 8, 8)
    pooled = np_block_pool(f, 4, 4)  # teacher tap smaller: student is pooled to match
    loss = build("fitnet", [(4, 8, 8), (4, 4, 4)], [(4, 4, 4), (4, 4, 4)]).eval()
    for reg in loss.regressors:
        set_regressor(reg, np.eye(4), np.zeros(4), np.full(4, 1.0 - 1e-5), np.ones(4), np.zeros(4))
    got = call(loss, rand(3, 5), rand(3, 5), [as_student(f), as_student(pooled)], [as_teacher(pooled)] * 2)
    assert got.item() == pytest.approx(0.0, abs=1e-20)


def test_fitnet_regressor_is_trainable() -> None:
    loss = build("fitnet", [(2, 4, 4)], [(3, 4, 4)])
    val = call(loss, rand(4, 5), rand(4, 5), [as_student(rand(4, 2, 4, 4))], [as_teacher(rand(4, 3, 4, 4))])
    val.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


# ---------------------------------------------------------------- zero at student == teacher


@pytest.mark.parametrize("name", ["kd", "dkd"])
def test_logit_losses_zero_when_equal(name) -> None:
    z = rand(4, 6)
    loss = build(name, [], [], num_classes=6)
    assert call(loss, z, z, labels=[0, 1, 5, 3], epoch=50).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["pkt", "pkt-cosine", "rkd"])
def test_embedding_losses_zero_when_equal(name) -> None:
    e = rand(5, 4)
    loss = build(name, [(4,)], [(4,)])
    assert call(loss, rand(5, 3), rand(5, 3), [as_student(e)], [as_teacher(e)]).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["at", "sp"])
def test_tap_losses_zero_when_equal(name) -> None:
    f = rand(3, 4, 4, 4)
    loss = build(name, [(4, 4, 4)], [(4, 4, 4)])
    assert call(loss, rand(3, 3), rand(3, 3), [as_student(f)], [as_teacher(f)]).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- gradients: student yes, teacher no


def _inputs_for(name: str, n: int = 6):
    uses = losses.get(name).uses
    if uses == "logits":
        return [], [], [], []
    if uses == "embedding":
        return [(7,)], [(9,)], [rand(n, 7)], [rand(n, 9)]
    s_shapes, t_shapes = [(3, 8, 8), (4, 4, 4)], [(5, 4, 4), (2, 8, 8)]
    return s_shapes, t_shapes, [rand(n, *s) for s in s_shapes], [rand(n, *t) for t in t_shapes]


@pytest.mark.parametrize("raw_inference", [False, True])
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_student_not_teacher(name, raw_inference) -> None:
    n = 6
    s_shapes, t_shapes, s_np, t_np = _inputs_for(name, n)
    loss = build(name, s_shapes, t_shapes, num_classes=5, num_data=20)
    s_logits = as_student(rand(n, 5))
    s_feats = [as_student(x) for x in s_np]
    with torch.inference_mode():
        t_logits = torch.tensor(rand(n, 5))
        t_feats = [torch.tensor(x) for x in t_np]
    if not raw_inference:  # what the trainer does
        t_logits, t_feats = t_logits.clone(), [x.clone() for x in t_feats]
    val = call(loss, s_logits, t_logits, s_feats, t_feats, labels=torch.arange(n) % 5, index=torch.arange(n), epoch=30)
    assert val.dim() == 0 and torch.isfinite(val)
    val.backward()
    grads = [s_logits.grad] if loss.uses == "logits" else [x.grad for x in s_feats]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    for x in [t_logits, *t_feats]:
        assert not x.requires_grad and x.grad is None


# ---------------------------------------------------------------- crd


def make_crd(num_data: int = 24, ds: int = 6, dt: int = 10, **hp) -> DistillLoss:
    hp = {"feat_dim": 8, **hp}
    return build("crd", [(ds,)], [(dt,)], num_data=num_data, **hp)


def ref_crd(loss, s: np.ndarray, t: np.ndarray, idx: np.ndarray, negs: np.ndarray, mem_s, mem_t, num_data):
    def embed(lin, x):
        w, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
        out = []
        for row in x:
            v = w @ row + b
            out.append(v / math.sqrt(v @ v))
        return np.array(out)

    v_s, v_t = embed(loss.embed_s.linear, s), embed(loss.embed_t.linear, t)
    temp, n = 0.07, len(idx)
    cand = np.concatenate([idx[:, None], negs], axis=1)
    out_s = np.array([[math.exp(mem_t[c] @ v_s[i] / temp) for c in cand[i]] for i in range(n)])
    out_t = np.array([[math.exp(mem_s[c] @ v_t[i] / temp) for c in cand[i]] for i in range(n)])
    total = 0.0
    for out in (out_s, out_t):
        p = out / (out.mean() * num_data)  # Z estimated on the first batch
        k = p.shape[1] - 1
        kpn = k / num_data
        for i in range(n):
            total -= math.log(p[i, 0] / (p[i, 0] + kpn + 1e-7)) / n
            for j in range(1, k + 1):
                total -= math.log(kpn / (p[i, j] + kpn + 1e-7)) / n
    return total, v_s, v_t


@pytest.mark.parametrize("n,num_data,ds,dt,nce_k", [(3, 5, 2, 3, 16384), (6, 30, 6, 10, 7)])
def test_crd_value(n, num_data, ds, dt, nce_k) -> None:
    loss = make_crd(num_data, ds, dt, nce_k=nce_k)
    assert loss.nce_k == min(nce_k, num_data - 1)
    drawn = []
    orig = loss.sample_negatives
    loss.sample_negatives = lambda idx: drawn.append(orig(idx)) or drawn[-1]
    mem_s, mem_t = loss.memory_s.numpy().copy(), loss.memory_t.numpy().copy()
    s, t = rand(n, ds), rand(n, dt)
    idx = np.array(RNG.choice(num_data, size=n, replace=False))
    got = call(loss, rand(n, 5), rand(n, 5), [as_student(s)], [as_teacher(t)], index=torch.as_tensor(idx)).item()
    negs = drawn[0].numpy()
    assert negs.shape == (n, loss.nce_k)
    assert ((negs >= 0) & (negs < num_data) & (negs != idx[:, None])).all()
    ref, v_s, v_t = ref_crd(loss, s, t, idx, negs, mem_s, mem_t, num_data)
    assert got == pytest.approx(ref, rel=1e-9)
    # memory bank: momentum 0.5 update of the batch rows only, then L2-normalised
    for bank, old, v in ((loss.memory_s, mem_s, v_s), (loss.memory_t, mem_t, v_t)):
        expect = old.copy()
        for i, j in enumerate(idx):
            mixed = 0.5 * old[j] + 0.5 * v[i]
            expect[j] = mixed / np.linalg.norm(mixed)
        np.testing.assert_allclose(bank.numpy(), expect, rtol=1e-12, atol=1e-12)
    assert (loss.z > 0).all()


def test_crd_requires_index() -> None:
    loss = make_crd()
    with pytest.raises(ValueError, match="index"):
        call(loss, rand(4, 5), rand(4, 5), [as_student(rand(4, 6))], [as_teacher(rand(4, 10))], index=None)


def test_crd_eval_leaves_banks_alone_and_state_persists() -> None:
    loss = make_crd().eval()
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    call(loss, rand(4, 5), rand(4, 5), [as_student(rand(4, 6))], [as_teacher(rand(4, 10))], index=torch.arange(4))
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {"memory_s", "memory_t", "z"} <= set(loss.state_dict())


def test_crd_bitwise_repeatable_and_rng_state_roundtrip() -> None:
    s, t = rand(4, 6), rand(4, 10)

    def run(loss, steps=3):
        return [call(loss, rand(4, 5), rand(4, 5), [as_student(s)], [as_teacher(t)], index=torch.arange(4) + k).item() for k in range(steps)]

    torch.manual_seed(0)
    a = make_crd(seed=3)
    torch.manual_seed(0)
    b = make_crd(seed=3)
    assert run(a) == run(b)
    # resume: copy state_dict + extra state, both continue identically
    c = make_crd(seed=99)
    c.load_state_dict(a.state_dict())
    c.load_extra_state_tensors(copy.deepcopy(a.extra_state_tensors()))
    assert run(a) == run(c)
    assert not torch.equal(make_crd(seed=1).sample_negatives(torch.arange(4)), make_crd(seed=2).sample_negatives(torch.arange(4)))


def test_crd_decreases_on_tiny_problem() -> None:
    torch.manual_seed(0)
    num_data, n = 16, 16
    loss = make_crd(num_data, 6, 10)
    s = torch.tensor(rand(num_data, 6), requires_grad=True)
    t = as_teacher(rand(num_data, 10))
    opt = torch.optim.Adam([s, *loss.parameters()], lr=0.05)
    idx = torch.arange(n)
    values = []
    for _ in range(30):
        opt.zero_grad()
        val = call(loss, rand(n, 5), rand(n, 5), [s], [t], index=idx)
        assert torch.isfinite(val)
        val.backward()
        opt.step()
        values.append(val.item())
    assert np.mean(values[-5:]) < values[0] - 0.5
    assert t.grad is None


def test_crd_float32_default_path() -> None:
    loss = losses.get("crd")([(6,)], [(10,)], 5, 50)
    assert loss.nce_k == 49 and loss.memory_s.shape == (50, 128)
    with torch.inference_mode():
        t = torch.randn(4, 10)
    val = loss(KDBatch(Feats(torch.randn(4, 5), [torch.randn(4, 6, requires_grad=True)]), Feats(t.clone(), [t.clone()]),
                       torch.zeros(4, dtype=torch.long), torch.tensor([0, 7, 9, 49]), 0))
    assert val.dtype == torch.float32 and torch.isfinite(val)


# ---------------------------------------------------------------- construction checks


def test_mismatched_pair_counts_rejected() -> None:
    with pytest.raises(ValueError, match="paired"):
        losses.get("at")([(3, 4, 4)], [], 5, 10)


def test_int_hparam_must_be_integral() -> None:
    assert losses.get("crd")([(4,)], [(4,)], 5, 10, nce_k=3.0).nce_k == 3
    with pytest.raises(ValueError, match="integer"):
        losses.get("crd")([(4,)], [(4,)], 5, 10, nce_k=3.5)


def test_batch_of_one_is_finite() -> None:
    for name in ALL:
        s_shapes, t_shapes, s_np, t_np = _inputs_for(name, 1)
        loss = build(name, s_shapes, t_shapes, num_classes=5, num_data=20)
        val = call(loss, rand(1, 5), rand(1, 5), [as_student(x) for x in s_np], [as_teacher(x) for x in t_np], index=torch.tensor([3]), epoch=30)
        assert torch.isfinite(val), name
