# shellcheck shell=bash
# Shared helpers for the tpu_setup/*.sh scripts. Sourced, never run on its own.
#
# Written for bash 3.2 too (the macOS default): no associative arrays, no ${x,,}, and every
# possibly-empty array is expanded as ${a[@]+"${a[@]}"} so `set -u` does not trip on it.
# Remote snippets are single-quoted on purpose (they expand on the worker, not here), and the
# variables set here are used by the scripts that source this file.
# shellcheck disable=SC2016,SC2034

MBC_SETUP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MBC_REPO_ROOT=$(cd "$MBC_SETUP_DIR/.." && pwd)

GCLOUD=${GCLOUD:-gcloud}         # the gcloud binary (tests point this at a fake)
DRY_RUN=${DRY_RUN:-0}            # 1: print the gcloud commands instead of running them

# Layout on every TPU worker; relative paths are relative to the worker's home directory.
REMOTE_DIR=${MBC_REMOTE_DIR:-mbc-jax}         # the project checkout
REMOTE_VENV=${MBC_REMOTE_VENV:-mbc-jax-venv}  # its virtual environment
REMOTE_LOGS=${MBC_REMOTE_LOGS:-mbc-jax-logs}  # one folder per run: worker-N.log / .pid / .rc

# Extra flags for every `tpu-vm ssh` / `tpu-vm scp` call, split on spaces
# (e.g. TPU_SSH_FLAGS="--tunnel-through-iap" or "--internal-ip").
TPU_SSH_FLAGS=${TPU_SSH_FLAGS:-}

die() { echo "error: $*" >&2; exit 1; }
die_usage() { echo "error: $*" >&2; echo "Run '$(basename "$0") --help' for usage." >&2; exit 2; }
note() { echo "[tpu_setup] $*" >&2; }

is_dry_run() {
  case "$DRY_RUN" in '' | 0 | false | no) return 1 ;; *) return 0 ;; esac
}

