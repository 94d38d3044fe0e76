#!/usr/bin/env bash
# Copy a run folder back to this machine: from TPU worker 0, or from a GCS bucket.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/fetch.sh NAME REMOTE_PATH [LOCAL_DIR] [options]
       tpu_setup/fetch.sh REMOTE_PATH [options]             (NAME from TPU_NAME)
       tpu_setup/fetch.sh --gcs gs://BUCKET/PATH [LOCAL_DIR]

Copy a run folder (or any file or folder) back to this machine.

From the TPU (gcloud compute tpus tpu-vm scp --recurse, from worker 0, where process 0 writes
the run files): REMOTE_PATH is relative to the checkout on the worker (~/mbc-jax), so
`runs/neo27-mbc` fetches ~/mbc-jax/runs/neo27-mbc; absolute paths and ~/... are taken as is.
From GCS (gcloud storage cp --recursive): for runs whose folder is a gs:// path, which is what
multi-host checkpoints need (every host writes its shards to the same place).

LOCAL_DIR defaults to ./runs (the folder is copied into it, keeping its name).

Options (environment variable in brackets):
  --zone ZONE          [TPU_ZONE]; default: recorded by create_tpu.sh
  --project PROJECT    [TPU_PROJECT]; default: recorded by create_tpu.sh, else gcloud's setting
  --worker N           fetch from another worker (default 0)
  --to DIR             LOCAL_DIR as an option
  --gcs URL            copy from this gs:// URL instead of the TPU
  --compress           compress during the scp (helps for text logs, not for checkpoints)
  --dry-run            print the gcloud commands instead of running them     [DRY_RUN=1]
  -h, --help           this help

Checkpoints of a 2.7B model are tens of GB: fetch the subfolders you need
(e.g. runs/NAME/metrics.jsonl) rather than the whole run when you only want the numbers.

Examples:
  tpu_setup/fetch.sh mbc-v4 runs/neo27-mbc
  tpu_setup/fetch.sh mbc-v4 runs/neo27-mbc/metrics.jsonl ./from-tpu
  tpu_setup/fetch.sh --gcs gs://my-bucket/mbc/neo27-mbc runs/
EOF
}

NAME="" ZONE="" PROJECT="" WORKER=0 LOCAL="" GCS="" COMPRESS=0
POS=()
flag ARG list POS
flag_tpu_target
flag --worker value WORKER
flag --to value LOCAL '--to needs a directory'
flag --gcs value GCS '--gcs needs a gs:// URL'
flag --compress set COMPRESS 1
parse_flags "$@"

if [ -n "$GCS" ]; then
  [[ $GCS == gs://?* ]] || die_usage "--gcs '$GCS': expected gs://BUCKET/PATH"
  [ ${#POS[@]} -le 1 ] || die_usage "with --gcs, only LOCAL_DIR may follow"
  LOCAL=${LOCAL:-${POS[0]:-runs}}
  require_gcloud
  is_dry_run || mkdir -p "$LOCAL"
  GPROJ=()
  PROJECT=${PROJECT:-${TPU_PROJECT:-}}
  [ -z "$PROJECT" ] || GPROJ=("--project=$PROJECT")
  gcloud_run storage cp --recursive "${GCS%/}" "$LOCAL" ${GPROJ[@]+"${GPROJ[@]}"}
  is_dry_run || note "fetched ${GCS%/} into $LOCAL/"
  exit 0
fi

case ${#POS[@]} in
  1)
    [ -n "${TPU_NAME:-}" ] || die_usage "fetch what from '${POS[0]}'? tpu_setup/fetch.sh NAME runs/RUN_NAME [LOCAL_DIR] (or export TPU_NAME and give only the path)"
    REMOTE=${POS[0]} ;;
  2) NAME=${POS[0]}; REMOTE=${POS[1]} ;;
  3) NAME=${POS[0]}; REMOTE=${POS[1]}; LOCAL=${LOCAL:-${POS[2]}} ;;
  0) die_usage "what to fetch? tpu_setup/fetch.sh NAME runs/RUN_NAME" ;;
  *) die_usage "too many arguments: ${POS[*]}" ;;
esac
case "$WORKER" in '' | *[!0-9]*) die_usage "--worker '$WORKER': expected one index" ;; esac
resolve_target
LOCAL=${LOCAL:-runs}
case "$REMOTE" in
  /* | '~'*) SRC=$REMOTE ;;
  *) SRC="$REMOTE_DIR/$REMOTE" ;; # scp paths without a leading / are relative to the home dir
esac
require_gcloud
is_dry_run || mkdir -p "$LOCAL"
EXTRA=()
[ "$COMPRESS" = 0 ] || EXTRA=(--compress)
gcloud_run compute tpus tpu-vm scp "$NAME:${SRC%/}" "$LOCAL" --recurse --worker="$WORKER" \
  ${LOC[@]+"${LOC[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
is_dry_run || note "fetched $NAME:${SRC%/} (worker $WORKER) into $LOCAL/"
