#!/usr/bin/env bash
# The GPU check: every CUDA-specific path of indistill run for real on one GPU, in one prepared script
# of under 8 minutes, writing benchmarks/results/gpu-<date>/ (report.md, report.json and each step's JSON and log).
#
#   bash benchmarks/gpu_check.sh                 # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu --out DIR # the same steps on the CPU, tiny (~7 min on 2 cores)
#
# Steps (each one timed, its exit code and figures recorded; a failing step does not stop the others):
#   env          GPU, driver, torch/torchvision/timm versions
#   train        CE teacher (cnn3) and a resnet8 teacher, bf16 autocast + channels_last (the CUDA defaults)
#   prune/warmup the InDistill warmup on CUDA (probe targets, stop-early forward)
#   distill      kd, crd, dkd, fsp (AB/FSP phases), reviewkd, each with the host syncs per training step
#                counted (INDISTILL_SYNC_CHECK=1: torch.cuda.set_sync_debug_mode("warn") around every step
#                that is not a logging step, warnings counted; on CPU the dispatch-mode detector)
#   deterministic  distill -m at -m reviewkd from resnet8 (mismatched spatial sizes) twice with
#                --deterministic: both runs must give bitwise-equal students
#   compile      train and distill with --compile (inductor on CUDA, aot_eager with --cpu)
#   nonfinite    --skip-nonfinite 2 with a NaN injected into the loss of one step (INDISTILL_INJECT_NONFINITE,
#                the engine's fault-injection hook): the run finishes, reports the skipped step, and its
#                weights are finite; three NaN steps past --skip-nonfinite 2 stop it (exit 1) naming them
#   compare      compare --device cuda of the teacher and a student (eager and onnxruntime columns say
#                what ran where)
#   cache        an image folder (PNG) trained with --cache ram on the device
#   torchrun     a 1-GPU torchrun of pipeline --aux (PKT with --ce 0: DDP told about unreached parameters)
#   throughput   benchmarks/throughput.py: KD resnet56->resnet20 and CE cnn3-w0.5, ours against the bare
#                loop and torchdistill
#
# The GPU machine has no network. Carry (in a folder of the repository that git ignores, e.g. .whl/, named
# in `carry`): wheels of what its image lacks, made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl torch-pruning==1.6.0 torchdistill==1.1.5
# The script installs .whl/*.whl into /tmp/site when the folder exists. The embedded data travels with the
# repository; nothing else is needed (torch, timm, onnx, onnxruntime, matplotlib, typer, rich and
# safetensors are in the image).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=gpu
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: gpu_check.sh [--cpu] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/benchmarks/results/gpu-$DATE}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
export HF_HUB_OFFLINE=1 PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
IND=("$PY" -m indistill_cli)

if [ "$MODE" = cpu ]; then
  DEV=cpu
  DATA=(--data fashion-mnist-mini --val-fraction 0.9)   # 1,000 training images: the steps, not the figures
  EP=1
  export INDISTILL_COMPILE_BACKEND=aot_eager             # inductor needs minutes of C++ compilation on a CPU
  THROUGHPUT=(--rounds 1 --batches 2 --batch-size 16 --threads 1 --td-workers 0 --no-memory)
else
  DEV=cuda
  DATA=(--data fashion-mnist-mini)
  EP=2
  THROUGHPUT=(--rounds 5 --batches 20 --no-memory)
fi
W=$OUT/work
rm -rf "$W" && mkdir -p "$W"
: > "$OUT/steps.jsonl"

# step NAME TIMEOUT CMD...: runs CMD with stdout to NAME.json and stderr to NAME.log, records a line
step() {
  local name=$1 limit=$2
  shift 2
  local t0 t1 rc
  echo "== $name: $*" >&2
  t0=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
  rc=$?
  t1=$(date +%s.%N)
  "$PY" - "$name" "$rc" "$t0" "$t1" "$OUT" "$*" <<'PYEOF'
import json, sys
name, rc, t0, t1, out, cmd = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
with open(f"{out}/steps.jsonl", "a") as fh:
    fh.write(json.dumps({"step": name, "rc": rc, "wall_s": round(t1 - t0, 1), "command": cmd}) + "\n")
PYEOF
  [ "$rc" -eq 0 ] || { echo "   $name failed (exit $rc); tail of its log:" >&2; tail -5 "$OUT/$name.log" >&2; }
  return 0
}

C=(--device "$DEV" "${DATA[@]}" --json)
step env 60 "$PY" -c "
import json, platform, subprocess, torch, torchvision, timm
rev = subprocess.run(['git', 'rev-parse', '--short=10', 'HEAD'], capture_output=True, text=True).stdout.strip()
d = {'python': platform.python_version(), 'torch': torch.__version__, 'torchvision': torchvision.__version__,
     'timm': timm.__version__, 'cuda': torch.version.cuda, 'device': None, 'revision': rev or 'unknown (no git)'}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), sms=p.multi_processor_count)
