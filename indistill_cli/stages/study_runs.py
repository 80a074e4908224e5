"""A study's runs: one job through the chain's links in a worker process (`run_one`), and the executors that
run the jobs not finished yet (`execute`): a pool of local processes (`--jobs`, one per GPU with
`--devices`), or submitit (`--executor local|slurm`). Every finished run leaves OUT/runs/NAME.json, written
atomically; a rerun skips those, so a study resumes where it was stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indistill_cli import progress
from indistill_cli.errors import BadInput
from indistill_cli.stages.chain import KD, Curriculum, distill_link, planned, reference_links, score_on_test, \
    train_link, warmup_link, with_milestone
from indistill_cli.stages.study import Job, StudySpec, chain_of, opts_for

PACKAGE = Path(__file__).resolve().parents[1]


def revision() -> str:
    """The code that ran: the git commit of this checkout (+uncommitted when the package has changes), else
    the package's version."""
    from indistill_cli import __version__

    try:
        git = ["git", "-C", str(PACKAGE.parent)]
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "indistill_cli"], capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        rev, dirty = "", ""
    return rev + ("+uncommitted" if dirty else "") if rev else f"indistill {__version__}"


def val_map(spec: StudySpec, ckpt: str) -> float:
    """Validation retrieval mAP (cosine, the validation split searched in itself, leave-one-out): what the gap
    check and the pilot use, so no decision looks at the test split."""
    from indistill_cli.io.checkpoint import load_checkpoint
    from indistill_cli.metrics import classify
    from indistill_cli.models import create_model
    from indistill_cli.stages.session import open_session

    s = open_session(opts_for(spec, 0, augment=False))
    ck = load_checkpoint(ckpt)
    r = classify(create_model(ck).model, s.eval_loader("val", ck.spec), s.rt, s.ds.info.num_classes,
                 ck.spec.embedding.name)
    return 100 * r["map"]


def scores(spec: StudySpec, ckpt: str) -> dict[str, float]:
    return score_on_test(ckpt, opts_for(spec, 0)).as_dict()


def _reference(spec: StudySpec, work: str, job: Job) -> dict[str, Any]:
    """teacher, aux-ce, aux-pkt, prune: the chain's own links (seed 0)."""
    c = chain_of(spec, work)
    link = {ln.name: ln for ln in reference_links(c, opts_for(spec, job.seed), aux_name="aux-ce")}[job.kind]
    r = link.run()
    if job.kind == "prune":
        return {"pairs": r["pairs"]}
    if job.kind == "aux-ce":
        return {"val_top1": r["val_top1"]}
    out = {"val_top1": r["val_top1"]} if job.kind == "teacher" else {}
    return {**out, "scores": scores(spec, c.file(job.kind if job.kind == "teacher" else "aux"))}


def _gap(spec: StudySpec, work: str, job: Job) -> dict[str, Any]:
    """The precondition's numbers: validation mAP of the reference models and of a CE student (E+W epochs)."""
    c, n = chain_of(spec, work), spec.kd_epochs + spec.warm_epochs
    ce = f"{work}/pilot_ce_s{job.seed}.safetensors"
    train_link("gap", spec.student, ce, n, with_milestone(spec.student_optim, n), opts_for(spec, job.seed), False,
               "last").run()
    maps = {"teacher": val_map(spec, c.teacher_path)}
    if spec.aux:
        maps["auxiliary"] = val_map(spec, c.file("aux"))
    return {"val_map": {**maps, "student_ce": val_map(spec, ce)}}


def _warmup(spec: StudySpec, work: str, job: Job) -> dict[str, Any]:
    """The seed's warmup: the first W epochs of one lr plan over W + E (shared by every arm that needs it)."""
    cum = job.kind == "warmup-cum"
    dest = f"{work}/{'warm_cum' if cum else 'warm'}_s{job.seed}.safetensors"
    total = spec.kd_epochs + spec.warm_epochs
    r = warmup_link(chain_of(spec, work), opts_for(spec, job.seed), dest, planned(spec.student_optim, total),
                    spec.warm_epochs, Curriculum(explicit=spec.curriculum, cumulative=cum)).run()
    return {"curves": r["curves"], "final_mse": r["final_mse"], "initial_mse": r["initial_mse"]}


