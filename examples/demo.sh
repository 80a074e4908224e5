#!/usr/bin/env bash
# The InDistill demo (`make demo`): train a teacher, then a student three ways with the same
# total epoch budget -- CE alone, KD alone, InDistill warmup + KD -- and compare them.
# Runs on the embedded Fashion-MNIST subset in a few minutes on 2 CPU cores.
set -euo pipefail

OUT=${OUT:-demo-out}
DATA=${DATA:-fashion-mnist-mini}
TEACHER=${TEACHER:-resnet20}
STUDENT=${STUDENT:-cnn3-w0.5}
T_EPOCHS=${T_EPOCHS:-8}
S_EPOCHS=${S_EPOCHS:-27}          # total student budget, warmup included
CURRICULUM=${CURRICULUM:-3,4,5}   # S_l = 2 + l: the reference schedule (12 epochs)
SEED=${SEED:-0}
WARM=$(( ${CURRICULUM//,/+} ))
KD_AFTER=$(( S_EPOCHS - WARM ))
mkdir -p "$OUT"
common=(--data "$DATA" --seed "$SEED" --force)

echo "== 1/6 teacher: $TEACHER, $T_EPOCHS epochs (CE)" >&2
indistill train "$TEACHER" "${common[@]}" --epochs "$T_EPOCHS" -o "$OUT/teacher.safetensors"

echo "== 2/6 student alone: $STUDENT, $S_EPOCHS epochs (CE)" >&2
indistill train "$STUDENT" "${common[@]}" --epochs "$S_EPOCHS" -o "$OUT/student_ce.safetensors"

echo "== 3/6 student by KD: $S_EPOCHS epochs" >&2
indistill distill -t "$OUT/teacher.safetensors" -s "$STUDENT" -m kd "${common[@]}" --epochs "$S_EPOCHS" \
  -o "$OUT/student_kd.safetensors"

echo "== 4/6 prune the teacher to the student's widths (L1 filter norms)" >&2
indistill prune "$OUT/teacher.safetensors" --like "$STUDENT" --data "$DATA" --force -o "$OUT/teacher_pruned.safetensors"

echo "== 5/6 InDistill warmup: epochs per tap $CURRICULUM" >&2
indistill warmup -t "$OUT/teacher_pruned.safetensors" -s "$STUDENT" "${common[@]}" --epochs-per-tap "$CURRICULUM" \
  --plot "$OUT/flow.png" -o "$OUT/student_warm.safetensors"

echo "== 6/6 InDistill + KD: $KD_AFTER epochs after the $WARM-epoch warmup" >&2
indistill distill -t "$OUT/teacher.safetensors" -s "$OUT/student_warm.safetensors" -m kd "${common[@]}" \
  --epochs "$KD_AFTER" -o "$OUT/student_indistill_kd.safetensors"

python - "$OUT" "$DATA" <<'PY'
import json, subprocess, sys
out, data = sys.argv[1], sys.argv[2]
rows = [("teacher", "teacher"), ("student, CE alone", "student_ce"), ("student, KD", "student_kd"),
        ("student, InDistill + KD", "student_indistill_kd")]
print(f"\n{'model':<26}{'top-1':>8}{'top-5':>8}")
for label, stem in rows:
    r = json.loads(subprocess.run(["indistill", "evaluate", f"{out}/{stem}.safetensors", "--data", data, "--json", "-q"],
                                  check=True, capture_output=True, text=True).stdout)
    print(f"{label:<26}{100 * r['top1']:>8.2f}{100 * r['top5']:>8.2f}")
print(f"\ncheckpoints and the per-tap MSE curves (flow.png) are in {out}/")
PY
