"""`indistill study`: does the InDistill warmup help *this* teacher/student pair? The fair comparison as data.

A study is a `StudySpec`: method rows, arms per row (the method alone for E epochs, the method given the
warmup's W epochs too, the warmup then the method, ...), comparisons between arms paired by seed, seeds,
endpoints. The command line builds one; presets (`study_presets`) are instances. Every arm of a seed starts
from the same initial student and sees the same batches (weights are a function of the seed, data order of
(seed, epoch): what every stage guarantees), so a difference between two arms of one seed is the arms'.

`jobs` lists a study's runs with their dependencies, in phases (reference models, then the pilot that
chooses the keep-flow weight when there is one, then the arms); `run_job` runs one of them through the
chain's links (`stages.chain`). `study_runs` executes them, `study_protocol` writes what is registered,
`study_report` reads the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.errors import BadInput
from indistill_cli.stages.chain import Chain, reference_student_optim, with_milestone
from indistill_cli.stages.options import RunOptions

# kind -> (arm name, label, job slug); {M} is the row's name in capitals
ARM_KINDS: dict[str, tuple[str, str, str]] = {
    "alone": ("{M}", "{M} (E)", "alone"),
    "longer": ("{M}+W", "{M} given the warmup's epochs (E+W)", "longer"),
    "ind": ("InD+{M}", "InDistill warmup + {M} (W+E)", "ind"),
    "cum": ("InDcum+{M}", "InDistill cumulative warmup + {M} (W+E)", "indcum"),
    "keep": ("InD+{M}+keep", "InDistill + {M}, flow kept (W+E; ours)", "keep"),
    "ce": ("CE", "CE alone (E+W)", "ce"),
}
WARM_KINDS = ("ind", "cum", "keep")  # arms that start from a warmup (of their seed)


@dataclass(frozen=True)
class Row:
    """One method row: the KD method and its settings, shared by every arm of the row."""

    name: str  # e.g. "ctkd"
    method: str  # the registered method, e.g. "kd"
    params: tuple[str, ...] = ()
    ce: float | None = None  # None: the method's recipe


@dataclass(frozen=True)
class Arm:
    name: str
    row: str  # "" for the CE arm
    kind: str
    label: str


def arm(kind: str, row: str = "") -> Arm:
    name, label, _ = ARM_KINDS[kind]
    m = row.upper()
    return Arm(name.format(M=m), row, kind, label.format(M=m))


@dataclass(frozen=True)
class Comparison:
    a: str  # arm names: the difference is a - b, paired by seed
    b: str
    view: str
    primary: bool = False


@dataclass(frozen=True)
class StudySpec:
    """Everything a study's numbers depend on (its protocol), and the defaults of how it is run."""

    name: str  # the preset's, or "custom"
    teacher: str  # a checkpoint, or an architecture trained here (seed 0)
    student: str
    rows: tuple[Row, ...]
    arms: tuple[Arm, ...]
    comparisons: tuple[Comparison, ...]
    kd_epochs: int  # E
    curriculum: str  # the warmup's epochs per tap; W = their sum
    seeds: tuple[int, ...]
    run: tuple[tuple[str, Any], ...]  # RunOptions fields shared by every run (data, val_fraction, ...)
    primary_seeds: int = 0  # the first n seeds are the primary analysis (0: all)
    endpoints: tuple[str, ...] = ("map_cosine", "map_euclidean", "p100_cosine", "top1")
    primary_endpoints: tuple[str, ...] = ("map_cosine",)
    teacher_epochs: int = 30
    teacher_optim: OptimConfig = field(default_factory=lambda: OptimConfig("sgd", 0.05, schedule="cosine"))
    aux: str | None = None
    aux_epochs: int = 20
    aux_recipe: str = "pipeline"  # pipeline: CE as the teacher, PKT with Adam; student: both on the student plan
    criterion: str = "l1"
    student_optim: OptimConfig = field(default_factory=reference_student_optim)
    flow: bool = True  # record the per-tap MSE to the pruned source through KD
    gap_points: float = 0.0  # > 0: the reference models must beat a CE student by this much (validation mAP)
    gap_required: bool = True
    pilot_seed: int = 100
    keep_grid: tuple[tuple[float, float], ...] = ()  # keep-flow (weight, decay): several -> a pilot picks one
    budget: str = "both"
    job_names: str = "row"  # row: kd.ind.s0; arm: InD+KD-s0
    prose: str = "generic"  # which protocol text renders it
    script: str = ""  # the benchmark script (and its preset) that runs it, named in legacy prose
    threads: int = 1  # planned torch threads per run and runs at a time (execution, not identity)
    jobs: int = 1

    @property
    def warm_epochs(self) -> int:
        return sum(int(v) for v in self.curriculum.split(","))

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.run)

    @property
    def data(self) -> str:
        return self.options["data"]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def arm_epochs(self, a: Arm) -> int:
        """Epochs of the arm's own training run (the KD part for arms that start from a warmup)."""
        return self.kd_epochs + self.warm_epochs if a.kind in ("ce", "longer") else self.kd_epochs

    def analysed_seeds(self) -> tuple[int, ...]:
        return self.seeds[: self.primary_seeds or len(self.seeds)]

    def check(self) -> None:
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise BadInput(f"the study's arms repeat a name: {names}")
        for c in self.comparisons:
            if c.a not in names or c.b not in names:
                raise BadInput(f"comparison {c.a} - {c.b}: no such arm")
        if self.kd_epochs < 1 or not self.seeds:
            raise BadInput("a study needs --epochs >= 1 and at least one seed")
        if any(a.kind == "keep" for a in self.arms) and not self.keep_grid:
            raise BadInput("a keep-flow arm needs keep-flow candidates")
        RunOptions(**{**self.options, "seed": 0}).check()