def _arm(spec: StudySpec, work: str, job: Job) -> dict[str, Any]:
    """One arm of one seed (or a pilot run): CE alone, or KD from a fresh student or from the seed's warmup."""
    a, o = spec.arm(job.arm), opts_for(spec, job.seed)
    dest, n = f"{work}/{job.name}.safetensors", spec.arm_epochs(a)
    optim = with_milestone(spec.student_optim, n)
    if a.kind == "ce":
        train_link("arm", spec.student, dest, n, optim, o, False, "last").run()
        return {"scores": scores(spec, dest), "curves": {}}
    row, warm = spec.row(a.row), a.kind in ("ind", "cum", "keep")
    student = f"{work}/{'warm_cum' if a.kind == 'cum' else 'warm'}_s{job.seed}.safetensors" if warm else spec.student
    kd = KD((row.method,), row.params, row.ce, "last", spec.flow, job.keep[0] if a.kind == "keep" else 0.0,
            job.keep[1])
    r = distill_link(chain_of(spec, work), o, student, dest, kd, n, optim, warm).run()
    if job.kind == "pilot":
        return {"keep_flow": list(job.keep), "val_map": val_map(spec, dest)}
    return {"scores": scores(spec, dest), "curves": r.get("curves", {}), "params": list(row.params), "ce": r["ce"],
            "epochs": r["epochs"], "phases": r.get("phases", []), "train_wall_s": r["wall_s"]}


def run_job(spec: StudySpec, out: Path, job: Job) -> dict[str, Any]:
    work = str(out / "work")
    if job.kind in ("teacher", "aux-ce", "aux-pkt", "prune"):
        return _reference(spec, work, job)
    if job.kind == "gap":
        return _gap(spec, work, job)
    if job.kind in ("warmup", "warmup-cum"):
        return _warmup(spec, work, job)
    return _arm(spec, work, job)