# Quote one word for display so that the printed line can be pasted into a shell. Multi-line
# values (remote scripts) stay readable inside single quotes.
shell_quote() {
  local s=$1 safe='^[A-Za-z0-9_./:=,@%+^-]+$'
  if [[ $s =~ $safe ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    shell_quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

print_cmd() {
  local out="" a
  for a in "$@"; do out="$out $(shell_quote "$a")"; done
  printf '+%s\n' "$out"
}

# Run gcloud, or only print the command under DRY_RUN=1.
gcloud_run() {
  if is_dry_run; then
    print_cmd gcloud "$@"
    return 0
  fi
  "$GCLOUD" "$@"
}

require_gcloud() {
  if command -v "$GCLOUD" >/dev/null 2>&1; then
    return 0
  fi
  if is_dry_run; then
    note "'$GCLOUD' is not on PATH; DRY_RUN=1, so printing the commands anyway."
    return 0
  fi
  die "'$GCLOUD' not found on PATH. Install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install),
  then run 'gcloud auth login' and 'gcloud config set project YOUR_PROJECT'.
  To only see what would run: DRY_RUN=1 $0 ..."
}

# --- command-line flags -----------------------------------------------------------------------
# A script declares its flags with `flag`, then calls `parse_flags "$@"`. Every script also takes
# -h/--help (prints its `usage`, exit 0) and --dry-run (DRY_RUN=1); any other word that starts
# with '-' and is not declared is an unknown option (exit 2). VAR is one of the script's
# upper-case globals, set to its default before parse_flags runs.
#
#   flag NAMES value VAR [MESSAGE]           VAR=the next word, or for a long name the text after
#                                            '=' (--zone=Z); a missing or empty next word stops
#                                            the script (exit 1) with MESSAGE
#   flag NAMES value-or-empty VAR [MESSAGE]  the same, but the next word may be empty
#   flag NAMES append VAR [MESSAGE]          like value, but adds it to the array VAR (repeatable)
#   flag NAMES set VAR VALUE                 a switch: VAR=VALUE (takes no '=' form)
#   flag -- rest VAR                         the array VAR gets every word after --
#   flag ARG name VAR [HINT]                 a word that is not a flag: VAR, given at most once;
#                                            HINT ends the error for a second one ({} stands for
#                                            the first)
#   flag ARG list VAR                        the words that are not flags, in the array VAR
#
# NAMES: one spelling, or several joined by '|'; MESSAGE defaults to 'FIRST-NAME needs a value'.
# Without an ARG line a word that is not a flag is an error, and so is -- without a -- line.
FLAG_NAMES=() FLAG_KINDS=() FLAG_VARS=() FLAG_ARGS=()
flag() {
  local arg=${4-}
  case "$2" in
    value | value-or-empty | append) arg=${4:-"${1%%|*} needs a value"} ;;
  esac
  FLAG_NAMES+=("|$1|")
  FLAG_KINDS+=("$2")
  FLAG_VARS+=("$3")
  FLAG_ARGS+=("$arg")
}

# --zone ZONE and --project PROJECT: every script that addresses a TPU takes them.
flag_tpu_target() {
  flag --zone value ZONE
  flag --project value PROJECT
}

# Sets FLAG_INDEX to the index of the declared flag spelled $1 (the count of flags: none is).
FLAG_INDEX=0
find_flag() {
  local n=${#FLAG_NAMES[@]}
  FLAG_INDEX=0
  [[ $1 != *'|'* ]] || { FLAG_INDEX=$n; return 0; }
  while [ "$FLAG_INDEX" -lt "$n" ] && [[ ${FLAG_NAMES[FLAG_INDEX]} != *"|$1|"* ]]; do
    FLAG_INDEX=$((FLAG_INDEX + 1))
  done
}

# A word that is not a flag: to the ARG line's VAR (or an error, see above).
take_argument() {
  local var arg current before
  find_flag ARG
  [ "$FLAG_INDEX" -lt ${#FLAG_NAMES[@]} ] || die_usage "unexpected argument '$1'"
  var=${FLAG_VARS[FLAG_INDEX]} arg=${FLAG_ARGS[FLAG_INDEX]}
  if [ "${FLAG_KINDS[FLAG_INDEX]}" = list ]; then
    eval "$var+=(\"\$1\")"
    return 0
  fi
  current=${!var}
  if [ -n "$current" ]; then
    if [[ $arg == *'{}'* ]]; then
      before=${arg%%'{}'*}
      arg=$before$current${arg#*'{}'}
    fi
    die_usage "unexpected argument '$1'${arg:+ $arg}"
  fi
  printf -v "$var" '%s' "$1"
}

parse_flags() {
  local word key value inline kind var arg
  while [ $# -gt 0 ]; do
    word=$1
    case "$word" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      -*) ;;
      *) take_argument "$word"; shift; continue ;;
    esac
    key=$word inline=0
    if [[ $word == --*=* ]]; then key=${word%%=*} value=${word#*=} inline=1; fi
    find_flag "$key"
    [ "$FLAG_INDEX" -lt ${#FLAG_NAMES[@]} ] || die_usage "unknown option $word"
    kind=${FLAG_KINDS[FLAG_INDEX]} var=${FLAG_VARS[FLAG_INDEX]} arg=${FLAG_ARGS[FLAG_INDEX]}
    case "$kind" in
      value | value-or-empty | append)
        if [ "$inline" = 0 ]; then
          # a missing value (or an empty one, except for value-or-empty): the script's name and MESSAGE, exit 1
          if [ $# -lt 2 ] || { [ "$kind" != value-or-empty ] && [ -z "$2" ]; }; then
            echo "$0: $arg" >&2
            exit 1
          fi
          value=$2
          shift
        fi
        if [ "$kind" = append ]; then eval "$var+=(\"\$value\")"; else printf -v "$var" '%s' "$value"; fi
        ;;
      set)
        [ "$inline" = 0 ] || die_usage "unknown option $word"
        printf -v "$var" '%s' "$arg"
        ;;
      rest)
        [ "$inline" = 0 ] || die_usage "unknown option $word"
        shift
        eval "$var=(\"\$@\")"
        return 0
        ;;
    esac
    shift
  done
}

# --- which TPU --------------------------------------------------------------------------------
# create_tpu.sh records zone / project / type per TPU name here, so the later scripts need only
# the name. Plain KEY=VALUE lines; no credentials are ever written.
state_file() {
  printf '%s/%s.env' "${MBC_TPU_STATE_DIR:-${XDG_CONFIG_HOME:-$HOME/.config}/mbc-jax/tpus}" "$1"
}

STATE_ZONE="" STATE_PROJECT="" STATE_TYPE="" STATE_QUEUED=""
load_state() {
  local f k v
  f=$(state_file "$1")
  [ -f "$f" ] || return 0
  while IFS='=' read -r k v; do
    case "$k" in
      ZONE) STATE_ZONE=$v ;;
      PROJECT) STATE_PROJECT=$v ;;
      TYPE) STATE_TYPE=$v ;;
      QUEUED) STATE_QUEUED=$v ;;
    esac
  done <"$f"
}

validate_name() {
  local re='^[a-z]([-a-z0-9]*[a-z0-9])?$'
  [[ $1 =~ $re ]] || die_usage "TPU name '$1': use lowercase letters, digits and hyphens, starting with a letter"
}

# NAME, ZONE, PROJECT come from the flags; fill the gaps from env vars, then the state file.
# Sets LOC=(--zone=... [--project=...]) and SSH_EXTRA=(TPU_SSH_FLAGS words).
LOC=()
SSH_EXTRA=()
resolve_target() {
  NAME=${NAME:-${TPU_NAME:-}}
  [ -n "$NAME" ] || die_usage "no TPU name: pass it as the first argument or export TPU_NAME"
  validate_name "$NAME"
  load_state "$NAME"
  ZONE=${ZONE:-${TPU_ZONE:-$STATE_ZONE}}
  PROJECT=${PROJECT:-${TPU_PROJECT:-$STATE_PROJECT}}
  LOC=()
  if [ -n "$ZONE" ]; then
    LOC+=("--zone=$ZONE")
  else
    note "no zone given (--zone / TPU_ZONE) or recorded for '$NAME'; gcloud uses its compute/zone setting"
  fi
  [ -z "$PROJECT" ] || LOC+=("--project=$PROJECT")
  SSH_EXTRA=()
  local w
  for w in $TPU_SSH_FLAGS; do SSH_EXTRA+=("$w"); done
}

# --- accelerator facts ------------------------------------------------------------------------
# Runtime (software) versions for JAX per TPU generation, from
# https://cloud.google.com/tpu/docs/runtimes ("PyTorch and JAX" table).
default_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# Zones where the docs create these types; other types need an explicit --zone.
default_zone() {
  case "$1" in
    v4-*) echo us-central2-b ;;
    v5litepod-*) echo us-central1-a ;;
    *) return 1 ;;
  esac
}