def heads_trained(spec: StudySpec, a: Arm) -> bool:
    """Whether the arm's loss trains the classifier head (CE, a CE term, or a logit method): top-1 means
    something only then."""
    if a.kind == "ce":
        return True
    from indistill_cli import losses

    r = spec.row(a.row)
    cls = losses.get(r.method)
    return (r.ce if r.ce is not None else cls.ce_weight) > 0 or cls.uses == "logits"


def endpoints_of(spec: StudySpec, *arms: str) -> list[str]:
    """The endpoints that mean something for these arms: top-1 only where each trains the classifier head."""
    heads = all(heads_trained(spec, spec.arm(a)) for a in arms)
    return [k for k in spec.endpoints if k != "top1" or heads]


def gap_ok(spec: StudySpec, gap: dict[str, float]) -> tuple[bool, str]:
    """The precondition: the reference models beat the CE student by the protocol's points (validation mAP)."""
    refs = {k: v for k, v in gap.items() if k != "student_ce"}
    text = ("validation mAP: " + ", ".join(f"{k} {v:.2f}" for k, v in refs.items())
            + f", CE student {gap['student_ce']:.2f} (gaps " + " / ".join(f"{v - gap['student_ce']:+.2f}"
                                                                          for v in refs.values()) + ")")
    return min(refs.values()) - gap["student_ce"] >= spec.gap_points, text


# ------------------------------------------------------------------------------------------ jobs


@dataclass
class Job:
    name: str  # unique; its result is OUT/runs/<name>.json
    kind: str  # teacher, aux-ce, aux-pkt, prune, gap, warmup, warmup-cum, pilot, arm
    seed: int = 0
    arm: str = ""
    keep: tuple[float, float] = (0.0, 1.0)  # the keep-flow weight and decay of a keep-flow arm
    deps: list[str] = field(default_factory=list)
    method: str = ""  # the arm's row


def job_name(spec: StudySpec, a: Arm, seed: int) -> str:
    if spec.job_names == "arm":
        return f"{a.name}-s{seed}"
    return f"ce.s{seed}" if a.kind == "ce" else f"{a.row}.{ARM_KINDS[a.kind][2]}.s{seed}"


def warm_job(seed: int, cumulative: bool = False) -> str:
    return f"warmup-cum-s{seed}" if cumulative else f"warmup-s{seed}"


