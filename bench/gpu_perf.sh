#!/usr/bin/env bash
# Training-step performance on one GPU (an H200: about 5 minutes, capped at BUDGET_S=470 s), through the
# real trainer step (nvlm_train.training.loop.Trainer.train_step: data, forward, backward, optimizer).
# Run from the repo root. Prints one JSON line per case on stdout and to $OUT/gpu_perf.jsonl, then a
# summary line ({"summary": ...}); progress and each case's log go to stderr (logs also in $OUT/<case>.log).
# Exits non-zero if any case failed (a failed case still prints a line: {"case", "error", "rc"}).
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: bash bench/gpu_perf.sh [--smoke] [--proxy-layers N] [--cases LIST] [--steps N] [--warmup N]
                              [--2b-overrides "K=V ..."] [--proxy-overrides "K=V ..."] [-- K=V ...]

Cases (all by default; --cases takes a comma-separated subset):
  nvlm_d_2b_sft             configs/model/nvlm_d_2b.yaml, bf16, SFT (ViT frozen), packed 3200-token rows,
                            6 tiles + thumbnail per image                               target MFU >= 0.40
  proxy_72b                 InternViT-6B (frozen) + as many Qwen2-72B layers as fit TP1 on this GPU
                            (memory estimate: bench/_perf_tools.py; --proxy-layers N to pin), seq 3200
                                                                                        target MFU >= 0.50
  proxy_72b_recompute_selective, proxy_72b_recompute_full
                            proxy_72b with model.recompute.language=selective / full (same layer count)
  nvlm_d_2b_sft_unfused     nvlm_d_2b_sft with every model.fusion.* switch off (the defaults: null, on
                            where the path has the kernel), to measure what the fusions buy
Every case line: case, mfu, tokens_per_s (real tokens), step_ms, peak_memory_gb, tflops_per_gpu,
time_shares {attention, gemm, elementwise, idle} (torch.profiler, one extra step; sum 1), and
model_step {the same figures for the model's forward+backward alone, bench/model_step.py} with
trainer_overhead_ms = step_ms - model_step.step_ms. mfu is null where the device peak is unknown
(CPU; set NVLM_PEAK_TFLOPS). Data: full-row benchmark shards (3:2 images that tile 6 + thumbnail,
text filling the row), written once under $OUT/data by the project's shard writer.

Options:
  --smoke             every case at tiny sizes on CPU (nvlm_d_tiny, seq 256, fp32, 1 step, no warmup,
                      all cases in one process): checks that every field is produced, not performance
  --proxy-layers N    language layers of the 72B proxy (default: auto, from the memory estimate)
  --cases LIST        comma-separated case names
  --steps N / --warmup N   timed / untimed trainer steps per case (default 3 / 2; smoke 1 / 0)
  --2b-overrides S    replace the 2B case's Hydra overrides (also: env CASE_2B_OVERRIDES)
  --proxy-overrides S replace the proxy cases' Hydra overrides (also: env CASE_PROXY_OVERRIDES)
  -- K=V ...          Hydra overrides appended to every case (after EXTRA_OVERRIDES)
  -h, --help          this text

Environment:
  OUT=/tmp/gpu_perf   where gpu_perf.jsonl, the logs and the benchmark shards go
  PYTHON=python3      the interpreter (e.g. .venv/bin/python)
  EXTRA_OVERRIDES     Hydra overrides for every case, e.g. "model.fusion.cross_entropy=true train.compile=true"
  OPTIONAL_OVERRIDES  overrides applied only where the key exists in this tree's config (others are
                      listed in the case's skipped_overrides), e.g. "parallel.overlap_grad_reduce=true
                      parallel.overlap_param_gather=true parallel.first_stage_layers=..."
  CASE_TIMEOUT_S=200  per-case time limit;  BUDGET_S=470  limit for the whole run (each case gets the rest)
  JOBS                cases run at once, one process each (default 1: logs stream to stderr); 0 = all
                      cases one after the other in one process (the --smoke default)
EOF
}

