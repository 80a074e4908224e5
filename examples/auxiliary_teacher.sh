#!/usr/bin/env bash
# The InDistill recipe for a large teacher/student gap (docs/method.md, stage 0): the auxiliary teacher
# is the student's own topology at 2x width, CE-trained, then trained with PKT so its embedding
# mimics the big teacher's; it is pruned to the student's widths, warms the student up, and is the
# teacher of the final PKT stage. Only the standard commands are used.
#
#   bash examples/auxiliary_teacher.sh                        # quick run on the embedded subset
#   DATA=cifar10 T_EPOCHS=100 A_EPOCHS=80 S_EPOCHS=58 bash examples/auxiliary_teacher.sh   # the paper's scale
set -euo pipefail
OUT=${OUT:-aux-out}
DATA=${DATA:-fashion-mnist-mini}
TEACHER=${TEACHER:-preact_resnet18}
AUX=${AUX:-cnn3}              # 16/32/64, 128-d embedding
STUDENT=${STUDENT:-cnn3-w0.5} # 8/16/32, 64-d embedding
T_EPOCHS=${T_EPOCHS:-2}
A_EPOCHS=${A_EPOCHS:-3}
S_EPOCHS=${S_EPOCHS:-4}       # PKT epochs after the warmup (reference: 58 = 48 at 1e-3 + 10 at 1e-4)
CURRICULUM=${CURRICULUM:-3,4,5}
mkdir -p "$OUT"
adam=(--optimizer adam --lr 1e-3 --weight-decay 0 --schedule none)

indistill train "$TEACHER" --data "$DATA" --epochs "$T_EPOCHS" --force -o "$OUT/teacher.safetensors"
indistill train "$AUX" --data "$DATA" --epochs "$A_EPOCHS" "${adam[@]}" --force -o "$OUT/aux_ce.safetensors"
# PKT on the penultimate embeddings, no CE (the reference)
indistill distill -t "$OUT/teacher.safetensors" -s "$OUT/aux_ce.safetensors" -m pkt --ce 0 --data "$DATA" \
  --epochs "$A_EPOCHS" "${adam[@]}" --force -o "$OUT/aux.safetensors"
indistill prune "$OUT/aux.safetensors" --like "$STUDENT" --data "$DATA" --force -o "$OUT/aux_pruned.safetensors"
indistill warmup -t "$OUT/aux_pruned.safetensors" -s "$STUDENT" --data "$DATA" --epochs-per-tap "$CURRICULUM" \
  --plot "$OUT/flow.png" --force -o "$OUT/student_warm.safetensors"
indistill distill -t "$OUT/aux.safetensors" -s "$OUT/student_warm.safetensors" -m pkt --ce 0 --data "$DATA" \
  --epochs "$S_EPOCHS" "${adam[@]}" --force -o "$OUT/student.safetensors"
indistill retrieve "$OUT/student.safetensors" --data "$DATA"
