#!/usr/bin/env bash
# Delete a TPU VM (or the queued resource that holds it). Billing stops when it is gone.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/delete_tpu.sh [NAME] [options]

Delete the TPU VM NAME and everything on its disks (fetch.sh your runs first, or write them to
a gs:// bucket). A TPU bills for every second it exists, running or idle, so delete it as soon
as the run is fetched. If it was created with --queued, the queued resource is deleted with it.

Options (environment variable in brackets):
  NAME                 TPU name                                           [TPU_NAME]
  --zone ZONE          [TPU_ZONE]; default: recorded by create_tpu.sh
  --project PROJECT    [TPU_PROJECT]; default: recorded by create_tpu.sh, else gcloud's setting
  --queued             delete the queued resource NAME and its TPU (default: as recorded)
  --yes                do not ask for confirmation (passes --quiet to gcloud)
  --async              return without waiting for the deletion to finish
  --dry-run            print the gcloud commands instead of running them     [DRY_RUN=1]
  -h, --help           this help

Check that nothing is left: gcloud compute tpus tpu-vm list --zone=ZONE

Examples:
  tpu_setup/delete_tpu.sh mbc-v4
  tpu_setup/delete_tpu.sh mbc-v5e16 --yes
EOF
}

NAME="" ZONE="" PROJECT="" QUEUED="" YES=0 ASYNC=0
flag ARG name NAME
flag_tpu_target
flag --queued set QUEUED 1
flag '--yes|-y' set YES 1
flag --async set ASYNC 1
parse_flags "$@"

resolve_target
QUEUED=${QUEUED:-${STATE_QUEUED:-0}}
require_gcloud

FLAGS=()
[ "$YES" = 0 ] || FLAGS+=(--quiet)
[ "$ASYNC" = 0 ] || FLAGS+=(--async)
if [ "$QUEUED" = 1 ]; then
  gcloud_run compute tpus queued-resources delete "$NAME" ${LOC[@]+"${LOC[@]}"} --force \
    ${FLAGS[@]+"${FLAGS[@]}"}
else
  gcloud_run compute tpus tpu-vm delete "$NAME" ${LOC[@]+"${LOC[@]}"} ${FLAGS[@]+"${FLAGS[@]}"}
fi

if ! is_dry_run; then
  rm -f "$(state_file "$NAME")"
  note "deleted $NAME$([ "$ASYNC" = 1 ] && echo ' (in progress: --async)')"
fi
