#!/usr/bin/env bash
# Per-node launcher: torchrun with N processes running `python -m nvlm_train.cli.train`.
#
#   launch/torchrun.sh [NPROC] [HYDRA_OVERRIDE ...]
#   NPROC=8 launch/torchrun.sh experiment=nvlm_d_2b parallel.tp=4
#
# Also the per-node command of launch/slurm/train.sbatch (NNODES/NODE_RANK/RDZV_ENDPOINT set).
# See launch/torchrun.sh --help and docs/launch.md.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/torchrun.sh [NPROC] [HYDRA_OVERRIDE ...]

Runs the NVLM-D trainer (python -m nvlm_train.cli.train) under torchrun on this machine.

  NPROC            processes on this node: the first argument if it is a number, else the
                   NPROC environment variable, else the number of visible GPUs, else 1.
  HYDRA_OVERRIDE   passed to the trainer unchanged (key=value, group=option, -m, ...).

Environment:
  NPROC                  processes per node (see above)
  PYTHON                 interpreter; default: the repository's .venv/bin/python if present, else python
  OMP_NUM_THREADS        threads per process; default: CPU cores / NPROC (at least 1)
  MASTER_PORT            single node: rendezvous port on 127.0.0.1; default: a free one (--standalone)
  NNODES, NODE_RANK, RDZV_ENDPOINT, RDZV_ID
                         multi-node: c10d rendezvous at RDZV_ENDPOINT (host:port); set by
                         launch/slurm/train.sbatch
  TORCHRUN_ARGS          extra torchrun arguments, e.g. "--max-restarts 2"
  TORCH_ELASTIC_SHUTDOWN_TIMEOUT
                         seconds torchrun gives workers to exit after a SIGHUP/SIGQUIT before it
                         kills them (default here: 600)

Signals: SIGTERM, SIGUSR1 and SIGINT, sent to this script, to torchrun, to the ranks or to the
whole process group (kill -TERM -- -PGID), make every rank on this node save a checkpoint at
the end of its step and exit 0, and so does this script (torchrun ignores them; this script
passes them to the ranks). Re-running with the same run.dir resumes.

Examples:
  launch/torchrun.sh 2 experiment=demo parallel.tp=2
  NPROC=8 launch/torchrun.sh experiment=nvlm_d_72b_sft run.dir=runs/sft

Sweeps (-m) run their jobs one after another in each process: run them without torchrun
(python -m nvlm_train.cli.train -m ..., one process) or on SLURM (hydra/launcher=slurm); see docs/launch.md.
EOF
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
esac

nproc="${NPROC:-}"
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  nproc="$1"
  shift
fi
if [[ -z "$nproc" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    nproc="$(nvidia-smi -L | grep -c '^GPU' || true)"
  fi
  [[ "${nproc:-0}" -ge 1 ]] || nproc=1
fi
if ! [[ "$nproc" =~ ^[1-9][0-9]*$ ]]; then
  echo "torchrun.sh: NPROC must be a positive integer, got '$nproc'" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python; fi
fi

cores="$(nproc 2>/dev/null || echo 1)"
threads=$(( cores / nproc ))
(( threads >= 1 )) || threads=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}"
export CUDA_DEVICE_MAX_CONNECTIONS="${CUDA_DEVICE_MAX_CONNECTIONS:-1}"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}"
export PYTHONUNBUFFERED=1

if [[ -n "${NNODES:-}" && "${NNODES}" != 1 ]] || [[ -n "${RDZV_ENDPOINT:-}" ]]; then
  : "${RDZV_ENDPOINT:?multi-node needs RDZV_ENDPOINT=host:port}"
  rdzv=(--nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-${SLURM_NODEID:-0}}"
        --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-nvlm-train}")
elif [[ -n "${MASTER_PORT:-}" ]]; then
  rdzv=(--nnodes 1 --rdzv-backend c10d --rdzv-endpoint "127.0.0.1:${MASTER_PORT}")
else
  rdzv=(--standalone)
fi
read -r -a extra <<<"${TORCHRUN_ARGS:-}"

# Signals. SLURM (every process of the job step) and `kill -- -PGID` signal torchrun, its workers and
# this script at once, so each of them must survive a SIGTERM/SIGUSR1/SIGINT:
# * torchrun starts with the three ignored and told to handle only SIGHUP/SIGQUIT: its own SIGTERM
#   handling raises SignalException, stops the workers and exits 1 even when every rank saved;
# * the workers inherit the ignored signals until the trainer installs its handler (first thing it
#   does): a signal that arrives before is not lost, because this script passes the signal to the
#   workers again every second until torchrun exits;
# * each rank saves a checkpoint at the end of its step and exits 0; torchrun exits 0, so does this.
trap '' USR1 TERM INT
export PET_SIGNALS_TO_HANDLE="SIGHUP,SIGQUIT"
"$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc-per-node "$nproc" ${extra[@]+"${extra[@]}"} \
  -m nvlm_train.cli.train "$@" &
launcher=$!

children_of() {
  if command -v pgrep >/dev/null 2>&1; then
    pgrep -P "$1" || true
  else
    local stat pid ppid
    for stat in /proc/[0-9]*/stat; do
      # field 4 of /proc/PID/stat is the parent pid (the command name in field 2 has no spaces here)
      read -r pid _ _ ppid _ <"$stat" 2>/dev/null || continue
      [[ "$ppid" == "$1" ]] && echo "$pid"
    done
  fi
}

pending=""
interrupted=0
forward() {
  local sig="$1" workers=""
  interrupted=1
  # SLURM signals every process of the step, this script's short-lived subshells too: a killed
  # command substitution must not end the script (set -e).
  workers="$(children_of "$launcher")" || true
  if [[ -z "$pending" ]]; then
    echo "torchrun.sh: SIG$sig -> workers ${workers//$'\n'/ }" >&2
    pending="$sig"
  fi
  # shellcheck disable=SC2086
  [[ -z "$workers" ]] || kill -s "$pending" $workers 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

# Poll rather than block in `wait`, to re-send a pending signal (see above); a trapped signal
# interrupts the sleep.
while kill -0 "$launcher" 2>/dev/null; do
  [[ -z "$pending" ]] || forward "$pending"
  sleep 1 &
  wait $! 2>/dev/null || true
done
rc=0
while :; do
  interrupted=0
  rc=0
  wait "$launcher" || rc=$?
  # A trapped signal makes `wait` return 128+N before torchrun's status: wait again for that.
  (( rc > 128 && interrupted )) || break
done
if [[ -n "$pending" ]]; then
  echo "torchrun.sh: torchrun exited with status $rc after SIG$pending" >&2
fi
exit "$rc"
