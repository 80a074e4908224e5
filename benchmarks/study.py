"""What the pre-registered studies share (`effect.py`, `methods.py`): the student schedule, the run options,
the test endpoints, a resumable pool of runs, paired statistics and the code revision.

A study is a list of `Job`s with dependencies; `execute` runs those without a result yet on spawned worker
processes (one JSON per finished job in OUT/runs/, so a rerun skips them), as the study's own `run_job`
function dispatches them. `preset` arguments are the study's settings: anything with `data`,
`val_fraction`, `batch_size` and `device`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a study never reaches the hub


def student_optim(total: int) -> Any:
    """The reference student schedule over `total` epochs: Adam 1e-3, no weight decay, x0.1 for the last seventh."""
    from indistill_cli.stages.pipeline import reference_student_optim, with_milestone

    return with_milestone(reference_student_optim(), total)


def opts_for(p: Any, seed: int, **kw: Any) -> Any:
    from indistill_cli.stages.options import RunOptions

    return RunOptions(**{"data": p.data, "val_fraction": p.val_fraction, "batch_size": p.batch_size, "seed": seed,
                         "device": p.device, "save_every": 0, **kw})


def scores(p: Any, ckpt: str) -> dict[str, float]:
    """Test top-1 and the paper's retrieval endpoints (train split as the database, test as queries)."""
    from indistill_cli.stages.commands import EvaluateSettings, RetrieveSettings
    from indistill_cli.stages.evaluate import run_evaluate
    from indistill_cli.stages.retrieve import run_retrieve

    ev_opts, rt_opts = opts_for(p, 0, augment=False), opts_for(p, 0, val_fraction=0.0)
    ev = run_evaluate(EvaluateSettings(model=ckpt, per_class=False, batch_size=ev_opts.eval_batch_size, opts=ev_opts))
    rt = run_retrieve(RetrieveSettings(model=ckpt, batch_size=rt_opts.eval_batch_size, opts=rt_opts))
    m = rt["metrics"]
    return {"top1": 100 * ev["top1"], "map_cosine": 100 * m["cosine"]["map"],
            "map_euclidean": 100 * m["euclidean"]["map"], "p100_cosine": 100 * m["cosine"]["precision@100"]}


@dataclass
class Job:
    name: str  # unique; its result is OUT/runs/<name>.json
    kind: str  # what the study's run_job does with it
    seed: int = 0
    arm: str = ""
    keep: tuple[float, float] = (0.0, 1.0)  # effect study: the keep-flow weight and decay
    deps: list[str] = field(default_factory=list)
    method: str = ""  # methods study: the method row


def work_path(out: Path, name: str) -> str:
    """Where a study keeps a run's checkpoint (OUT/work/NAME)."""
    return str(out / "work" / name)


def run_one(dispatch: Callable[[Any, Path, Job], dict[str, Any]], p: Any, out_s: str, job: Job, threads: int,
            revision_fn: Callable[[], str]) -> dict[str, Any]:
    """One job in a worker process (quiet, `threads` torch threads): `dispatch` runs it; its result, with the
    job's identity, wall time and code revision, is written to OUT/runs/NAME.json and returned."""
    import time

    import torch

    from indistill_cli import progress

    torch.set_num_threads(threads)
    progress.set_quiet(True)
    out = Path(out_s)
    t0 = time.perf_counter()
    res = dispatch(p, out, job)
    res.update({"job": job.name, "kind": job.kind, "seed": job.seed, "arm": job.arm,
                **({"method": job.method} if job.method else {}), "threads": threads,
                "wall_s": round(time.perf_counter() - t0, 1), "revision": revision_fn(),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path = out / "runs" / f"{job.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(path)
    return res


def execute(run_job: Callable[..., dict[str, Any]], args: tuple[Any, ...], out: Path, jobs: list[Job],
            n_workers: int, threads: int, tag: str) -> dict[str, dict[str, Any]]:
    """Run the jobs not finished yet on a pool of spawned workers (`run_job(*args, str(out), job, threads)`),
    in list order as dependencies allow. A job is ready when every dependency has a result in OUT/runs/ (from
    this call or an earlier one); a failed job stops the study (its error is raised here)."""
    import multiprocessing as mp

    from indistill_cli import progress

    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (out / "work").mkdir(exist_ok=True)
    done = {f.stem: json.loads(f.read_text()) for f in runs.glob("*.json")}
    todo = [j for j in jobs if j.name not in done]
    running: dict[Future, Job] = {}
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=mp.get_context("spawn")) as pool:
        while todo or running:
            for j in [j for j in todo if all(d in done for d in j.deps)][: n_workers - len(running)]:
                todo.remove(j)
                running[pool.submit(run_job, *args, str(out), j, threads)] = j
                progress.info(f"[{tag}] start {j.name}")
            if not running:
                raise RuntimeError(f"jobs with unmet dependencies: {[j.name for j in todo]}")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in finished:
                j = running.pop(f)
                done[j.name] = f.result()
                progress.info(f"[{tag}] done {j.name} ({done[j.name]['wall_s']:.0f} s)")
    return done


def t_interval(d: list[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of the 95% t-interval of paired differences."""
    from scipy import stats

    m = statistics.fmean(d)
    if len(d) < 2:
        return m, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


def wilcoxon_p(d: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p (exact for small n); nan when every difference is zero."""
    from scipy import stats

    if len(d) < 2 or all(v == 0 for v in d):
        return float("nan")
    return float(stats.wilcoxon(d, alternative="two-sided").pvalue)


def revision(paths: tuple[str, ...]) -> str:
    """The short commit of HEAD, marked +uncommitted when `paths` (relative to the repository) have changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=HERE.parent,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+uncommitted" if dirty else "") if rev else "unknown"
    except OSError:
        return "unknown"