print(json.dumps(d))"

step train 300 "${IND[@]}" train cnn3 "${C[@]}" --epochs "$EP" -o "$W/t.safetensors"
step train_resnet8 300 "${IND[@]}" train resnet8 "${C[@]}" --epochs 1 -o "$W/r8.safetensors"
step prune 120 "${IND[@]}" prune "$W/t.safetensors" --like cnn3-w0.5 -o "$W/tp.safetensors" --json
step warmup 300 "${IND[@]}" warmup --teacher "$W/tp.safetensors" --student cnn3-w0.5 "${C[@]}" \
  --epochs-per-tap 1,1,1 -o "$W/warm.safetensors"

for m in kd crd dkd fsp reviewkd; do
  extra=()
  [ "$m" = crd ] && extra=(--param crd.nce_k=1024)
  INDISTILL_SYNC_CHECK=1 step "distill_$m" 300 "${IND[@]}" distill -t "$W/t.safetensors" -s "$W/warm.safetensors" \
    -m "$m" "${extra[@]}" "${C[@]}" --epochs "$EP" -o "$W/s_$m.safetensors"
done
INDISTILL_SYNC_CHECK=1 step train_synccheck 300 "${IND[@]}" train cnn3-w0.5 "${C[@]}" --epochs 1 --force \
  -o "$W/ce.safetensors"

for i in 1 2; do
  step "deterministic_$i" 300 "${IND[@]}" distill -t "$W/r8.safetensors" -s cnn3-w0.5 -m at -m reviewkd \
    --deterministic "${C[@]}" --epochs 1 -o "$W/det_$i.safetensors"
done

step compile_train 400 "${IND[@]}" train cnn3-w0.5 "${C[@]}" --epochs "$EP" --compile -o "$W/compiled.safetensors"
step compile_distill 400 "${IND[@]}" distill -t "$W/t.safetensors" -s cnn3-w0.5 -m kd "${C[@]}" --epochs "$EP" \
  --compile -o "$W/compiled_kd.safetensors"

INDISTILL_INJECT_NONFINITE=2 step nonfinite 300 "${IND[@]}" distill -t "$W/t.safetensors" -s cnn3-w0.5 -m kd \
  "${C[@]}" --epochs 1 --skip-nonfinite 2 -o "$W/nan.safetensors"
INDISTILL_INJECT_NONFINITE=2,3,4 step nonfinite_over 300 "${IND[@]}" distill -t "$W/t.safetensors" -s cnn3-w0.5 \
  -m kd "${C[@]}" --epochs 1 --skip-nonfinite 2 -o "$W/nan_over.safetensors"

step compare 300 "${IND[@]}" compare "$W/t.safetensors" "$W/s_kd.safetensors" --device "$DEV" "${DATA[@]}" \
  --runs 20 --json

step make_folder 120 "$PY" - "$W/folder" <<'PYEOF'
import json, sys
from pathlib import Path
from PIL import Image
from indistill_cli.data import load_dataset
ds = load_dataset("fashion-mnist-mini", val_fraction=0.0)
root = Path(sys.argv[1])
for split, data, n in (("train", ds.train, 600), ("val", ds.test, 200)):
    for i in range(n):
        d = root / split / ds.info.classes[int(data.labels[i])].replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i, 0].numpy()).save(d / f"{i}.png")
print(json.dumps({"images": 800, "path": str(root)}))
PYEOF
step cache_ram 300 "${IND[@]}" train cnn3-w0.5 --data "imagefolder:$W/folder" --cache ram --device "$DEV" \
  --epochs "$EP" --json -o "$W/folder.safetensors"

step torchrun_aux 400 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m indistill_cli pipeline \
  -t "$W/t.safetensors" -s cnn3-w0.5 --aux cnn3 --aux-epochs 1 -m pkt --ce 0 --epochs 4 --epochs-per-tap 1,1,1 \
  --device "$DEV" "${DATA[@]}" -o "$W/pipe_aux" --json

step throughput_kd 400 "$PY" benchmarks/throughput.py --task kd --device "$DEV" "${THROUGHPUT[@]}" \
  --engines ours,bare,torchdistill --json
step throughput_ce 300 "$PY" benchmarks/throughput.py --task ce --device "$DEV" "${THROUGHPUT[@]}" \
  --engines ours,bare --json

"$PY" benchmarks/gpu_report.py "$OUT" "$W" --mode "$MODE"
