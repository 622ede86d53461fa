#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short run (about 7 minutes on one H100/H200), from the repo root:
#   1. the device tiling route on CUDA: Pillow's bytes, the worker route's tiles, the card's floats (pytest);
#   2. bench/data_throughput.py with the device's share timed on CUDA;
#   2b. bench/packed_attention.py: packed rows through varlen_attn equal their samples alone (bf16, outputs
#      and gradients), and dense mask vs varlen vs causal flash at 3200 / 8192 tokens (72B-TP8, 2B heads);
#   3. two short single-GPU training runs, tiles cut by the workers vs on the GPU: same losses;
#   4. the demo (`python -m nvlm_train.cli.demo`) end to end on one GPU, with a time limit; DEMO_ITERS=N
#      shortens it (then only a crash fails the step: status 3, accuracy below target, is expected).
# Logs go to $OUT (default /tmp/gpu_checks). Exits non-zero if any step failed.
# Usage: bash bench/gpu_checks.sh [DEMO_WORKDIR]   (a workdir holding prebuilt demo data saves ~1 min)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_checks}
PY=${PYTHON:-python3}
DEMO_DIR=$(realpath -m "${1:-/tmp/gpu_checks_demo}")
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
mkdir -p "$OUT"
failed=()
step() { echo; echo "=== $1 ($(date +%T))"; }

step "environment"
nvidia-smi -L
$PY -c "import torch, PIL, megatron.core, transformers; print('torch', torch.__version__, torch.cuda.get_device_name(),
'pillow', PIL.__version__, 'mcore', megatron.core.__version__, 'transformers', transformers.__version__)" || exit 1

step "1. device tiling on CUDA"
$PY -m pytest -q -p no:cacheprovider tests/data/test_resample.py 2>&1 \
  | tee "$OUT/pytest.log" | tail -4
[ "${PIPESTATUS[0]}" = 0 ] || failed+=(pytest)

step "2. data throughput, device share on CUDA"
$PY bench/data_throughput.py --device cuda 2>&1 | tee "$OUT/bench.log" || failed+=(bench)

step "2b. packed attention: THD exactness and micro-bench on CUDA"
timeout 300 $PY bench/packed_attention.py 2> "$OUT/packed_attention.log" | tee "$OUT/packed_attention.json" \
  || failed+=(packed_attention)

step "3. training: tiles cut by the workers vs on the GPU"
data="$DEMO_DIR/data"
for route in worker device; do
  timeout 150 $PY -m nvlm_train.cli.train experiment=demo "run.dir=$WORK/$route" run.wandb_mode=disabled \
    "data.cache_dir=$data" data.demo_train_samples=8000 data.demo_heldout_samples=200 train.seed=1234 \
    train.iters=30 train.log_interval=5 train.eval_interval=15 train.eval_iters=2 train.save_interval=30 \
    train.micro_batch_size=8 train.global_batch_size=16 data.max_tiles=6 data.num_workers=2 \
    "data.tile_on=$route" > "$OUT/train_$route.log" 2>&1 || failed+=("train_$route")
  grep -E "training |iter +30" "$OUT/train_$route.log"
done
$PY - "$WORK" <<'EOF' || failed+=(train_compare)
import json, sys
from pathlib import Path
curves = {r: {json.loads(x)["iteration"]: json.loads(x)["loss"]
              for x in (Path(sys.argv[1]) / r / "metrics.jsonl").read_text().splitlines()} for r in ("worker", "device")}
w, d = curves["worker"], curves["device"]
diff = max(abs(w[i] - d[i]) / abs(w[i]) for i in w)
print("worker", {i: round(w[i], 5) for i in sorted(w)})
print("device", {i: round(d[i], 5) for i in sorted(d)})
first = min(w)
print(f"losses at iteration {first} equal: {w[first] == d[first]}; max relative difference {diff:.2e}")
sys.exit(0 if w.keys() == d.keys() and w[first] == d[first] and diff < 1e-2 else 1)
EOF

step "4. the demo on one GPU"
iters=${DEMO_ITERS:-1600}
timeout 330 $PY -m nvlm_train.cli.demo --workdir "$DEMO_DIR" --iters "$iters" 2>&1 | tee "$OUT/demo.log" \
  | grep -vE "^iter |[Ww]arn" | tail -25
rc=${PIPESTATUS[0]}
echo "demo exit status $rc"
[ "$rc" = 0 ] || { [ "$iters" -lt 1600 ] && [ "$rc" = 3 ]; } || failed+=(demo)
cp "$DEMO_DIR/loss_curve.png" "$OUT/" 2>/dev/null

echo; echo "failed: ${failed[*]:-none}"
[ ${#failed[@]} = 0 ]