def run_one(spec: StudySpec, out_s: str, job: Job, threads: int, device: str | None = None,
            protocol: str = "") -> dict[str, Any]:
    """One job in a worker process (quiet, `threads` torch threads, on `device` when given): its result, with the
    job's identity, wall time, code revision and the protocol's sha256, goes to OUT/runs/NAME.json."""
    import torch

    torch.set_num_threads(threads)
    progress.set_quiet(True)
    if device:
        spec = _on_device(spec, device)
    out = Path(out_s)
    t0 = time.perf_counter()
    res = run_job(spec, out, job)
    res.update({"job": job.name, "kind": job.kind, "seed": job.seed, "arm": job.arm,
                **({"method": job.method} if job.method else {}), "threads": threads,
                "device": dict(spec.run).get("device", "auto"), "wall_s": round(time.perf_counter() - t0, 1),
                "revision": revision(), "protocol": protocol,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    path = out / "runs" / f"{job.name}.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(path)
    return res


def _on_device(spec: StudySpec, device: str) -> StudySpec:
    import dataclasses

    return dataclasses.replace(spec, run=tuple({**dict(spec.run), "device": device}.items()))


def finished(out: Path) -> dict[str, dict[str, Any]]:
    """The runs that finished (OUT/runs/*.json); a folder written before runs/ was kept (its results.json
    holds every run) is read from there."""
    done: dict[str, dict[str, Any]] = {}
    legacy = out / "results.json"
    if legacy.exists():
        done.update(json.loads(legacy.read_text()).get("runs", {}))
    for f in sorted((out / "runs").glob("*.json")):
        done[f.stem] = json.loads(f.read_text())
    return done


@dataclass
class Execution:
    """How the runs are executed (none of it changes a number, except `threads`, recorded per run)."""

    workers: int = 1
    threads: int = 1
    devices: tuple[str, ...] = ()
    executor: str = "pool"  # pool: local processes; local / slurm: submitit
    params: dict[str, Any] = field(default_factory=dict)  # submitit's update_parameters
    protocol: str = ""  # the protocol's sha256, recorded in every run


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise BadInput(f"--executor-param takes KEY=VALUE, e.g. timeout_min=240, got '{text}'")
    for cast in (int, float):
        try:
            return key.strip(), cast(value)
        except ValueError:
            pass
    return key.strip(), value


def execution(spec: StudySpec, jobs: int | None, threads: int | None, devices: str | None, executor: str,
              params: list[str]) -> Execution:
    """How to run the study: `jobs` runs at a time (default: the spec's), the cores split between them unless
    `threads` says otherwise, one run per GPU with `devices`."""
    if executor not in ("pool", "local", "slurm"):
        raise BadInput(f"--executor must be pool, local or slurm, got '{executor}'")
    devs = tuple(f"cuda:{d.strip()}" if d.strip().isdigit() else d.strip() for d in (devices or "").split(",")
                 if d.strip())
    workers = jobs if jobs is not None else (len(devs) or spec.jobs)
    if workers < 1 or (threads is not None and threads < 1):
        raise BadInput("--jobs and --threads must be at least 1")
    if devs and jobs is not None and jobs != len(devs) and executor == "pool":
        raise BadInput(f"--devices {devices} runs one run per GPU: --jobs must be {len(devs)} or left out")
    split = spec.prose == "generic"  # a preset of the benchmark scripts keeps its registered thread count
    auto = max(1, (os.cpu_count() or 1) // workers) if split else spec.threads
    return Execution(workers, threads or auto, devs, executor, dict(_param(p) for p in params))


def weight(spec: StudySpec, job: Job) -> int:
    """A job's rough cost for the ETA: its epochs, plus one for loading and scoring."""
    if job.kind in ("teacher", "aux-ce", "aux-pkt"):
        return 1 + (spec.teacher_epochs if job.kind == "teacher" else spec.aux_epochs)
    if job.kind in ("warmup", "warmup-cum"):
        return 1 + spec.warm_epochs
    if job.kind == "gap":
        return 1 + spec.kd_epochs + spec.warm_epochs
    if job.kind in ("arm", "pilot"):
        return 1 + spec.arm_epochs(spec.arm(job.arm))
    return 1


class Board:
    """One progress bar on stderr over every run of the study (the finished ones count as done), with an ETA
    from this session's pace (its finished runs' epochs per second)."""

    def __init__(self, spec: StudySpec, jobs: list[Job], done: dict[str, Any]) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.spec, self.t0, self.spent = spec, time.perf_counter(), 0
        self.left = sum(weight(spec, j) for j in jobs if j.name not in done)
        self.n, self.k = len(jobs), sum(j.name in done for j in jobs)
        self.bar = Progress(TextColumn("[bold]study"), BarColumn(), TextColumn("{task.fields[runs]}"),
                            TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[status]}"),
                            console=progress.console, disable=progress.quiet(), transient=True)
        total = self.left + sum(weight(spec, j) for j in jobs if j.name in done)
        self.task = self.bar.add_task("study", total=max(1, total), completed=total - self.left, runs="",
                                      eta="eta: after the first run", status="")
        self.running: list[str] = []
        self.update()

    def update(self) -> None:
        eta = self.bar.tasks[0].fields["eta"]
        if self.spent:
            pace = (time.perf_counter() - self.t0) / self.spent
            eta = f"eta {_minutes(pace * self.left)}"
        self.bar.update(self.task, runs=f"{self.k}/{self.n} runs", eta=eta, status=", ".join(self.running[:3]))

    def start(self, job: Job) -> None:
        self.running.append(job.name)
        progress.info(f"study: start {job.name}")
        self.update()

    def finish(self, job: Job, res: dict[str, Any]) -> None:
        w = weight(self.spec, job)
        self.running.remove(job.name)
        self.spent, self.left, self.k = self.spent + w, self.left - w, self.k + 1
        self.bar.advance(self.task, w)
        progress.info(f"study: done {job.name} ({res.get('wall_s', 0):.0f} s)")
        self.update()


def _minutes(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def runs_done(out: Path) -> dict[str, dict[str, Any]]:
    """The runs finished in this folder (OUT/runs/*.json): what a study does not run again."""
    return {f.stem: json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))}


def backend(ex: Execution, out: Path) -> _Pool:
    """The executor's handle (a context manager): local processes, or submitit's local or slurm executor."""
    return _Pool(ex) if ex.executor == "pool" else _Submitit(ex, out)


def execute(spec: StudySpec, out: Path, jobs: list[Job], runner: _Pool, board: Board) -> dict[str, dict[str, Any]]:
    """Run the jobs without a result yet, in list order as dependencies allow (a job is ready when each of its
    dependencies has a result, from this call or an earlier one); a failed job stops the study with its error."""
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "work").mkdir(exist_ok=True)
    done = runs_done(out)
    todo = [j for j in jobs if j.name not in done]
    running: dict[Any, tuple[Job, str | None]] = {}
    while todo or running:
        for j in [j for j in todo if all(d in done for d in j.deps)][: runner.slots - len(running)]:
            todo.remove(j)
            device = runner.device()
            running[runner.submit(spec, out, j, device)] = (j, device)
            board.start(j)
        if not running:
            raise BadInput(f"runs with unmet dependencies: {[j.name for j in todo]}")
        for handle in runner.wait(list(running)):
            j, device = running.pop(handle)
            done[j.name] = runner.result(handle)
            runner.release(device)
            board.finish(j, done[j.name])
    return done