def chain_of(spec: StudySpec, work: str) -> Chain:
    """The study's chain: reference models in OUT/work, trained once (seed 0), last checkpoints not kept."""
    aux_optim = with_milestone(spec.student_optim, spec.aux_epochs) if spec.aux_recipe == "student" else None
    extra = {"aux_pkt_optim": aux_optim, "aux_select": "last"} if aux_optim else {}
    pruned = "aux_pruned.safetensors" if spec.aux else "pruned.safetensors"
    return Chain(spec.teacher, spec.student, work, spec.teacher_epochs, spec.teacher_optim, keep_last=False,
                 aux=spec.aux, aux_epochs=spec.aux_epochs, aux_ce_optim=aux_optim, criterion=spec.criterion,
                 names=(("teacher", "teacher.safetensors"), ("aux-ce", "aux_ce.safetensors"),
                        ("aux", "aux.safetensors"), ("pruned", pruned)), **extra)


def reference_jobs(spec: StudySpec) -> list[Job]:
    c = chain_of(spec, "")
    jobs = [Job("teacher", "teacher")] if c.trains_teacher else []
    if spec.aux:
        jobs += [Job("aux-ce", "aux-ce"), Job("aux-pkt", "aux-pkt", deps=[j.name for j in jobs] + ["aux-ce"])]
    jobs.append(Job("prune", "prune", deps=[jobs[-1].name] if jobs else []))
    if spec.gap_points > 0:
        jobs.append(Job("gap", "gap", seed=spec.pilot_seed, deps=[j.name for j in jobs if j.kind != "prune"]))
    return jobs


def pilot_jobs(spec: StudySpec) -> list[Job]:
    """The keep-flow pilot on the pilot seed (validation split only), when there is more than one candidate."""
    keep = next((a for a in spec.arms if a.kind == "keep"), None)
    if keep is None or len(spec.keep_grid) < 2:
        return []
    warm = warm_job(spec.pilot_seed)
    plain = next(a for a in spec.arms if a.kind == "ind" and a.row == keep.row)
    jobs = [Job(warm, "warmup", seed=spec.pilot_seed, deps=["prune"])]
    jobs += [Job(f"pilot-keep{w:g}-d{d:g}", "pilot", seed=spec.pilot_seed, arm=keep.name, keep=(w, d), deps=[warm],
                 method=keep.row) for w, d in spec.keep_grid]
    jobs.append(Job("pilot-keep0", "pilot", seed=spec.pilot_seed, arm=plain.name, deps=[warm], method=plain.row))
    return jobs


def arm_jobs(spec: StudySpec, keep: tuple[float, float]) -> list[Job]:
    """Per seed (a finished seed is a complete set of paired differences): its warmups, then every arm."""
    jobs = []
    kinds = {a.kind for a in spec.arms}
    for seed in spec.seeds:
        if kinds & {"ind", "keep"}:
            jobs.append(Job(warm_job(seed), "warmup", seed=seed, deps=["prune"]))
        if "cum" in kinds:
            jobs.append(Job(warm_job(seed, True), "warmup-cum", seed=seed, deps=["prune"]))
        for a in spec.arms:
            warm = [warm_job(seed, a.kind == "cum")] if a.kind in WARM_KINDS else []
            jobs.append(Job(job_name(spec, a, seed), "arm", seed=seed, arm=a.name, deps=["prune", *warm],
                            keep=keep if spec.keep_grid else (0.0, 1.0), method=a.row))
    return jobs


def choose_keep(spec: StudySpec, done: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """The pre-registered rule: the keep-flow (weight, decay) with the highest pilot validation mAP (ties: the
    smaller weight); the only candidate when there is one."""
    cands = [r for r in done.values() if r.get("kind") == "pilot" and r.get("keep_flow", [0])[0] > 0]
    if not spec.keep_grid:
        return 0.0, 1.0
    if not cands:
        return spec.keep_grid[0]
    best = max(cands, key=lambda r: (r["val_map"], -r["keep_flow"][0]))
    return best["keep_flow"][0], best["keep_flow"][1]


def opts_for(spec: StudySpec, seed: int, **kw: Any) -> RunOptions:
    """The run options of one run: the study's, this seed, no timed resume states (a run is the unit)."""
    return RunOptions(**{**spec.options, "seed": seed, "save_every": 0, **kw})
