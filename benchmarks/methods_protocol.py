"""The methods study's protocol, rendered from its preset so the text and the runner cannot disagree."""

from __future__ import annotations

from typing import Any


def _methods_table(rows: list[tuple[str, str, list[str]]]) -> str:
    from indistill_cli import losses

    out = "| row | method | weight | CE weight | --param (beyond the registered defaults) |\n|---|---|---|---|---|\n"
    for row, method, params in rows:
        cls = losses.get(method)
        out += f"| {row} | {method} | {cls.default_weight:g} | {cls.ce_weight:g} | {' '.join(params) or '-'} |\n"
    return out


def protocol(name: str, p: Any, rows: list[tuple[str, str, list[str]]], arms: dict[str, str],
             comparisons: list[tuple[str, str, str]], endpoints: list[tuple[str, str]],
             extra: list[tuple[str, str]]) -> str:
    e, w = p.kd_epochs, p.warm_epochs
    arm_rows = "".join(f"| {a} | {label} | {w + e if a == 'M+W' else e} KD{f' after {w} warmup' if a == 'InD+M' else ''} |\n"
                       for a, label in arms.items())
    comp_rows = "".join(f"| {a} - {b} | {view} |\n" for a, b, view in comparisons)
    return f"""# Protocol: InDistill in front of every KD method, on `{p.data}` (preset `{name}`)

Written and committed before the first run. `python benchmarks/methods.py --preset {name}` renders this file
from the same settings it runs with, then runs the study and writes `results.md`, `results.json` (every run,
per seed) and `figure.png` here. Whatever they show is committed.

## Question
InDistill claims its warmup (prune the teacher to the student's widths, copy the pruned teacher's feature maps
into the student tap by tap on a curriculum) helps whichever KD method follows it. For each of the tool's
{len(rows)} method rows, does the student that the method trains get better when the warmup comes first, all
else equal, and is that more than what giving the method the warmup's epochs would do?

## Data
`{p.data}`: a fixed per-class validation split of {p.val_fraction:.0%} of train (data seed 0) that no decision
below uses (every run keeps its last epoch), the test split only for the endpoints. Images served at 32x32
(28x28 zero-padded), so `cnn3` sees the whole image (taps 15x15 / 6x6 / 2x2). Training augmentation: random
crop (padding 4) and horizontal flip. Batch {p.batch_size}.

## Models
- Teacher: `{p.teacher}`, CE, SGD lr {p.teacher_lr} momentum 0.9 wd 5e-4, cosine, {p.teacher_epochs} epochs, the
  best validation top-1 epoch kept. Trained once; the KD teacher of every arm.
- The warmup's target: the teacher pruned to the student's widths, L1 filter norm, probe mode (the teacher's real
  activations at the kept channels).
- Student: `{p.student}`. Its initial weights are a function of the seed alone, so every arm and every method of a
  seed starts from the same weights; data order and augmentation are functions of (seed, epoch).

## Arms (per method row M and seed)
| arm | what | epochs |
|---|---|---|
{arm_rows}
W = {w} warmup epochs (curriculum {p.curriculum} epochs for taps 1/2/3, MSE to the pruned teacher's taps, no CE),
E = {e}. The warmup of a seed is run once and shared by every method's InD+M arm.

## Student schedule (every arm)
Adam lr 1e-3, no weight decay, lr x0.1 for the last seventh of the run's epochs, the last epoch kept. InD+M runs
warmup and KD as one plan of one optimiser over W + E = {w + e} epochs (`warmup --plan-epochs`, then
`distill --continue-plan`), the plan of the M+W arm; M runs the same shape over E epochs.

## Methods
Every method with its registered recipe (the paper's loss, weight and CE weight, `indistill methods`), except
that the lengths the papers give for a 240-epoch CIFAR schedule are scaled to the same share of E (at least one
epoch): DKD's and ReviewKD's 20-epoch ramps, CTKD's 10-epoch temperature curriculum, and RepDistiller's 30
initialisation epochs of FT (paraphraser), AB and FSP. Those phases run before the KD epochs in all three arms
alike (so every arm of such a method has them on top of the epochs above). CRD's 16384 negatives (a third of
CIFAR's training set) are capped at 1024 (all 8999 other samples here would cost 2-3 minutes an epoch on one
core). `ctkd` is `kd` with the learnable temperature; `mlkd` is the single-view variant.

{_methods_table(rows)}
## Endpoints
Primary: test top-1 (%) and test retrieval mAP (%, cosine; the train split as the database, the test split as
queries; exact). Secondary, reported: mAP Euclidean, P@100 cosine.

## Analysis
Per method and endpoint, the paired differences by seed of

| difference | view |
|---|---|
{comp_rows}
with the mean and the 95% t-interval (n = {len(p.seeds)} seeds, so t = {_t975(len(p.seeds) - 1):.2f}; only effects
consistent across seeds register). **What counts as "helped"**: the 95% t-interval of InD+M - M+W (equal total
epochs, the primary view) lies above 0; "hurt": below 0; otherwise inconclusive. The same reading is reported for
the warmup-added view (InD+M - M), next to its control M+W - M (what the extra epochs alone give). Each method is
read on its own: no multiplicity correction; across the {len(rows)} rows {0.05 * len(rows):.1f} "helped" or "hurt"
per endpoint and view are expected by chance alone at the 5% level, and the report counts helped / hurt /
inconclusive rows and rows with a positive mean difference.

## Runs
{p.threads} torch thread per run, {p.jobs} runs at a time, each in its own process, CPU; every finished run leaves
one JSON (resumable); the code revision is recorded in every run and in the results. Runs go seed by seed.
{_scope(name)}"""


def _t975(df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def _scope(name: str) -> str:
    if name == "mini":
        return """
## Scope and budget
Estimated at 2.5-3 h of wall time on this loaded 2-core machine (about 3-4 s per epoch of most methods on one
core, 10-20 s for ReviewKD, KD-SVD and CRD; 36 epochs per method and seed, plus evaluation: about 3.7 core-hours). Full Fashion-MNIST (54k training images) is
the separate preset `fmnist` (`results/methods/fmnist/`): a reduced design of four methods chosen before any
result, one of each kind (kd: the classic logit method; dist: a recent logit method; ofd: a pre-ReLU feature
method; ft: a method with its own pre-training phase), 3 seeds, E = 6, W = 6 (curriculum 1,2,3), estimated at
1.5-2 h, run after this one; if it cannot run, the report says so and why.
"""
    return ""
