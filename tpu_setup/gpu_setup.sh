#!/usr/bin/env bash
# Set up mbc-jax with jax[cuda12] on an NVIDIA GPU host, and check that JAX sees the GPUs.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/gpu_setup.sh [options]

Run ON the GPU machine, in this checkout: make a virtual environment, `pip install -e
'.[cuda12,hf]'` (CUDA and cuDNN come as pip wheels; only the NVIDIA driver must be installed,
>= 525.60.13 for CUDA 12), then check that jax.devices() lists GPUs.

Options:
  --venv DIR           virtual environment (default: .venv in the checkout)       [MBC_VENV]
  --python BIN         Python >= 3.11 to build it with (default: newest python3.1x found)
  --cuda 12|13         which jax CUDA wheels (default 12; 13 needs a driver for CUDA 13)
  --with-tests         install the [test] extra too (pytest, datasets)
  --check-only         only run the GPU check in an existing venv
  --dry-run            print the commands instead of running them                [DRY_RUN=1]
  -h, --help           this help

One machine, several GPUs: nothing more to do. JAX sees every local GPU as a device, so
`mbc-jax train --config FILE --mesh -1,1,1` is data parallel over all of them and
`--mesh 1,-1,1` shards parameters and optimizer state over them (FSDP).
(`mbc-jax plan --config FILE --mesh D,F,T --devices N --device-memory GB` checks memory first.)

Several machines: start the same command once per machine (one process per host, each with its
local GPUs); the processes join through jax.distributed.initialize():
  - under SLURM (srun) or Open MPI (mpirun), JAX detects everything itself;
  - otherwise set on every machine, before the command:
      JAX_COORDINATOR_ADDRESS=10.0.0.1:12345   host 0's address and any free port (read by JAX)
      JAX_NUM_PROCESSES=2                      number of processes (= machines)
      JAX_PROCESS_ID=0                         0 on the coordinator, 1..N-1 on the others
    The coordinator port must be reachable from all machines (open it in the firewall), and
    HTTP(S)_PROXY variables can make the join hang: unset them for the run.
  - the run folder (checkpoints) must be on storage every machine sees (NFS, or gs://).

Examples:
  tpu_setup/gpu_setup.sh
  tpu_setup/gpu_setup.sh --venv ~/venvs/mbc --python python3.12 --with-tests
  tpu_setup/gpu_setup.sh --check-only
EOF
}

VENV=${MBC_VENV:-$MBC_REPO_ROOT/.venv} PY="" CUDA=12 TESTS=0 CHECK_ONLY=0
flag --venv value VENV '--venv needs a directory'
flag --python value PY
flag --cuda value CUDA '--cuda needs 12 or 13'
flag --with-tests set TESTS 1
flag --check-only set CHECK_ONLY 1
parse_flags "$@"
case "$CUDA" in 12 | 13) ;; *) die_usage "--cuda '$CUDA': expected 12 or 13" ;; esac

run() {
  if is_dry_run; then print_cmd "$@"; else "$@"; fi
}

# 1. the driver: the one thing pip cannot install
if command -v nvidia-smi >/dev/null 2>&1; then
  note "GPUs: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd ';' - || echo 'nvidia-smi failed')"
elif is_dry_run; then
  note "nvidia-smi not found (DRY_RUN: going on)"
else
  die "nvidia-smi not found: install the NVIDIA driver first (>= 525.60.13 for CUDA 12; on GCE,
  use a Deep Learning VM image or the driver install script), then re-run this"
fi

if [ "$CHECK_ONLY" = 0 ]; then
  # 2. a Python >= 3.11
  if [ -z "$PY" ]; then
    for c in python3.13 python3.12 python3.11 python3; do
      if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PY=$c
        break
      fi
    done
    [ -n "$PY" ] || die "no Python >= 3.11 found: install one (e.g. sudo apt-get install python3.11 python3.11-venv) or pass --python BIN"
  fi
  # 3. venv + packages
  if [ ! -x "$VENV/bin/python" ]; then
    run "$PY" -m venv "$VENV"
  fi
  run "$VENV/bin/python" -m pip install --upgrade pip
  extras="cuda$CUDA,hf"
  [ "$TESTS" = 0 ] || extras="$extras,test"
  run "$VENV/bin/pip" install -e "${MBC_REPO_ROOT}[$extras]"
fi

# 4. does JAX see the GPUs?
check='import sys, jax
d = jax.devices()
gpus = [x for x in d if x.platform == "gpu"]
print(f"[gpu_setup] jax {jax.__version__}: {len(gpus)} GPU(s): {sorted(set(x.device_kind for x in gpus))}")
sys.exit(0 if gpus else "JAX sees no GPU (devices: %s). Check that LD_LIBRARY_PATH does not point at another CUDA, and the driver version." % d)'
run "$VENV/bin/python" -c "$check"
is_dry_run || note "ready: source $VENV/bin/activate && mbc-jax --help"