SMOKE=0
PROXY_LAYERS=auto
CASES=""
STEPS=""
WARMUP=""
CLI_EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --smoke) SMOKE=1 ;;
    --proxy-layers) PROXY_LAYERS=${2:?--proxy-layers needs N}; shift ;;
    --cases) CASES=${2:?--cases needs a list}; shift ;;
    --steps) STEPS=${2:?--steps needs N}; shift ;;
    --warmup) WARMUP=${2:?--warmup needs N}; shift ;;
    --2b-overrides) CASE_2B_OVERRIDES=${2?}; shift ;;
    --proxy-overrides) CASE_PROXY_OVERRIDES=${2?}; shift ;;
    --) shift; CLI_EXTRA=("$@"); break ;;
    *) echo "gpu_perf.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT=${OUT:-/tmp/gpu_perf}
PY=${PYTHON:-python3}
EXTRA_OVERRIDES=${EXTRA_OVERRIDES:-}
OPTIONAL_OVERRIDES=${OPTIONAL_OVERRIDES:-}
BUDGET_S=${BUDGET_S:-470}
CASE_TIMEOUT_S=${CASE_TIMEOUT_S:-200}
ALL_CASES="nvlm_d_2b_sft,proxy_72b,proxy_72b_recompute_selective,proxy_72b_recompute_full,nvlm_d_2b_sft_unfused"
UNFUSED="model.fusion.bias_activation=false model.fusion.bias_dropout_add=false model.fusion.rope=false"
UNFUSED="$UNFUSED model.fusion.grad_accumulation=false model.fusion.cross_entropy=false"
CASES=${CASES:-$ALL_CASES}
export PYTHONUNBUFFERED=1

if [ "$SMOKE" = 1 ]; then
  CONFIG_2B=nvlm_d_tiny CONFIG_PROXY=nvlm_d_tiny
  STEPS=${STEPS:-1} WARMUP=${WARMUP:-0} JOBS=${JOBS:-0} ROWS=16
  SIZES="train.seq_length=256 train.micro_batch_size=2 train.global_batch_size=4 train.precision=fp32"
  : "${CASE_2B_OVERRIDES:=$SIZES model.freeze.vision=true data.max_tiles=6}"
  : "${CASE_PROXY_OVERRIDES:=$SIZES model.freeze.vision=true data.max_tiles=6}"
  PROXY_MEMORY=(--memory-gb 0.03)  # a pretend device: the estimate keeps 3 of nvlm_d_tiny's 4 layers
  export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""  # on CPU even where a GPU is present
else
  CONFIG_2B=nvlm_d_2b CONFIG_PROXY=nvlm_d_72b
  STEPS=${STEPS:-3} WARMUP=${WARMUP:-2} JOBS=${JOBS:-1} ROWS=64
  # The demo tokenizer (data.tokenizer_dir null) puts <|vision_pad|> at id 3; the vocabularies stay the models'.
  COMMON="train.seq_length=3200 data.max_tiles=6 model.freeze.vision=true model.language.image_token_id=3"
  COMMON="$COMMON data.num_workers=6"
  : "${CASE_2B_OVERRIDES:=$COMMON train.micro_batch_size=2 train.global_batch_size=16}"
  : "${CASE_PROXY_OVERRIDES:=$COMMON train.micro_batch_size=1 train.global_batch_size=8}"
  PROXY_MEMORY=()
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
fi

mkdir -p "$OUT"
: > "$OUT/gpu_perf.jsonl"
say() { echo "[gpu_perf $(date +%T)] $*" >&2; }

