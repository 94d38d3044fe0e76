#!/usr/bin/env bash
# Stream, tail, save or summarise the per-worker logs of a run started by run.sh.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/logs.sh [NAME] [options]

Show the logs that run.sh writes on every worker (~/mbc-jax-logs/RUN_ID/worker-N.log). By
default: the last 50 lines of every worker, then follow them live (each line prefixed [wN])
until the job ends. Ctrl-C stops watching, never the job.

Options (environment variable in brackets):
  NAME                 TPU name                                           [TPU_NAME]
  --zone ZONE          [TPU_ZONE]; default: recorded by create_tpu.sh
  --project PROJECT    [TPU_PROJECT]; default: recorded by create_tpu.sh, else gcloud's setting
  --run ID             which run (default: latest)
  --worker W           all (default), one index (0) or a list (0,2)
  -n, --lines N        lines of history to show first (default 50; "all" for the whole log)
  --no-follow          print and return instead of following
  --status             one line per worker: running / exit code, and its last log line
  --save DIR           copy each worker's whole log to DIR/N.log on this machine
  --dry-run            print the gcloud commands instead of running them     [DRY_RUN=1]
  -h, --help           this help

Examples:
  tpu_setup/logs.sh mbc-v5e16                  # follow all workers
  tpu_setup/logs.sh mbc-v5e16 --worker 0 -n all --no-follow
  tpu_setup/logs.sh mbc-v5e16 --status
  tpu_setup/logs.sh mbc-v5e16 --save runs/tpu-logs/neo27-mbc --run neo27-mbc
EOF
}

NAME="" ZONE="" PROJECT="" RUN=latest WORKER=all LINES=50 FOLLOW=1 STATUS=0 SAVE=""
flag ARG name NAME
flag_tpu_target
flag '--run|--run-id' value RUN
flag --worker value WORKER
flag '--lines|-n' value LINES
flag --no-follow set FOLLOW 0
flag --status set STATUS 1
flag --save value SAVE '--save needs a directory'
parse_flags "$@"

resolve_target
validate_run_id "$RUN"
worker_re='^(all|[0-9]+([,-][0-9]+)*)$'
[[ $WORKER =~ $worker_re ]] || die_usage "--worker '$WORKER': expected all, 0, 0,2 or 1-3"
case "$LINES" in all) LINES=+1 ;; '' | *[!0-9]*) die_usage "--lines '$LINES': expected a number or all" ;; esac
require_gcloud

SSH=(compute tpus tpu-vm ssh "$NAME" --worker="$WORKER")
SSH+=(${LOC[@]+"${LOC[@]}"} ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"})

if [ "$STATUS" = 1 ]; then
  status_script="$WORKER_ID_SNIPPET
$(run_dir_snippet "$RUN")
P=\"\$D/worker-\$W.pid\"
if [ ! -e \"\$D/worker-\$W.log\" ]; then s=\"no job\"
elif [ -e \"\$D/worker-\$W.rc\" ]; then s=\"exited with code \$(cat \"\$D/worker-\$W.rc\")\"
elif [ -e \"\$P\" ] && job_alive \"\$(cat \"\$P\")\"; then s=\"running (pid \$(cat \"\$P\"))\"
else s=\"ended without an exit code (killed?)\"
fi
echo \"[w\$W] \$(basename \"\$(cd \"\$D\" 2>/dev/null && pwd -P || echo \"\$D\")\"): \$s | \$(tail -n 1 \"\$D/worker-\$W.log\" 2>/dev/null)\""
  gcloud_run "${SSH[@]}" --command="$status_script"
elif [ -n "$SAVE" ]; then
  is_dry_run || mkdir -p "$SAVE"
  gcloud_run "${SSH[@]}" --output-directory="$SAVE" --command="$(log_view_script "$RUN" +1 0 0 0)"
  is_dry_run || note "saved to $SAVE/ (one N.log per worker)"
else
  prefix=1
  [ "$WORKER" = all ] || [[ $WORKER == *[,-]* ]] || prefix=0
  gcloud_run "${SSH[@]}" --command="$(log_view_script "$RUN" "$LINES" "$FOLLOW" "$prefix" 0)"
fi
