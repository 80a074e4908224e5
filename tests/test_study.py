"""`indistill study` on the embedded set (the `smoke` preset: 10% of fashion-mnist-mini, 2 seeds, 1 KD epoch):
the protocol is written before any run and guards its folder, a killed study resumes without redoing finished
runs, `--jobs 2` and submitit's local executor give the numbers `--jobs 1` gives, the statistics are scipy's,
and `--train-fraction` is a fixed, nested, class-stratified subset that leaves validation and test alone."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, assert_one_line_error, cli_env, run_cli_subprocess
from study_legacy import values

pytestmark = pytest.mark.usefixtures("one_thread")  # the in-process commands

SMOKE = ("study", "--preset", "smoke", "--threads", "1")
# the smoke preset's design, spelled as a command line (a custom study)
CUSTOM = ("study", "-t", "cnn3", "-s", "cnn3-w0.5", "--data", "fashion-mnist-mini", "--train-fraction", "0.1",
          "--teacher-epochs", "1", "--methods", "kd", "--epochs", "1", "--warmup", "1,1,1", "--budget", "equal",
          "--seeds", "2")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The smoke study, run once with --jobs 2 (teacher, prune, then per seed a warmup and the arms KD+W, InD+KD)."""
    out = tmp_path_factory.mktemp("study") / "jobs2"
    code, stdout, err = run_cli_subprocess(*SMOKE, "--jobs", "2", "-o", out, "--json", timeout=900)
    assert code == 0, err[-3000:]
    summary = json.loads(stdout)
    assert summary["complete_seeds"] == [0, 1] and summary["runs"] == 2 + 2 * 3
    return out


def test_protocol_is_written_before_any_run_and_recorded_by_every_run(base, tmp_path):
    code, _, err = run_cli_subprocess(*CUSTOM, "-o", tmp_path / "p", "--protocol-only")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["protocol.json", "protocol.md"]  # no run, no runs/
    proto = json.loads((tmp_path / "p" / "protocol.json").read_text())
    assert proto["protocol_md_sha256"] == _sha(tmp_path / "p" / "protocol.md")
    d = proto["design"]
    assert [a["name"] for a in d["arms"]] == ["KD+W", "InD+KD"] and d["kd_epochs"] == 1 and d["seeds"] == [0, 1]
    assert [(c["a"], c["b"], c["primary"]) for c in d["comparisons"]] == [("InD+KD", "KD+W", True)]
    assert proto["data"]["train_fraction"] == 0.1 and proto["data"]["train"] == 900 and proto["data"]["test"] == 2000
    assert len(proto["data"]["sha256"]) == 64 and proto["models"]["teacher"] == {"arch": "cnn3"}
    assert "Holm" in proto["tests"]["multiplicity"] and proto["written_by"]["tool"].startswith("indistill ")
    assert proto["data"]["sha256"] in (tmp_path / "p" / "protocol.md").read_text()
    # the smoke study: protocol first, and every run names the protocol it ran under
    sha = _sha(base / "protocol.json")
    written = json.loads((base / "protocol.json").read_text())["written_by"]["time"]
    runs = [json.loads(f.read_text()) for f in (base / "runs").glob("*.json")]
    assert len(runs) == 8 and all(r["protocol"] == sha and r["finished"] >= written for r in runs)
    code, _, err = run_cli_subprocess("study", "-o", tmp_path / "p", "--protocol-only")  # read back from the folder
    assert code == 0 and "protocol matches" in err, err


def test_a_changed_protocol_is_refused_in_one_line(tmp_path, cli):
    out = tmp_path / "s"
    code, _, err = cli(*CUSTOM, "-o", str(out), "--protocol-only")
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(*CUSTOM, "-o", str(out), "--protocol-only")  # the same study: accepted
    assert code == 0 and "protocol matches" in err, err
    code, _, err = cli(*CUSTOM[:-2], "--seeds", "3", "-o", str(out))
    assert_one_line_error(code, err, "holds another protocol", "design.seeds", "a new protocol is a new folder")
    code, _, err = cli(*SMOKE, "-o", str(out), "--report")
    assert_one_line_error(code, err, "holds another protocol")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, nothing run
    (out / "protocol.md").write_text((out / "protocol.md").read_text() + "\nOne more arm.\n")
    code, _, err = cli(*CUSTOM, "-o", str(out))
    assert_one_line_error(code, err, "protocol.md: changed since protocol.json recorded its sha256")
    (out / "protocol.json").unlink()
    code, _, err = cli(*CUSTOM, "-o", str(out))  # a protocol.md alone (another tool's) must be this study's own
    assert_one_line_error(code, err, "protocol.md: is not this study's protocol")


