#!/usr/bin/env bash
# Launch one command on every worker of a TPU VM, detached, with a log per worker.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/run.sh [NAME] [options] -- COMMAND [ARGS...]
       tpu_setup/run.sh [NAME] --stop [--run-id ID]

Start COMMAND on all workers of the TPU at once (a pod slice needs every host to run the same
program: JAX joins them into one job), in ~/mbc-jax with ~/mbc-jax-venv activated. Each worker
writes ~/mbc-jax-logs/RUN_ID/worker-N.log (also .pid, and .rc with the exit code at the end);
~/mbc-jax-logs/latest points at the newest run. The job is detached (setsid + nohup): closing
your laptop or pressing Ctrl-C stops only the watching, never the run.

After starting, worker 0's log is streamed here until the job ends, and run.sh exits with
worker 0's exit code. Reattach with tpu_setup/logs.sh NAME; see all workers with logs.sh --status.

Options (environment variable in brackets):
  NAME                 TPU name                                           [TPU_NAME]
  --zone ZONE          [TPU_ZONE]; default: recorded by create_tpu.sh
  --project PROJECT    [TPU_PROJECT]; default: recorded by create_tpu.sh, else gcloud's setting
  --run-id ID          name of the log folder (default: UTC time, e.g. 20260101-120000)
  --env KEY=VALUE      export this in the job (repeatable), e.g. --env HF_HUB_OFFLINE=1
  --no-follow          start the job and return without streaming worker 0's log
  --force              start even if an earlier job is still running on a worker
  --stop               stop the run (--run-id, default: latest) on all workers: SIGTERM to its
                       process group, SIGKILL after 30 s
  --dry-run            print the gcloud commands instead of running them     [DRY_RUN=1]
  -h, --help           this help

COMMAND is run as given (each argument quoted). A single argument containing spaces is run as a
shell snippet instead: run.sh NAME -- 'mbc-jax score ... && mbc-jax train ...'
The job exports PYTHONUNBUFFERED=1, MBC_RUN_ID, and JAX_COMPILATION_CACHE_DIR (default
~/.cache/mbc-jax/xla, so a second launch skips most of the compile time).

Examples:
  tpu_setup/run.sh mbc-v4 -- mbc-jax train --config experiments/configs/FILE.yaml --mesh 1,-1,1
  tpu_setup/run.sh mbc-v5e16 --run-id neo27-mbc -- mbc-jax train --config FILE.yaml --mesh 1,-1,1
  tpu_setup/run.sh mbc-v4 --stop
EOF
}

NAME="" ZONE="" PROJECT="" RUN_ID="" FOLLOW=1 FORCE=0 STOP=0
ENVS=()
CMD=()
flag ARG name NAME '(put the command after --)'
flag_tpu_target
flag --run-id value RUN_ID
flag --env append ENVS '--env needs KEY=VALUE'
flag --no-follow set FOLLOW 0
flag --force set FORCE 1
flag --stop set STOP 1
flag -- rest CMD
parse_flags "$@"

resolve_target
[ -z "$RUN_ID" ] || validate_run_id "$RUN_ID"

