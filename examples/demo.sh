#!/usr/bin/env bash
# The InDistill demo (`make demo`): train a teacher once, then a student three ways with the same
# total epoch budget -- CE alone, KD alone, InDistill warmup + KD -- and compare top-1 and retrieval.
# Uses the embedded Fashion-MNIST subset (DATA=fashion-mnist uses the full set when a local copy
# exists); a few minutes on 2 CPU cores. Everything lands in demo-out/.
set -euo pipefail

OUT=${OUT:-demo-out}
DATA=${DATA:-fashion-mnist-mini}
TEACHER=${TEACHER:-resnet20}
STUDENT=${STUDENT:-cnn3-w0.5}
T_EPOCHS=${T_EPOCHS:-8}
S_EPOCHS=${S_EPOCHS:-24}          # every student's total budget, warmup included
CURRICULUM=${CURRICULUM:-3,4,5}   # epochs per tap, S_l = 2 + l: the reference schedule
SEED=${SEED:-0}
WARM=$(( ${CURRICULUM//,/+} ))
rm -rf "$OUT" && mkdir -p "$OUT"
common=(--data "$DATA" --seed "$SEED")

echo "== 1/4 teacher: $TEACHER, $T_EPOCHS epochs of CE" >&2
indistill train "$TEACHER" "${common[@]}" --epochs "$T_EPOCHS" --no-last -o "$OUT/teacher.safetensors"

echo "== 2/4 student alone: $STUDENT, $S_EPOCHS epochs of CE" >&2
indistill train "$STUDENT" "${common[@]}" --epochs "$S_EPOCHS" --no-last -o "$OUT/student_ce.safetensors"
indistill evaluate "$OUT/student_ce.safetensors" --data "$DATA" --json -q > "$OUT/student_ce.evaluate.json"
indistill retrieve "$OUT/student_ce.safetensors" --data "$DATA" --json -q > "$OUT/student_ce.retrieve.json"

echo "== 3/4 KD alone: $S_EPOCHS epochs (pipeline --no-warmup)" >&2
indistill pipeline -t "$OUT/teacher.safetensors" -s "$STUDENT" "${common[@]}" -m kd --epochs "$S_EPOCHS" \
  --no-warmup -o "$OUT/kd" --json > "$OUT/kd.json"

echo "== 4/4 InDistill + KD: prune, warmup $CURRICULUM ($WARM epochs), then $(( S_EPOCHS - WARM )) epochs of KD" >&2
indistill pipeline -t "$OUT/teacher.safetensors" -s "$STUDENT" "${common[@]}" -m kd --epochs "$(( S_EPOCHS - WARM ))" \
  --epochs-per-tap "$CURRICULUM" -o "$OUT/indistill" --json > "$OUT/indistill.json"

python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda p: json.load(open(f"{out}/{p}"))
ce_e, ce_r = load("student_ce.evaluate.json"), load("student_ce.retrieve.json")["metrics"]
rows = [("student, CE alone", ce_e["top1"], ce_r["cosine"]["map"], ce_r["euclidean"]["map"],
         ce_r["cosine"]["precision@100"])]
for label, name in (("student, KD alone", "kd"), ("student, InDistill + KD", "indistill")):
    f = load(f"{name}.json")["final"]
    rows.append((label, f["top1"], f["map_cosine"], f["map_euclidean"], f["p@100_cosine"]))
print(f"\n{'test split (%)':<26}{'top-1':>8}{'mAP cos':>9}{'mAP euc':>9}{'P@100':>8}")
for r in rows:
    print(f"{r[0]:<26}" + "".join(f"{100 * v:>{w}.2f}" for v, w in zip(r[1:], (8, 9, 9, 8))))
print(f"\nper-tap MSE curves of the warmup: {out}/indistill/flow.png; all checkpoints: {out}/")
PY