def test_bad_study_options_are_one_line(tmp_path, cli):
    o = ("-o", str(tmp_path / "x"))
    for args, needle in [((*SMOKE, "--epochs", "3"), "--preset smoke fixes the study's design: --epochs"),
                         (("study", "--preset", "smok"), "unknown preset 'smok' (did you mean 'smoke'?)"),
                         (("study", "-s", "cnn3-w0.5"), "give --teacher and --student"),
                         ((*CUSTOM, "--budget", "some"), "--budget must be equal, added or both"),
                         ((*CUSTOM, "--methods", "kd,nope"), "nope"),
                         ((*CUSTOM, "--keep-flow", "1"), "--keep-flow takes WEIGHT:DECAY"),
                         ((*CUSTOM, "--train-fraction", "0"), "--train-fraction must be in (0, 1]"),
                         ((*CUSTOM, "--executor", "ray"), "--executor must be pool, local or slurm")]:
        code, _, err = cli(*args, *o)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "x").exists()


def test_a_killed_study_resumes_and_jobs_1_gives_the_numbers_of_jobs_2(base, tmp_path):
    """Run the study with --jobs 1 and SIGKILL it (its worker too) once seed 0 is done; the rerun (--jobs 2) leaves
    the finished runs' files untouched and starts none of them again; every number equals the uninterrupted
    --jobs 2 study's (seed 0's arms ran one at a time here, two at a time there)."""
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "indistill_cli", *SMOKE, "--jobs", "1", "-o", str(out)],
                         env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seed0 = {"teacher.json", "prune.json", "warmup-s0.json", "kd.longer.s0.json", "kd.ind.s0.json"}
    try:
        deadline = time.time() + 600
        while not seed0 <= {f.name for f in (out / "runs").glob("*.json")} and p.poll() is None \
                and time.time() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    kept = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in (out / "runs").glob("*.json")}
    assert seed0 <= set(kept) and len(kept) < 8, sorted(kept)
    code, _, err = run_cli_subprocess(*SMOKE, "--jobs", "2", "-o", out, timeout=900)
    assert code == 0, err[-3000:]
    started = {line.split("study: start ")[1].strip() for line in err.splitlines() if "study: start " in line}
    assert started == {f.stem for f in (out / "runs").glob("*.json")} - {Path(n).stem for n in kept}
    assert {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in (out / "runs").glob("*.json")
            if f.name in kept} == kept
    assert values(out) == values(base) and len(values(base)) == 8


def test_arms_and_comparisons_of_each_budget_view():
    """Per method: the arms each budget view needs, both views beside their controls, the strict view primary."""
    from indistill_cli.stages.study_presets import arms_for, comparisons_for
    from indistill_cli.stages.study import Row

    rows = (Row("kd", "kd"), Row("pkt", "pkt", ce=0.0))
    names = lambda arms: [a.name for a in arms]  # noqa: E731
    assert names(arms_for(rows[:1], "equal", False, False, False)) == ["KD+W", "InD+KD"]
    assert names(arms_for(rows[:1], "added", True, True, True)) == ["CE", "KD", "KD+W", "InD+KD", "InDcum+KD",
                                                                     "InD+KD+keep"]
    both = [(c.a, c.b, c.view, c.primary) for c in comparisons_for(rows, "both", True, True, False)][:6]
    assert both == [("InD+KD", "KD+W", "equal total epochs", True), ("InDcum+KD", "KD+W", "equal total epochs", True),
                    ("InD+KD", "KD", "warmup added", False), ("InDcum+KD", "KD", "warmup added", False),
                    ("KD+W", "KD", "control: the warmup's epochs given to the method", False),
                    ("InDcum+KD", "InD+KD", "cumulative vs plain curriculum", False)]
    added = comparisons_for(rows, "added", False, False, False)
    assert [(c.a, c.b, c.primary) for c in added] == [("InD+KD", "KD", True), ("KD+W", "KD", False),
                                                      ("InD+PKT", "PKT", True), ("PKT+W", "PKT", False)]