# "CHIPS HOSTS" for an accelerator type. v2/v3/v4/v5p names count TensorCores (2 per chip, and a
# v4/v5p chip is one JAX device); v5litepod/v6e names count chips. Training VMs hold 4 chips
# (v5e/v6e: up to 8 on a single host). Expected values: `tpu-vm describe` is the authority.
slice_shape() {
  local family=${1%-*} n=${1##*-} chips hosts
  case "$family" in
    v2 | v3) chips=$((n / 2)); hosts=$(((n + 7) / 8)) ;;
    v4 | v5p) chips=$((n / 2)); hosts=$(((chips + 3) / 4)) ;;
    v5litepod | v6e) chips=$n; if [ "$n" -le 8 ]; then hosts=1; else hosts=$((n / 4)); fi ;;
    *) return 1 ;;
  esac
  echo "$chips $hosts"
}

# --- remote snippets --------------------------------------------------------------------------
# Absolute remote path expression for a possibly home-relative path (expanded on the worker).
remote_path() {
  case "$1" in
    /*) printf '%s' "$1" ;;
    *) printf '"$HOME"/%s' "$1" ;;
  esac
}

# Sets W to this worker's index within the slice (0 on a single host; MBC_WORKER_ID overrides it,
# for the tests, which play the workers on the local machine), and defines job_alive PID: true
# while PID is a run.sh job (a recycled PID or an unreaped zombie does not count).
# shellcheck disable=SC2016
WORKER_ID_SNIPPET='job_alive() { kill -0 "$1" 2>/dev/null && grep -aq job.sh "/proc/$1/cmdline" 2>/dev/null; }
W=${MBC_WORKER_ID:-}
if [ -z "$W" ]; then
  W=$(curl -sf -m 3 -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number 2>/dev/null || true)
fi
case "$W" in "" | *[!0-9]*) W=$(hostname | sed -n "s/.*-w-\([0-9][0-9]*\)$/\1/p") ;; esac
W=${W:-0}'

validate_run_id() {
  local re='^[A-Za-z0-9][A-Za-z0-9._-]*$'
  [[ $1 =~ $re ]] || die_usage "run id '$1': use letters, digits, '.', '_' and '-'"
}

# The remote lines that set D to this run's log folder on a worker (RUN may be "latest").
run_dir_snippet() {
  printf 'LOGROOT=%s\nD="$LOGROOT"/%s\n' "$(remote_path "$REMOTE_LOGS")" "$1"
}

# Remote script: print this worker's log of run $1 (with follow=1: stream it until the job ends).
#   $2 lines (N, or +1 for all), $3 follow (0/1), $4 prefix each line with [wN] (0/1),
#   $5 finish with the job's exit code (0/1).
log_view_script() {
  local run=$1 lines=$2 follow=$3 prefix=$4 want_rc=$5 sink=""
  [ "$prefix" = 0 ] || sink=' | sed -u "s/^/[w$W] /"'
  printf '%s\n' "$WORKER_ID_SNIPPET"
  run_dir_snippet "$run"
  cat <<'SCRIPT'
F="$D/worker-$W.log"
P="$D/worker-$W.pid"
if [ ! -e "$F" ]; then echo "[logs] worker $W: no log at $F" >&2; exit 1; fi
SCRIPT
  if [ "$follow" = 1 ]; then
    # run.sh's own stream ($5 = 1) started the job seconds ago, so its pid is not a recycled one: follow it
    # while it exists at all, even before it has exec'd job.sh (job_alive's name check can miss that moment
    # on a loaded machine, and the stream then ended before the job had written anything)
    local alive='job_alive "$(cat "$P")"'
    [ "$want_rc" = 1 ] && alive='kill -0 "$(cat "$P")" 2>/dev/null'
    printf 'if [ -e "$P" ] && %s; then\n' "$alive"
    printf '  tail -n %s -F --pid="$(cat "$P")" "$F"%s\n' "$lines" "$sink"
    printf 'else\n  tail -n %s "$F"%s\nfi\n' "$lines" "$sink"
  else
    printf 'tail -n %s "$F"%s\n' "$lines" "$sink"
  fi
  if [ "$want_rc" = 1 ]; then
    cat <<'SCRIPT'
for _ in $(seq 1 50); do [ -s "$D/worker-$W.rc" ] && break; sleep 0.1; done  # the exit trap's write may trail
rc=$(cat "$D/worker-$W.rc" 2>/dev/null || true)
case "$rc" in
  "" | *[!0-9]*) echo "[run] worker $W: no exit code yet (still running, or killed)"; exit 1 ;;
  *) echo "[run] worker $W: exit code $rc"; exit "$rc" ;;
esac
SCRIPT
  fi
}
