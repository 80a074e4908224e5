"""Studies as data: the presets of `indistill study --preset`, and the design the command line asks for.

`effect-*`: InDistill's effect, pre-registered (benchmarks/results/effect-fmnist): an auxiliary teacher, KD and
PKT with both budget views, a CE arm, our keep-flow arm chosen on a pilot seed, a gap check first.
`methods-*`: InDistill in front of every KD method (benchmarks/results/methods): each method row alone, given
the warmup's epochs, and after the warmup. They share their common fields (`COMMON`); each preset is a dict of
what differs, turned into a `StudySpec` by the builder of its kind. `smoke`: the tests' tiny study on the
embedded set, built like a command line's.
"""

from __future__ import annotations

from typing import Any

from indistill_cli.engine.schedule import OptimConfig
from indistill_cli.errors import BadInput, did_you_mean
from indistill_cli.stages.options import RunOptions
from indistill_cli.stages.study import Arm, Comparison, Row, StudySpec, arm

COMMON: dict[str, Any] = {"student": "cnn3-w0.5", "teacher_lr": 0.05, "val_fraction": 0.1, "batch_size": 128,
                          "device": "cpu", "threads": 1}
EFFECT_GRID = ((0.1, 0.7), (1.0, 0.7), (1.0, 0.9), (10.0, 0.9))
SYNTHETIC = "synthetic:1x28x28:10:400"

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "effect-fmnist": ("effect", {"script": "fmnist", "data": "fashion-mnist", "teacher": "resnet20",
                                 "teacher_epochs": 15, "aux": "cnn3", "aux_epochs": 15, "kd_epochs": 20,
                                 "curriculum": "3,4,5", "seeds": tuple(range(8)), "primary_seeds": 5,
                                 "keep_grid": EFFECT_GRID, "jobs": 2}),
    # the reference's CIFAR-10 scale (a GPU): 70 student epochs of which 12 warmup, teacher PreAct ResNet-18
    "effect-paper": ("effect", {"script": "paper", "data": "cifar10", "teacher": "preact_resnet18",
                                "teacher_epochs": 100, "aux": "cnn3", "aux_epochs": 80, "kd_epochs": 58,
                                "curriculum": "3,4,5", "seeds": tuple(range(5)), "primary_seeds": 5,
                                "keep_grid": EFFECT_GRID, "threads": 8, "jobs": 1, "teacher_lr": 0.1,
                                "device": "auto"}),
    "effect-smoke": ("effect", {"script": "smoke", "data": SYNTHETIC, "teacher": "cnn3", "teacher_epochs": 1,
                                "aux": "cnn3", "aux_epochs": 1, "kd_epochs": 2, "curriculum": "1,1,1",
                                "seeds": (0, 1), "primary_seeds": 2, "keep_grid": ((1.0, 0.5), (10.0, 0.5)),
                                "jobs": 1, "gap_required": False}),
    "methods-mini": ("methods", {"script": "mini", "data": "fashion-mnist-mini", "teacher": "cnn3",
                                 "teacher_epochs": 15, "kd_epochs": 10, "curriculum": "1,2,3", "seeds": (0, 1, 2),
                                 "methods": (), "jobs": 2}),
    "methods-fmnist": ("methods", {"script": "fmnist", "data": "fashion-mnist", "teacher": "cnn3",
                                   "teacher_epochs": 15, "kd_epochs": 6, "curriculum": "1,2,3", "seeds": (0, 1, 2),
                                   "methods": ("kd", "dist", "ofd", "ft"), "jobs": 2}),
    "methods-smoke": ("methods", {"script": "smoke", "data": SYNTHETIC, "teacher": "cnn3", "teacher_epochs": 1,
                                  "kd_epochs": 2, "curriculum": "1,1,1", "seeds": (0, 1), "methods": ("kd", "ft"),
                                  "jobs": 1}),
    # the tests' study: 10% of the embedded set's training split, the strict view only (the arms that cost)
    "smoke": ("custom", {"data": "fashion-mnist-mini", "train_fraction": 0.1, "teacher": "cnn3",
                         "teacher_epochs": 1, "methods": ("kd",), "kd_epochs": 1, "curriculum": "1,1,1",
                         "seeds": (0, 1), "budget": "equal"}),
}


