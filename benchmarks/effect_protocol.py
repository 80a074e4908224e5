"""The effect study's protocol, rendered from its preset so the text and the runner cannot disagree."""

from __future__ import annotations

from typing import Any, Callable


def protocol(name: str, p: Any, arms: dict[str, dict[str, Any]], comparisons: list[tuple[str, str, str]],
             primary: list[tuple[str, str]], endpoints: list[tuple[str, str]], arm_epochs: Callable) -> str:
    E, W = p.kd_epochs, p.warm_epochs
    total = E + W
    arm_rows = "".join(
        f"| {a} | {s['label']} | {f'{W} warmup + {E}' if s['warm'] else arm_epochs(p, a)} | "
        f"{'CE' if s['method'] is None else s['method'].upper() + (' (no CE)' if s['method'] == 'pkt' else ' (CE 0.1)')}"
        f"{' + keep-flow' if s['keep'] else ''} |\n" for a, s in arms.items())
    comp_rows = "".join(f"| {a} - {b} | {v} |{' **primary**' if (a, b) in primary else ''}\n" for a, b, v in comparisons)
    grid = ", ".join(f"({w:g}, {d:g})" for w, d in p.keep_flow_grid)
    seeds = ", ".join(str(s) for s in p.seeds)
    return f"""# Protocol: InDistill's effect on `{p.data}` (preset `{name}`)

Written and committed before the first run. `python benchmarks/effect.py --preset {name}` renders this
file from the same settings it runs with, then runs the study and writes `results.md`, `results.json`
(every run, per seed) and `figure.png` here.

## Question
Does the InDistill warmup (prune the auxiliary teacher to the student's widths, copy its feature maps
into the student tap by tap on the curriculum {p.curriculum}) improve the student that a KD method then
trains, when everything else is held equal? And does our own addition, keeping the warmup's per-tap MSE
terms in the KD loss with a decaying weight ("keep-flow", not in the paper), preserve what the warmup
built?

## Data
`{p.data}`: the fixed per-class validation split of {p.val_fraction:.0%} of train (data seed 0; 54k / 6k for
Fashion-MNIST), the 10k test split only for the final report. Images are served at 32x32 (28x28 zero-padded,
centred), so `cnn3` sees the whole image and its taps are 15x15 / 6x6 / 2x2 as in the paper. Training
augmentation: random crop (padding 4) and horizontal flip. Batch {p.batch_size}.

## Models
- Teacher: `{p.teacher}`, CE, SGD lr {p.teacher_lr} momentum 0.9 wd 5e-4, cosine, {p.teacher_epochs} epochs,
  the best validation top-1 epoch kept.
- Auxiliary: `{p.aux}` (the student's topology at 2x width): CE for {p.aux_epochs} epochs, then PKT (the
  reference's combined kernels, no CE) from the teacher's embedding for {p.aux_epochs} epochs; both with the
  student schedule below; last epochs kept. It is the stage-2 teacher of every KD/PKT arm, as in the reference.
- The auxiliary pruned to the student's widths: L1 filter norm, probe mode (targets = the auxiliary's real
  eval-mode activations at the kept channels), the reference's choices.
- Student: `{p.student}`. Its initial weights are a function of the seed alone, so every arm of a seed starts
  from the same weights; the data order and augmentation are functions of (seed, epoch), the same in every arm.

**Gap check, before any arm runs:** validation retrieval mAP (cosine, the validation split searched in itself,
leave-one-out) of the teacher and of the auxiliary must each exceed that of a CE student (the CE arm's recipe on
pilot seed {p.pilot_seed}) by at least 3 points. If not, the teacher and auxiliary are retrained once with 30
epochs each; if the check still fails, the arms run anyway and the report states that the precondition failed.

## Student schedule (every arm)
The reference's: Adam lr 1e-3, no weight decay, lr x0.1 for the last seventh of the run's epochs, batch {p.batch_size}.
InDistill arms run warmup and KD as ONE plan of one optimiser over {total} epochs (`warmup --plan-epochs {total}`,
then `distill --continue-plan`), exactly the plan of the {total}-epoch baselines; the baselines of E = {E} epochs
run the same schedule shape over {E} epochs. The last epoch is kept in every arm (no checkpoint selection, as the
reference); PKT arms have no CE term, KD arms use Hinton KD (T = 4, KD weight 0.9, CE 0.1).

## Arms (E = {E} KD epochs, W = {W} warmup epochs; epochs are student epochs)
| arm | what | epochs | loss |
|---|---|---|---|
{arm_rows}
Warmup: tap l trains on MSE(student tap l, pruned auxiliary target) only, {p.curriculum} epochs (the reference
curriculum S_l = 2 + l; {p.curriculum.split(',')[0]}-{p.curriculum.split(',')[-1]} epochs of about 422 steps each on 54k images,
the reference's 1,200-2,000 steps per tap). One warmup per seed is shared by the three InDistill arms (they
would compute identical warmups).

## Seeds
{seeds}: the first {p.primary_seeds} are the primary analysis; the rest run if time allows, in order, and are
reported as a secondary analysis over all complete seeds. The decision to stop is taken by the clock, never
by looking at results. Every run is reported.

## Hyper-parameters chosen on the validation split (pilot, seed {p.pilot_seed}, not a study seed)
The keep-flow weight and per-epoch decay, from the grid {grid}: each runs InDistill + PKT with the flow kept on
the pilot seed; the pair with the highest validation mAP (cosine, leave-one-out in the validation split, last
epoch) is used in the arm `InD+PKT+keep` for every seed (ties: the smaller weight). Plain InD+PKT runs on the
pilot seed too, for reference. Nothing else is tuned: every other setting above is fixed in advance, taken
from the reference.

## Endpoints (test split)
Primary: exact mAP, cosine, of the embedding (penultimate layer after ReLU; database = the 60k training images
with test-time transforms, queries = the 10k test images, relevant = same class). Secondary: exact mAP Euclidean,
precision@100 cosine, top-1 (only where a loss trains the classifier head; PKT arms have none).

## Tests
Paired differences a - b by seed, two-sided: mean with a 95% t-interval and the Wilcoxon signed-rank p-value.
| a - b | view |
|---|---|
{comp_rows}
"Equal total epochs" compares InDistill (W+E) with the baseline given E+W epochs (the strict view);
"warmup added" compares it with the baseline's E epochs, beside the control that gives the baseline the W
extra epochs. The two primary comparisons are reported with raw p-values; a Holm correction over the two is
stated in the results. Spread: the standard deviation over seeds of each arm, InDistill against its baseline
(the paper says the warmup reduces run-to-run variability). With 5 seeds the two-sided Wilcoxon test cannot
reach p < 0.0625, so the t-interval is the primary test.

## Information flow
Every KD/PKT arm records the per-tap validation MSE (1000 fixed validation images) between the student's taps
and the pruned auxiliary's targets after every epoch; InDistill arms prepend their warmup's curve. The figure
shows the mean over seeds (the paper's Figure 4), with and without the warmup.

## Machine
CPU, {p.threads} torch thread(s) per run, {p.jobs} runs at a time; CPU runs are bitwise repeatable for a thread
count. The code revision is recorded in the results.
"""
