"""The prose of the two pre-registered studies that ran before `indistill study` existed (benchmarks/effect.py,
benchmarks/methods.py), kept word for word so their committed protocol.md files are still what this command
renders for their presets (a folder they wrote is continued only when they match). `str.format` templates over
the values `study_protocol` computes from a `StudySpec`.
"""

EFFECT = """# Protocol: InDistill's effect on `{p.data}` (preset `{name}`)

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
curriculum S_l = 2 + l; {cur_first}-{cur_last} epochs of about 422 steps each on 54k images,
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

METHODS = """# Protocol: InDistill in front of every KD method, on `{p.data}` (preset `{name}`)

Written and committed before the first run. `python benchmarks/methods.py --preset {name}` renders this file
from the same settings it runs with, then runs the study and writes `results.md`, `results.json` (every run,
per seed) and `figure.png` here. Whatever they show is committed.

## Question
InDistill claims its warmup (prune the teacher to the student's widths, copy the pruned teacher's feature maps
into the student tap by tap on a curriculum) helps whichever KD method follows it. For each of the tool's
{n_rows} method rows, does the student that the method trains get better when the warmup comes first, all
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
warmup and KD as one plan of one optimiser over W + E = {total} epochs (`warmup --plan-epochs`, then
`distill --continue-plan`), the plan of the M+W arm; M runs the same shape over E epochs.

## Methods
Every method with its registered recipe (the paper's loss, weight and CE weight, `indistill methods`), except
that the lengths the papers give for a 240-epoch CIFAR schedule are scaled to the same share of E (at least one
epoch): DKD's and ReviewKD's 20-epoch ramps, CTKD's 10-epoch temperature curriculum, and RepDistiller's 30
initialisation epochs of FT (paraphraser), AB and FSP. Those phases run before the KD epochs in all three arms
alike (so every arm of such a method has them on top of the epochs above). CRD's 16384 negatives (a third of
CIFAR's training set) are capped at 1024 (all 8999 other samples here would cost 2-3 minutes an epoch on one
core). `ctkd` is `kd` with the learnable temperature; `mlkd` is the single-view variant.

{methods_table}
## Endpoints
Primary: test top-1 (%) and test retrieval mAP (%, cosine; the train split as the database, the test split as
queries; exact). Secondary, reported: mAP Euclidean, P@100 cosine.

## Analysis
Per method and endpoint, the paired differences by seed of

| difference | view |
|---|---|
{comp_rows}
with the mean and the 95% t-interval (n = {n_seeds} seeds, so t = {t975:.2f}; only effects
consistent across seeds register). **What counts as "helped"**: the 95% t-interval of InD+M - M+W (equal total
epochs, the primary view) lies above 0; "hurt": below 0; otherwise inconclusive. The same reading is reported for
the warmup-added view (InD+M - M), next to its control M+W - M (what the extra epochs alone give). Each method is
read on its own: no multiplicity correction; across the {n_rows} rows {chance:.1f} "helped" or "hurt"
per endpoint and view are expected by chance alone at the 5% level, and the report counts helped / hurt /
inconclusive rows and rows with a positive mean difference.

## Runs
{p.threads} torch thread per run, {p.jobs} runs at a time, each in its own process, CPU; every finished run leaves
one JSON (resumable); the code revision is recorded in every run and in the results. Runs go seed by seed.
{scope}"""

METHODS_MINI_SCOPE = """
## Scope and budget
Estimated at 2.5-3 h of wall time on this loaded 2-core machine (about 3-4 s per epoch of most methods on one
core, 10-20 s for ReviewKD, KD-SVD and CRD; 36 epochs per method and seed, plus evaluation: about 3.7 core-hours). Full Fashion-MNIST (54k training images) is
the separate preset `fmnist` (`results/methods/fmnist/`): a reduced design of four methods chosen before any
result, one of each kind (kd: the classic logit method; dist: a recent logit method; ofd: a pre-ReLU feature
method; ft: a method with its own pre-training phase), 3 seeds, E = 6, W = 6 (curriculum 1,2,3), estimated at
1.5-2 h, run after this one; if it cannot run, the report says so and why.
"""

# the protocol of any other study (the command line's, the smoke preset's)
GENERIC = """# Protocol: does the InDistill warmup help `{student}` learn from `{teacher_name}` on `{data}`?

Written by `indistill study` before the first run{preset}. `protocol.json` beside it holds the same design as
data, with the data's and the models' fingerprints; the command refuses to add runs to this folder under any
other protocol (a new protocol is a new folder). The results (`results.md`, `results.json` with every run,
`figure.png`) are written here by `indistill study ... --report` or at the end of the runs.

## Question
For each KD method ({rows}): does the InDistill warmup (prune {source} to the student's widths, then copy
its feature maps into the student tap by tap, {curriculum} epochs per tap, shallow to deep) improve the student
that the method then trains, all else equal? {views}

## Data
`{data}`: a fixed per-class validation split of {val_pct} of train (data seed 0), which only the decisions
named below use; {train_share}; the test split only for the endpoints. {serving} Batch {batch_size}.
Fingerprint (the splits' contents, sha256): `{data_sha}` ({n_train} train / {n_val} validation / {n_test} test
images).

## Models
- Teacher: {teacher_line}
{aux_line}- The warmup's targets: {source} pruned to the student's widths ({criterion} filter norm, probe mode: the
  real activations at the kept channels).
- Student: `{student}`{student_sha}. Its initial weights are a function of the seed alone, so every arm of a
  seed starts from the same weights; data order and augmentation are functions of (seed, epoch), the same in
  every arm.

## Student schedule (every arm)
{optimizer} lr {lr:g}, weight decay {weight_decay:g}, {schedule}; the last epoch is kept in every arm (no
checkpoint selection). Arms that start from the warmup run warmup and KD as ONE plan of one optimiser over
W + E = {total} epochs (`warmup --plan-epochs`, then `distill --continue-plan`), the plan of the E + W
baselines. {flow}

## Arms (E = {E} KD epochs, W = {W} warmup epochs)
| arm | what | epochs | loss |
|---|---|---|---|
{arm_rows}
One warmup per seed is shared by every arm that starts from it.{keep}

## Seeds
{seeds}{primary_seeds}. Every run is reported.

## Endpoints (test split)
Primary: {primary_endpoints}. Secondary: {secondary_endpoints}. Retrieval: exact mAP and precision@100 of the
embedding (penultimate layer), the whole training split with test-time transforms as the database, the test
split as queries, relevant = same class. Top-1 only where the arm's loss trains the classifier head.

## Tests
Paired differences a - b by seed, two-sided: the mean with its 95% t-interval and the paired t-test p-value;
the Wilcoxon signed-rank p-value where n >= 6 (below that it cannot reach p < 0.05).

| a - b | view | |
|---|---|---|
{comp_rows}
Holm's correction runs over the {n_primary} primary comparison(s) on the primary endpoint(s) ({family} tests).
Verdict per comparison and endpoint: "helps" when the 95% t-interval lies above 0, "hurts" when below; else
"no detectable difference at n = N, the interval excludes effects beyond ±X" (X: the interval's larger bound
in absolute value); a primary comparison's verdict also says whether it holds after Holm.{gap}

## Machine
Runs are executed as `indistill study` is told (`--jobs`, `--threads`, `--devices`, `--executor`); each run
records its thread count, device and code revision (CPU results are bitwise repeatable for one thread count).
"""