def preset(name: str, execution: dict[str, Any] | None = None) -> StudySpec:
    """A registered study; `execution`: run options that change how, not what, it computes (device, data_root,
    cache)."""
    if name not in PRESETS:
        raise BadInput(f"unknown preset '{name}'{did_you_mean(name, list(PRESETS))}; known: {', '.join(PRESETS)}")
    kind, values = PRESETS[name]
    build = {"effect": effect_spec, "methods": methods_spec, "custom": custom_spec}[kind]
    spec = build(name=name, **{**COMMON, **values})
    return with_run(spec, execution or {})


def with_run(spec: StudySpec, changes: dict[str, Any]) -> StudySpec:
    import dataclasses

    return dataclasses.replace(spec, run=tuple({**dict(spec.run), **changes}.items())) if changes else spec


def _run(data: str, val_fraction: float, batch_size: int, device: str, **more: Any) -> tuple[tuple[str, Any], ...]:
    return (("data", data), ("val_fraction", val_fraction), ("batch_size", batch_size), ("device", device),
            *more.items())


def effect_spec(name: str, script: str, data: str, teacher: str, teacher_epochs: int, aux: str, aux_epochs: int,
                student: str, kd_epochs: int, curriculum: str, seeds: tuple[int, ...], primary_seeds: int,
                keep_grid: tuple[tuple[float, float], ...], threads: int, jobs: int, teacher_lr: float,
                val_fraction: float, batch_size: int, device: str, gap_required: bool = True) -> StudySpec:
    """The effect study: CE, PKT and KD arms of both budget views, our keep-flow arm, an auxiliary teacher."""
    rows = (Row("pkt", "pkt", ce=0.0), Row("kd", "kd"))  # the reference trains PKT without CE; KD: Hinton's 0.1
    arms = (arm("ce"), arm("alone", "pkt"), arm("longer", "pkt"), arm("ind", "pkt"), arm("keep", "pkt"),
            arm("alone", "kd"), arm("longer", "kd"), arm("ind", "kd"))
    c = Comparison
    comparisons = (c("InD+PKT", "PKT+W", "equal total epochs", True), c("InD+KD", "KD+W", "equal total epochs", True),
                   c("InD+PKT+keep", "PKT+W", "equal total epochs"), c("InD+PKT", "PKT", "warmup added"),
                   c("PKT+W", "PKT", "control: the warmup's epochs given to PKT"), c("InD+KD", "KD", "warmup added"),
                   c("KD+W", "KD", "control: the warmup's epochs given to KD"),
                   c("InD+PKT+keep", "InD+PKT", "keep-flow (ours) vs plain InDistill"),
                   c("PKT+W", "CE", "context: PKT vs CE, equal epochs"),
                   c("KD+W", "CE", "context: KD vs CE, equal epochs"))
    return StudySpec(name=name, teacher=teacher, student=student, rows=rows, arms=arms, comparisons=comparisons,
                     kd_epochs=kd_epochs, curriculum=curriculum, seeds=seeds, primary_seeds=primary_seeds,
                     run=_run(data, val_fraction, batch_size, device), teacher_epochs=teacher_epochs,
                     teacher_optim=OptimConfig("sgd", teacher_lr, schedule="cosine"), aux=aux, aux_epochs=aux_epochs,
                     aux_recipe="student", gap_points=3.0, gap_required=gap_required, keep_grid=keep_grid,
                     budget="both", job_names="arm", prose="effect", script=script, threads=threads, jobs=jobs)


def scaled(epochs: float, e: int) -> int:
    """A length the paper gives for its 240-epoch CIFAR schedule, as the same share of E (at least 1)."""
    return max(1, round(epochs * e / 240))


def method_row(row: str, e: int) -> Row:
    """A methods-study row: the registered defaults, with the recipes' ramps and initialisation phases scaled
    from 240 epochs to E (DKD's and ReviewKD's 20-epoch ramps, CTKD's 10-epoch curriculum, RepDistiller's 30
    initialisation epochs for FT, AB and FSP), and CRD's negatives capped at 1024 (its 16384, a third of CIFAR,
    would be the whole training set here and cost 2-3 minutes an epoch)."""
    if row == "ctkd":
        return Row("ctkd", "kd", ("kd.learnable_temperature=1", f"kd.grl_epochs={scaled(10, e)}"))
    params = {"crd": ["crd.nce_k=1024"], "dkd": [f"dkd.warmup={scaled(20, e)}"],
              "dkd-ls": [f"dkd-ls.warmup={scaled(20, e)}"], "reviewkd": [f"reviewkd.warmup={scaled(20, e)}"],
              "ft": [f"ft.init_epochs={scaled(30, e)}"], "ab": [f"ab.init_epochs={scaled(30, e)}"],
              "fsp": [f"fsp.init_epochs={scaled(30, e)}"]}
    return Row(row, row, tuple(params.get(row, [])))


