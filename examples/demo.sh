#!/usr/bin/env bash
# The InDistill demo (`make demo`): train a teacher once, then a student three ways with the SAME total
# number of student epochs (equal-total-epochs budget: the warmup counts inside it) and the same
# schedule (Adam 1e-3, x0.1 for the last seventh; InDistill's warmup and KD are one continuous plan):
# CE alone, KD alone, InDistill warmup + KD. Then it prints their test top-1 and retrieval beside the
# pre-registered full Fashion-MNIST study's figures for the same three arms, and what the compression
# bought (parameters, MACs, bytes, latency, quality: teacher against both distilled students).
# Uses the embedded Fashion-MNIST subset (DATA=fashion-mnist uses the full set when a local copy
# exists); a few minutes on 2 CPU cores. Everything lands in demo-out/.
set -euo pipefail

OUT=${OUT:-demo-out}
DATA=${DATA:-fashion-mnist-mini}
TEACHER=${TEACHER:-cnn3}          # the student's topology at 2x width: the paper's auxiliary teacher
STUDENT=${STUDENT:-cnn3-w0.5}
T_EPOCHS=${T_EPOCHS:-20}
S_EPOCHS=${S_EPOCHS:-32}          # every student's total budget, warmup included
CURRICULUM=${CURRICULUM:-3,4,5}   # epochs per tap, S_l = 2 + l: the reference schedule
SEED=${SEED:-0}
WARM=$(( ${CURRICULUM//,/+} ))
MILESTONE=$(( S_EPOCHS - (S_EPOCHS + 3) / 7 ))   # the reference: lr x0.1 for the last seventh
rm -rf "$OUT" && mkdir -p "$OUT"
common=(--data "$DATA" --seed "$SEED")
student_plan=(--optimizer adam --lr 1e-3 --weight-decay 0 --schedule multistep --milestones "$MILESTONE")

echo "== 1/5 teacher: $TEACHER, $T_EPOCHS epochs of CE" >&2
indistill train "$TEACHER" "${common[@]}" --epochs "$T_EPOCHS" --no-last -o "$OUT/teacher.safetensors"

echo "== 2/5 student alone: $STUDENT, $S_EPOCHS epochs of CE" >&2
indistill train "$STUDENT" "${common[@]}" "${student_plan[@]}" --epochs "$S_EPOCHS" --no-last \
  -o "$OUT/student_ce.safetensors"
indistill evaluate "$OUT/student_ce.safetensors" --data "$DATA" --json -q > "$OUT/student_ce.evaluate.json"
indistill retrieve "$OUT/student_ce.safetensors" --data "$DATA" --json -q > "$OUT/student_ce.retrieve.json"

# steps 3 and 4 run from examples/demo.yaml (the pipeline's options written down); flags given beside it win
config=(--config "$(dirname "$0")/demo.yaml" -t "$OUT/teacher.safetensors" -s "$STUDENT" "${common[@]}"
        --epochs "$S_EPOCHS" --epochs-per-tap "$CURRICULUM")
echo "== 3/5 KD alone: $S_EPOCHS epochs (pipeline --no-warmup)" >&2
indistill pipeline "${config[@]}" --no-warmup -o "$OUT/kd" --json > "$OUT/kd.json"

echo "== 4/5 InDistill + KD: prune, warmup $CURRICULUM ($WARM epochs), then $(( S_EPOCHS - WARM )) epochs of KD, one lr plan" >&2
indistill pipeline "${config[@]}" -o "$OUT/indistill" --json > "$OUT/indistill.json"

python "$(dirname "$0")/demo_table.py" "$OUT" "$S_EPOCHS" "$WARM"

echo "== 5/5 what compression bought: the teacher against both distilled students (indistill compare)" >&2
indistill compare "$OUT/teacher.safetensors" "$OUT/kd/student.safetensors" "$OUT/indistill/student.safetensors" \
  --data "$DATA" --runs 20 --plot "$OUT/compare.png"