class _Pool:
    """Local worker processes (spawned: each run imports torch afresh), one device each with --devices."""

    def __init__(self, ex: Execution) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.ex, self.free = ex, list(ex.devices)
        self.slots = len(ex.devices) or ex.workers
        self.pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=mp.get_context("spawn"))

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def device(self) -> str | None:
        return self.free.pop(0) if self.free else None

    def release(self, device: str | None) -> None:
        if device is not None:
            self.free.append(device)

    def submit(self, spec: StudySpec, out: Path, job: Job, device: str | None) -> Any:
        return self.pool.submit(run_one, spec, str(out), job, self.ex.threads, device, self.ex.protocol)

    def wait(self, handles: list[Any]) -> list[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(handles, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Any) -> dict[str, Any]:
        return handle.result()


class _Submitit(_Pool):
    """submitit's executors: `local` (processes on this machine; what the tests run) or `slurm` (one job per
    run; this command stays as the driver that submits each run once its dependencies have finished)."""

    def __init__(self, ex: Execution, out: Path) -> None:
        try:
            import submitit
        except ImportError:
            raise BadInput(f"--executor {ex.executor} needs submitit: pip install 'indistill[cluster]'") from None
        self.ex, self.free, self.slots = ex, [], ex.workers
        self.executor = submitit.AutoExecutor(folder=str(out / "submitit"), cluster=ex.executor)
        params = {"timeout_min": 24 * 60, **ex.params}
        if ex.executor == "slurm" and ex.devices:
            params.setdefault("gpus_per_node", 1)
        try:
            self.executor.update_parameters(**params)
        except (TypeError, ValueError) as e:
            raise BadInput(f"--executor-param: {str(e).splitlines()[0]}") from None

    def __exit__(self, *exc: Any) -> None:
        pass

    def device(self) -> str | None:
        return "cuda" if self.ex.devices else None

    def submit(self, spec: StudySpec, out: Path, job: Job, device: str | None) -> Any:
        return self.executor.submit(run_one, spec, str(out), job, self.ex.threads, device, self.ex.protocol)

    def wait(self, handles: list[Any]) -> list[Any]:
        while True:
            ready = [h for h in handles if h.done()]
            if ready:
                return ready
            time.sleep(0.5)