def methods_spec(name: str, script: str, data: str, teacher: str, teacher_epochs: int, student: str, kd_epochs: int,
                 curriculum: str, seeds: tuple[int, ...], methods: tuple[str, ...], threads: int, jobs: int,
                 teacher_lr: float, val_fraction: float, batch_size: int, device: str) -> StudySpec:
    """The methods study: every method row (all registered ones plus ctkd when `methods` is empty) alone, given
    the warmup's epochs, and after the warmup; top-1 and mAP primary, each method read on its own."""
    from indistill_cli import losses

    names = list(methods) or sorted([*losses.names(), "ctkd"])
    rows = tuple(method_row(r, kd_epochs) for r in names)
    arms: list[Arm] = [arm(k, r) for r in names for k in ("alone", "longer", "ind")]
    comparisons = tuple(c for r in names for c in (
        Comparison(f"InD+{r.upper()}", f"{r.upper()}+W", "equal total epochs", True),
        Comparison(f"InD+{r.upper()}", r.upper(), "warmup added"),
        Comparison(f"{r.upper()}+W", r.upper(), "control: W more epochs of M")))
    return StudySpec(name=name, teacher=teacher, student=student, rows=rows, arms=tuple(arms), comparisons=comparisons,
                     kd_epochs=kd_epochs, curriculum=curriculum, seeds=seeds,
                     run=_run(data, val_fraction, batch_size, device),
                     endpoints=("top1", "map_cosine", "map_euclidean", "p100_cosine"),
                     primary_endpoints=("top1", "map_cosine"), teacher_epochs=teacher_epochs,
                     teacher_optim=OptimConfig("sgd", teacher_lr, schedule="cosine"), flow=False, budget="both",
                     job_names="row", prose="methods", script=script, threads=threads, jobs=jobs)


def arms_for(rows: tuple[Row, ...], budget: str, cumulative: bool, ce_arm: bool, keep: bool) -> tuple[Arm, ...]:
    """A command line's arms: per method M, M alone (budget added/both), M given the warmup's epochs, the warmup
    then M [, its cumulative curriculum then M] [, kept flow]; the CE arm first when asked for."""
    kinds = (["alone"] if budget != "equal" else []) + ["longer", "ind"] + (["cum"] if cumulative else []) \
        + (["keep"] if keep else [])
    return tuple(([arm("ce")] if ce_arm else []) + [arm(k, r.name) for r in rows for k in kinds])


def comparisons_for(rows: tuple[Row, ...], budget: str, cumulative: bool, ce_arm: bool,
                    keep: bool) -> tuple[Comparison, ...]:
    """Both budget views beside their controls; the primaries are the warmup(s) against M+W (equal total
    epochs, the strict view), or against M with --budget added."""
    out: list[Comparison] = []
    for r in rows:
        m = r.name.upper()
        warms = [f"InD+{m}"] + ([f"InDcum+{m}"] if cumulative else [])
        if budget != "added":
            out += [Comparison(w, f"{m}+W", "equal total epochs", True) for w in warms]
        if budget != "equal":
            out += [Comparison(w, m, "warmup added", budget == "added") for w in warms]
            out.append(Comparison(f"{m}+W", m, "control: the warmup's epochs given to the method"))
        if cumulative:
            out.append(Comparison(f"InDcum+{m}", f"InD+{m}", "cumulative vs plain curriculum"))
        if keep:
            out.append(Comparison(f"InD+{m}+keep", f"InD+{m}", "keep-flow (ours) vs plain InDistill"))
        if ce_arm:
            out.append(Comparison(f"{m}+W", "CE", "context: the method vs CE, equal epochs"))
    return tuple(out)