def test_devices_take_one_run_each():
    """--devices: one worker per device, each run given a free one and the device back when it ends (the
    assignment the GPUs get, on names alone: no process starts)."""
    from indistill_cli.stages.study_presets import preset
    from indistill_cli.stages.study_runs import _on_device, _Pool, execution

    spec = preset("smoke")
    ex = execution(spec, None, None, "0,1", "pool", [])
    assert (ex.workers, ex.devices) == (2, ("cuda:0", "cuda:1"))
    with _Pool(ex) as pool:
        assert pool.slots == 2 and [pool.device(), pool.device(), pool.device()] == ["cuda:0", "cuda:1", None]
        pool.release("cuda:1")
        assert pool.device() == "cuda:1"
    assert dict(_on_device(spec, "cuda:1").run)["device"] == "cuda:1" and dict(spec.run)["device"] == "cpu"
    assert execution(spec, 3, None, None, "pool", []).threads == max(1, (os.cpu_count() or 1) // 3)


def test_submitit_local_executor_runs_the_missing_runs(base, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "submitit"
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("results.*", "*.png"))
    (out / "runs" / "kd.ind.s1.json").unlink()
    code, _, err = run_cli_subprocess(*SMOKE, "--executor", "local", "-o", out, timeout=900)
    assert code == 0, err[-3000:]
    assert "study: start kd.ind.s1" in err and err.count("study: start") == 1
    assert values(out) == values(base)
    assert list((out / "submitit").rglob("*_result.pkl")) or list((out / "submitit").rglob("*.out"))


def test_report_statistics_are_scipys(base):
    from scipy import stats

    r = json.loads((base / "results.json").read_text())
    per = r["summary"]["per_seed"]
    for c in r["summary"]["comparisons"]["primary"]:
        d = [per[c["a"]][s]["map_cosine"] - per[c["b"]][s]["map_cosine"] for s in ("0", "1")]
        e = c["map_cosine"]
        assert e["per_seed"] == d
        t = stats.ttest_1samp(d, 0.0)
        ci = t.confidence_interval(0.95)
        assert e["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-9) and e["p_t"] == pytest.approx(t.pvalue, rel=1e-9)
        assert e["wilcoxon_p"] is None  # n = 2 < 6
    text = (base / "results.md").read_text()
    assert "### Verdicts (primary seeds)" in text and "- **InD+KD - KD+W** (equal total epochs, primary)" in text
    for name in ("results.md", "figure.png", "flow.png"):
        assert (base / name).stat().st_size > 1000, name


def test_paired_statistics_against_scipy_on_fixed_inputs():
    from scipy import stats

    from indistill_cli.metrics import paired

    d = [1.2, -0.4, 0.8, 2.1, 0.3, 1.7, -0.2]
    m, lo, hi = paired.t_interval(d)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (m, lo, hi) == pytest.approx((sum(d) / len(d), ci.low, ci.high), rel=1e-12)
    assert paired.t_test_p(d) == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue, rel=1e-12)
    assert paired.wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-12)
    assert paired.wilcoxon_p(d) == pytest.approx(14 / 128)  # exact: W- = 1 + 3; 7 of the 2^7 sign sets have W- <= 4
    assert math.isnan(paired.wilcoxon_p([0.0, 0.0])) and math.isnan(paired.t_interval([1.0])[1])
    # Holm: sorted p (0.005, 0.01, 0.03, 0.04) x (4, 3, 2, 1), made monotone; nan stays out of the family
    assert paired.holm([0.01, 0.04, 0.03, 0.005, math.nan])[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert paired.verdict(1.0, 0.2, 1.8, 7) == "helps" and paired.verdict(-1.0, -1.8, -0.2, 7) == "hurts"
    assert paired.verdict(0.1, -0.9, 1.3, 5) == ("no detectable difference at n = 5; the interval excludes effects "
                                                "beyond ±1.30")
    assert paired.verdict(1.0, 0.2, 1.8, 7, 0.08, 4) == ("helps (does not hold after Holm over 4 primary "
                                                         "comparisons: p = 0.08)")


def test_scores_have_one_spelling_and_read_the_old_ones():
    from indistill_cli.metrics.scores import Scores

    ev, rt = {"top1": 0.5, "top5": 0.75}, {"metrics": {"cosine": {"map": 0.25, "precision@100": 0.5},
                                                         "euclidean": {"map": 0.125}}}
    s = Scores.from_stages(ev, rt)
    assert s.as_dict() == {"top1": 50.0, "top5": 75.0, "map_cosine": 25.0, "map_euclidean": 12.5, "p100_cosine": 50.0}
    old_pipeline = {"top1": 0.5, "top5": 0.75, "map_cosine": 0.25, "map_euclidean": 0.125, "p@100_cosine": 0.5}
    old_compare = {"top1": 0.5, "top5": 0.75, "map": 0.25, "map_euclidean": 0.125, "data": "x"}
    assert Scores.read(old_pipeline) == s and Scores.read(s.as_dict()) == s
    assert Scores.read(old_compare) == Scores(50.0, 75.0, 25.0, 12.5)


def test_committed_methods_study_is_reported_by_the_command(tmp_path):
    """A folder the old script wrote (protocol.md, results.json with every run, no runs/): `--report` adopts it
    when its protocol.md is the preset's word for word; running in it (its checkpoints are not here) is refused."""
    src = ROOT / "benchmarks" / "results" / "methods"
    out = tmp_path / "methods"
    out.mkdir()
    for name in ("protocol.md", "results.json"):
        shutil.copy(src / name, out / name)
    old = json.loads((out / "results.json").read_text())
    code, stdout, err = run_cli_subprocess("study", "--preset", "methods-mini", "-o", out, "--report", "--json")
    assert code == 0, err[-3000:]
    new = json.loads((out / "results.json").read_text())
    assert new["runs"] == old["runs"] and new["summary"]["complete_seeds"] == [0, 1, 2]
    kd = next(c for c in new["summary"]["comparisons"]["primary"] if (c["a"], c["b"]) == ("InD+KD", "KD+W"))
    before = next(c for c in old["summary"]["rows"]["kd"]["comparisons"] if c["view"] == "equal total epochs")
    assert kd["top1"]["mean"] == before["top1"]["mean"] and kd["top1"]["ci95"] == before["top1"]["ci95"]
    assert (out / "protocol.json").exists() and (out / "protocol.md").read_bytes() == (src / "protocol.md").read_bytes()
    (out / "protocol.json").unlink()
    code, _, err = run_cli_subprocess("study", "--preset", "methods-mini", "-o", out)
    assert_one_line_error(code, err, "not its runs/ and work/")
    assert not (out / "protocol.json").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------ --train-fraction


def _ids(split) -> list[bytes]:
    return [hashlib.sha1(img.numpy().tobytes() + bytes([int(y)])).digest()
            for img, y in zip(split.images, split.labels)]


def test_train_fraction_is_nested_stratified_and_leaves_val_and_test_alone():
    import torch

    from indistill_cli.data import load_dataset

    sets = {f: load_dataset("fashion-mnist-mini", 0.1, train_fraction=f) for f in (0.01, 0.1, 0.5, 1.0)}
    full = sets[1.0]
    for f, ds in sets.items():
        assert torch.equal(ds.val.images, full.val.images) and torch.equal(ds.test.images, full.test.images)
        assert torch.equal(ds.val.labels, full.val.labels) and torch.equal(ds.test.labels, full.test.labels)
        per_class = torch.bincount(ds.train.labels, minlength=10)
        assert per_class.tolist() == [max(1, round(n * f)) for n in torch.bincount(full.train.labels).tolist()]
    ids = {f: _ids(ds.train) for f, ds in sets.items()}
    assert all(len(set(ids[f])) == len(ids[f]) for f in ids)  # no image twice
    assert set(ids[0.01]) < set(ids[0.1]) < set(ids[0.5]) < set(ids[1.0])
    assert len(ids[0.1]) == 900 and len(ids[0.01]) == 90


def test_train_fraction_trains_on_the_subset_and_is_recorded(tmp_path, cli):
    from indistill_cli.io.checkpoint import load_checkpoint

    out = tmp_path / "t.safetensors"
    code, _, err = cli("train", "cnn3-w0.5", "--epochs", "1", "--train-fraction", "0.05", "-o", str(out))
    assert code == 0, err
    assert "(450 train / 1000 val)" in err
    assert load_checkpoint(str(out)).history[-1]["options"]["train_fraction"] == 0.05