# case name -> the bench/train_step.py arguments
case_args() {
  local optional=()
  for o in $OPTIONAL_OVERRIDES; do optional+=(--if-exists "$o"); done
  case "$1" in
    nvlm_d_2b_sft)
      echo --config "$CONFIG_2B" --mfu-target 0.40 "${optional[@]}" -- $CASE_2B_OVERRIDES ;;
    nvlm_d_2b_sft_unfused)  # every model.fusion switch off: what the fusion defaults buy
      echo --config "$CONFIG_2B" "${optional[@]}" -- $CASE_2B_OVERRIDES $UNFUSED ;;
    proxy_72b|proxy_72b_recompute_selective|proxy_72b_recompute_full)
      local rc=""
      case "$1" in *selective) rc=model.recompute.language=selective ;; *full) rc=model.recompute.language=full ;; esac
      echo --config "$CONFIG_PROXY" --proxy-layers "$PROXY_LAYERS" "${PROXY_MEMORY[@]}" --mfu-target 0.50 \
        "${optional[@]}" -- $CASE_PROXY_OVERRIDES $rc ;;
    *) return 1 ;;
  esac
}

# run one case: its JSON line (or an error line) into $OUT/<case>.json, its log into $OUT/<case>.log
run_case() {
  local name=$1 limit=$2 rc
  local args
  rm -f "$OUT/$name.json"
  args=$(case_args "$name") || { echo "{\"case\": \"$name\", \"error\": \"unknown case\", \"rc\": 2}" > "$OUT/$name.json"; return 2; }
  rm -f "$OUT/$name.out"
  # shellcheck disable=SC2086  # word splitting of the override lists is intended
  local cmd=(timeout --kill-after=20 "$limit" "$PY" bench/train_step.py --case "$name" --steps "$STEPS"
             --warmup "$WARMUP" --data-dir "$OUT/data" --bench-rows "$ROWS" --profile --model-step $args
             $EXTRA_OVERRIDES "${CLI_EXTRA[@]}")
  if [ "$JOBS" = 1 ]; then  # stream the log
    "${cmd[@]}" 2>&1 > "$OUT/$name.out" | tee "$OUT/$name.log" | sed -u "s/^/[$name] /" >&2
    rc=${PIPESTATUS[0]}
  else
    "${cmd[@]}" > "$OUT/$name.out" 2> "$OUT/$name.log"
    rc=$?
  fi
  if [ "$rc" = 0 ] && tail -n 1 "$OUT/$name.out" | "$PY" -c "import json,sys; json.loads(sys.stdin.read())" 2>/dev/null; then
    tail -n 1 "$OUT/$name.out" > "$OUT/$name.json"
  else
    [ "$rc" = 0 ] && rc=1
    local why="exit status $rc"
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && why="timed out after ${limit}s"
    echo "{\"case\": \"$name\", \"error\": \"$why (log: $OUT/$name.log)\", \"rc\": $rc}" > "$OUT/$name.json"
  fi
  return "$rc"
}