def custom_spec(name: str, data: str, teacher: str, student: str, methods: tuple[str, ...], kd_epochs: int,
                curriculum: str, seeds: tuple[int, ...], budget: str = "both", teacher_epochs: int = 30,
                teacher_lr: float = 0.05, cumulative: bool = False, ce_arm: bool = False, params: tuple[str, ...] = (),
                ce: float | None = None, keep_grid: tuple[tuple[float, float], ...] = (), threads: int = 1,
                jobs: int = 1, val_fraction: float = 0.1, batch_size: int = 128, device: str = "cpu",
                **more: Any) -> StudySpec:
    """A study as the command line asks for it (and the smoke preset)."""
    if budget not in ("equal", "added", "both"):
        raise BadInput(f"--budget must be equal, added or both, got '{budget}'")
    rows = tuple(Row(m, m, tuple(p for p in params if p.split(".", 1)[0] == m), ce) for m in methods)
    keep = bool(keep_grid)
    spec_kw = {k: more.pop(k) for k in list(more) if k in StudySpec.__dataclass_fields__}
    return StudySpec(name=name, teacher=teacher, student=student, rows=rows,
                     arms=arms_for(rows, budget, cumulative, ce_arm, keep),
                     comparisons=comparisons_for(rows, budget, cumulative, ce_arm, keep), kd_epochs=kd_epochs,
                     curriculum=curriculum, seeds=seeds, run=_run(data, val_fraction, batch_size, device, **more),
                     teacher_epochs=teacher_epochs, teacher_optim=spec_kw.pop("teacher_optim", OptimConfig(
                         "sgd", teacher_lr, schedule="cosine")), keep_grid=keep_grid, budget=budget, threads=threads,
                     jobs=jobs, **spec_kw)


def _keep_grid(text: str | None) -> tuple[tuple[float, float], ...]:
    if not text:
        return ()
    try:
        grid = tuple((float(w), float(d)) for w, d in (p.split(":") for p in text.split(",") if p.strip()))
    except ValueError:
        raise BadInput(f"--keep-flow takes WEIGHT:DECAY[,WEIGHT:DECAY...], e.g. 1:0.9, got '{text}'") from None
    if any(w <= 0 or not 0 < d <= 1 for w, d in grid):
        raise BadInput(f"--keep-flow weights must be > 0 and decays in (0, 1], got '{text}'")
    return grid


def curriculum_for(student: str, opts: RunOptions, a: float = 2.0, b: float = 1.0) -> str:
    """The reference curriculum (a + b*l epochs for tap l) for this student's taps, as '3,4,5'."""
    from indistill_cli.data import load_dataset
    from indistill_cli.io.checkpoint import load_checkpoint, looks_like_checkpoint
    from indistill_cli.models import create_model
    from indistill_cli.stages.curriculum import epochs_per_tap

    if looks_like_checkpoint(student):
        taps = len(load_checkpoint(student).spec.taps)
    else:
        info = load_dataset(opts.data, opts.val_fraction, opts.data_root, opts.image_size).info
        taps = len(create_model(student, info.shape).spec.taps)
    return ",".join(map(str, epochs_per_tap(taps, a, b)))


def command_spec(teacher: str | None, student: str | None, methods: str, seeds: int, budget: str, warmup: str | None,
                 epochs: int, opts: RunOptions, student_optim: OptimConfig, teacher_optim: OptimConfig,
                 **kw: Any) -> StudySpec:
    """The study a command line describes (`indistill study -t T -s S --methods kd,pkt ...`)."""
    from indistill_cli.stages.distiller import parse_methods

    if not teacher or not student:
        raise BadInput("give --teacher and --student (or --preset NAME, or -o a study folder that holds a "
                       "protocol.json to continue it)")
    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    if any(":" in m for m in names):
        raise BadInput(f"--methods {methods}: one method per row, without weights (each is compared on its own)")
    parse_methods(list(names), list(kw["params"]))  # unknown methods and parameters fail here, in one line
    if seeds < 1:
        raise BadInput(f"--seeds must be at least 1, got {seeds}")
    student_optim.validate()
    teacher_optim.validate()
    cur = warmup or curriculum_for(student, opts)
    run = {k: v for k, v in opts.as_dict().items() if k != "seed" and v != getattr(RunOptions(), k)
           and k not in ("data", "val_fraction", "batch_size", "device")}
    keep_grid = _keep_grid(kw.pop("keep_flow"))
    gap = kw.pop("gap_check")
    if gap < 0:
        raise BadInput(f"--gap-check must be >= 0, got {gap}")
    return custom_spec("custom", opts.data, teacher, student, names, epochs, cur, tuple(range(seeds)), budget,
                       teacher_optim=teacher_optim, keep_grid=keep_grid, val_fraction=opts.val_fraction,
                       batch_size=opts.batch_size, device=opts.device, student_optim=student_optim, gap_points=gap,
                       **kw, **run)