if [ "$STOP" = 1 ]; then
  [ ${#CMD[@]} -eq 0 ] || die_usage "--stop takes no command"
  require_gcloud
  read -r -d '' stop_body <<'REMOTE' || true
P="$D/worker-$W.pid"
if [ -e "$P" ] && job_alive "$(cat "$P")"; then
  pid=$(cat "$P")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  for _ in $(seq 1 150); do job_alive "$pid" || break; sleep 0.2; done
  if job_alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
  echo "[run] worker $W: stopped pid $pid ($D)"
else
  echo "[run] worker $W: nothing running in $D"
fi
REMOTE
  stop_script="$WORKER_ID_SNIPPET
$(run_dir_snippet "${RUN_ID:-latest}")
$stop_body"
  gcloud_run compute tpus tpu-vm ssh "$NAME" --worker=all ${LOC[@]+"${LOC[@]}"} \
    ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$stop_script"
  exit 0
fi

[ ${#CMD[@]} -gt 0 ] || die_usage "no command: tpu_setup/run.sh NAME -- mbc-jax train --config FILE"
RUN_ID=${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}

# The command line, quoted word by word (or a shell snippet, see --help).
if [ ${#CMD[@]} -eq 1 ] && [[ ${CMD[0]} == *[[:space:]]* ]]; then
  cmd_line=${CMD[0]}
else
  cmd_line=""
  for a in "${CMD[@]}"; do cmd_line="$cmd_line $(shell_quote "$a")"; done
  cmd_line=${cmd_line# }
fi
env_lines=""
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  key=${kv%%=*}
  key_re='^[A-Za-z_][A-Za-z0-9_]*$'
  [[ $kv == *=* && $key =~ $key_re ]] || die_usage "--env '$kv': expected KEY=VALUE"
  env_lines+="export $key=$(printf '%q' "${kv#*=}")
"
done
require_gcloud

# What every worker runs (the job script, written next to its log): settings, then the command.
read -r -d '' job_head <<'REMOTE' || true
#!/usr/bin/env bash
# Written by tpu_setup/run.sh; started as: bash job.sh WORKER_INDEX
W=$1
finish() {
  rc=$?
  echo "$rc" > "$(dirname "$0")/worker-$W.rc"
  echo "[run] worker $W $(date -u +%FT%TZ): exit code $rc"
}
trap finish EXIT
stopped() { exit 143; } # run.sh --stop: record 143 (128 + SIGTERM), not the shell's 0
trap stopped TERM INT HUP
REMOTE
job="$job_head
cd $(remote_path "$REMOTE_DIR") || exit 1
source $(remote_path "$REMOTE_VENV")/bin/activate || exit 1
export PYTHONUNBUFFERED=1
export MBC_RUN_ID=$RUN_ID
export JAX_COMPILATION_CACHE_DIR=\"\${JAX_COMPILATION_CACHE_DIR:-\$HOME/.cache/mbc-jax/xla}\"
${env_lines}echo \"[run] worker \$W (\$(hostname)) \$(date -u +%FT%TZ) runs:\"
cat <<\"MBC_CMD\"
$cmd_line
MBC_CMD
$cmd_line"

# The launcher: refuse if a job still runs here, write job.sh, start it detached, record its pid.
read -r -d '' launch_check <<'REMOTE' || true
set -eu
if [ "$FORCE" = 0 ]; then
  for p in "$LOGROOT"/*/worker-"$W".pid; do
    if [ -e "$p" ] && job_alive "$(cat "$p")"; then
      echo "[run] worker $W: a job is still running ($p); stop it with tpu_setup/run.sh $TPU --stop, or pass --force" >&2
      exit 3
    fi
  done
fi
mkdir -p "$D"
REMOTE
read -r -d '' launch_start <<'REMOTE' || true
rm -f "$D/worker-$W.rc"
if command -v setsid >/dev/null 2>&1; then S=setsid; else S=; fi
$S nohup bash "$D/job.sh" "$W" >> "$D/worker-$W.log" 2>&1 < /dev/null &
echo $! > "$D/worker-$W.pid"
ln -sfn "$D" "$LOGROOT/latest"
echo "[run] worker $W ($(hostname)): started pid $!, log $D/worker-$W.log"
REMOTE
launch="FORCE=$FORCE
TPU=$NAME
$WORKER_ID_SNIPPET
$(run_dir_snippet "$RUN_ID")
$launch_check
cat > \"\$D/job.sh\" <<\"MBC_JOB_EOF\"
$job
MBC_JOB_EOF
$launch_start"

note "run $RUN_ID on all workers of $NAME: $cmd_line"
gcloud_run compute tpus tpu-vm ssh "$NAME" --worker=all ${LOC[@]+"${LOC[@]}"} \
  ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$launch"

if [ "$FOLLOW" = 0 ]; then
  note "started. watch: tpu_setup/logs.sh $NAME --run $RUN_ID    stop: tpu_setup/run.sh $NAME --stop --run-id $RUN_ID"
  exit 0
fi
note "streaming worker 0's log; Ctrl-C stops watching only (reattach: tpu_setup/logs.sh $NAME --run $RUN_ID)"
gcloud_run compute tpus tpu-vm ssh "$NAME" --worker=0 ${LOC[@]+"${LOC[@]}"} \
  ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$(log_view_script "$RUN_ID" +1 1 0 1)"