IFS=, read -r -a names <<< "$CASES"
say "cases: ${names[*]} (smoke=$SMOKE, steps $STEPS + $WARMUP warmup, out $OUT)"
failed=()
finish() {  # print a finished case's log and line, in case order
  local name=$1
  [ "$JOBS" -gt 1 ] && sed "s/^/[$name] /" "$OUT/$name.log" >&2 2>/dev/null  # JOBS=1: streamed already
  cat "$OUT/$name.json" | tee -a "$OUT/gpu_perf.jsonl"
  grep -q '"error"' "$OUT/$name.json" && failed+=("$name")
}
if [ "$JOBS" = 0 ]; then  # every case in one process (bench/train_step.py --batch): the imports once
  : > "$OUT/cases.args"
  known=()
  for name in "${names[@]}"; do
    rm -f "$OUT/$name.json"
    if args=$(case_args "$name"); then
      echo "--case $name --steps $STEPS --warmup $WARMUP --data-dir $OUT/data --bench-rows $ROWS --profile" \
        "--model-step $args $EXTRA_OVERRIDES ${CLI_EXTRA[*]}" >> "$OUT/cases.args"
      known+=("$name")
    else
      echo "{\"case\": \"$name\", \"error\": \"unknown case\", \"rc\": 2}" > "$OUT/$name.json"
    fi
  done
  if [ ${#known[@]} -gt 0 ]; then
    limit=$(( BUDGET_S < CASE_TIMEOUT_S * ${#known[@]} ? BUDGET_S : CASE_TIMEOUT_S * ${#known[@]} ))
    say "cases ${known[*]} in one process (limit ${limit}s)"
    timeout --kill-after=20 "$limit" "$PY" bench/train_step.py --batch "$OUT/cases.args" 2>&1 > "$OUT/batch.out" \
      | tee "$OUT/batch.log" | sed -u "s/^/[batch] /" >&2
    rc=${PIPESTATUS[0]}
    for name in "${known[@]}"; do
      line=$(grep -F "\"case\": \"$name\"" "$OUT/batch.out" | tail -n 1)
      [ -n "$line" ] || line="{\"case\": \"$name\", \"error\": \"no result, exit status $rc (log: $OUT/batch.log)\", \"rc\": $rc}"
      echo "$line" > "$OUT/$name.json"
    done
  fi
  for name in "${names[@]}"; do finish "$name"; done
  names_done=1
fi
i=0
[ "${names_done:-0}" = 1 ] && i=${#names[@]}
while [ $i -lt ${#names[@]} ]; do
  batch=("${names[@]:$i:$JOBS}")
  left=$((BUDGET_S - SECONDS))
  limit=$(( left < CASE_TIMEOUT_S ? left : CASE_TIMEOUT_S ))
  for name in "${batch[@]}"; do
    if [ "$limit" -lt 10 ]; then
      echo "{\"case\": \"$name\", \"error\": \"not run: BUDGET_S=$BUDGET_S spent\", \"rc\": 124}" > "$OUT/$name.json"
      : > "$OUT/$name.log"
      continue
    fi
    say "case $name (limit ${limit}s)"
    run_case "$name" "$limit" &
  done
  wait
  if [ "$JOBS" = 1 ] && [ "$PROXY_LAYERS" = auto ] && [[ $name == proxy_* ]]; then
    # One case at a time: an estimate that ran out of memory is retried once with a layer fewer, and the
    # count that ran is pinned for the later proxy cases (the recompute variants compare like with like).
    n=$(sed -n 's/.*proxy: \([0-9]*\) language layers fit.*/\1/p' "$OUT/$name.log" | tail -n 1)
    left=$((BUDGET_S - SECONDS))
    if grep -q '"error"' "$OUT/$name.json" && grep -qiE "out of memory|OutOfMemoryError" "$OUT/$name.log" \
       && [ -n "$n" ] && [ "$n" -gt 1 ] && [ "$left" -ge 30 ]; then
      PROXY_LAYERS=$((n - 1))
      say "case $name ran out of memory with $n layers: once more with --proxy-layers $PROXY_LAYERS"
      mv "$OUT/$name.log" "$OUT/$name.oom.log"
      run_case "$name" $(( left < CASE_TIMEOUT_S ? left : CASE_TIMEOUT_S ))
    fi
    if ! grep -q '"error"' "$OUT/$name.json"; then
      PROXY_LAYERS=$("$PY" -c "import json,sys; print(json.load(sys.stdin)['language_layers'])" < "$OUT/$name.json")
      say "proxy cases from here on: --proxy-layers $PROXY_LAYERS"
    fi
  fi
  for name in "${batch[@]}"; do finish "$name"; done
  i=$((i + JOBS))
done

"$PY" - "$OUT/gpu_perf.jsonl" "$SECONDS" <<'EOF' | tee -a "$OUT/gpu_perf.jsonl"
import json, sys
lines = [json.loads(x) for x in open(sys.argv[1]) if x.strip()]
cases = {r["case"]: ({"error": r["error"]} if "error" in r else
                     {k: r.get(k) for k in ("mfu", "mfu_target", "target_met", "step_ms", "trainer_overhead_ms",
                                            "tokens_per_s", "peak_memory_gb", "language_layers")})
         for r in lines}
print(json.dumps({"summary": {"cases": cases, "failed": [c for c, v in cases.items() if "error" in v],
                              "wall_s": int(sys.argv[2])}}))
EOF

if [ ${#failed[@]} -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all ${#names[@]} cases done in ${SECONDS}s; lines in $OUT/gpu_perf.jsonl"
