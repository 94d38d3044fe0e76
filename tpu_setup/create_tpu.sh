#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice) for mbc-jax.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/create_tpu.sh [NAME] [options] [-- EXTRA_GCLOUD_FLAGS...]

Create a Cloud TPU VM with `gcloud compute tpus tpu-vm create` (or, with --queued, a queued
resource that waits for capacity). Works for single hosts (v4-8, v5litepod-8) and pod slices
(v4-32, v5litepod-16): every later script addresses all workers of the slice.

Options (environment variable in brackets):
  NAME                 TPU name                                      [TPU_NAME, default mbc-tpu]
  --type TYPE          accelerator type: v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v6e-8 ...
                                                                     [TPU_TYPE, default v4-8]
  --zone ZONE          zone [TPU_ZONE]; default us-central2-b for v4, us-central1-a for v5litepod
  --version VERSION    TPU runtime (software) version [TPU_VERSION]; default by generation:
                         v2/v3/v4: tpu-ubuntu2204-base   v5litepod: v2-alpha-tpuv5-lite
                         v5p: v2-alpha-tpuv5             v6e: v2-alpha-tpuv6e
  --project PROJECT    GCP project [TPU_PROJECT]; default: gcloud's core/project setting
  --spot               Spot capacity: much cheaper, can be preempted at any time   [TPU_SPOT=1]
  --queued             create through a queued resource (waits for capacity instead of failing)
  --no-wait            with --queued: return at once instead of waiting until it is ACTIVE
  --dry-run            print the gcloud commands instead of running them           [DRY_RUN=1]
  -h, --help           this help
  -- FLAGS...          passed to gcloud as is (e.g. -- --network=my-net --labels=team=mbc)

The zone, project and type are recorded in ~/.config/mbc-jax/tpus/NAME.env (no credentials), so
install.sh / run.sh / logs.sh / fetch.sh / delete_tpu.sh need only the NAME.

Examples:
  tpu_setup/create_tpu.sh mbc-v4 --type v4-8
  tpu_setup/create_tpu.sh mbc-v5e16 --type v5litepod-16 --spot
  DRY_RUN=1 tpu_setup/create_tpu.sh mbc-v4 --type v4-32 --zone us-central2-b --project my-proj
EOF
}

NAME="" TYPE="" ZONE="" VERSION="" PROJECT="" SPOT=${TPU_SPOT:-0} QUEUED=0 WAIT=1
EXTRA=()
flag ARG name NAME "(the name is already '{}')"
flag '--type|--accelerator-type' value TYPE
flag_tpu_target
flag '--version|--runtime-version' value VERSION
flag --spot set SPOT 1
flag --queued set QUEUED 1
flag --no-wait set WAIT 0
flag -- rest EXTRA
parse_flags "$@"

NAME=${NAME:-${TPU_NAME:-mbc-tpu}}
validate_name "$NAME"
TYPE=${TYPE:-${TPU_TYPE:-v4-8}}
type_re='^v[0-9][a-z0-9]*-[0-9]+$'
[[ $TYPE =~ $type_re ]] || die_usage "accelerator type '$TYPE': expected e.g. v4-8, v4-32, v5litepod-16, v6e-8"
VERSION=${VERSION:-${TPU_VERSION:-}}
if [ -z "$VERSION" ]; then
  VERSION=$(default_version "$TYPE") || die_usage "no default runtime version for $TYPE: pass --version (list: gcloud compute tpus tpu-vm versions list --zone=ZONE)"
fi
ZONE=${ZONE:-${TPU_ZONE:-}}
if [ -z "$ZONE" ]; then
  ZONE=$(default_zone "$TYPE") || die_usage "no default zone for $TYPE: pass --zone (see https://cloud.google.com/tpu/docs/regions-zones)"
fi
PROJECT=${PROJECT:-${TPU_PROJECT:-}}
case "$SPOT" in 0 | '' | false | no) SPOT=0 ;; *) SPOT=1 ;; esac

require_gcloud

if shape=$(slice_shape "$TYPE"); then
  note "$TYPE: expected ${shape% *} chips (= JAX devices) on ${shape#* } host(s); zone $ZONE, runtime $VERSION$([ "$SPOT" = 1 ] && echo ', spot')"
fi

PROJ=()
[ -z "$PROJECT" ] || PROJ=("--project=$PROJECT")
SPOT_FLAG=()
[ "$SPOT" = 0 ] || SPOT_FLAG=(--spot)

if [ "$QUEUED" = 1 ]; then
  gcloud_run compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
    --accelerator-type="$TYPE" --runtime-version="$VERSION" \
    ${SPOT_FLAG[@]+"${SPOT_FLAG[@]}"} ${PROJ[@]+"${PROJ[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  if [ "$WAIT" = 1 ]; then
    if is_dry_run; then
      note "would poll until the queued resource is ACTIVE:"
      gcloud_run compute tpus queued-resources describe "$NAME" --zone="$ZONE" ${PROJ[@]+"${PROJ[@]}"} --format='value(state.state)'
    else
      note "waiting for capacity (Ctrl-C stops waiting; the request stays queued; delete it with delete_tpu.sh $NAME)"
      while :; do
        state=$("$GCLOUD" compute tpus queued-resources describe "$NAME" --zone="$ZONE" ${PROJ[@]+"${PROJ[@]}"} --format='value(state.state)')
        case "$state" in
          ACTIVE) note "queued resource $NAME is ACTIVE"; break ;;
          FAILED | SUSPENDED) die "queued resource $NAME is $state: see 'gcloud compute tpus queued-resources describe $NAME --zone=$ZONE'" ;;
          *) note "$(date +%H:%M:%S) state: ${state:-unknown}; next check in 60 s"; sleep 60 ;;
        esac
      done
    fi
  fi
else
  gcloud_run compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" --version="$VERSION" \
    ${SPOT_FLAG[@]+"${SPOT_FLAG[@]}"} ${PROJ[@]+"${PROJ[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
fi

if ! is_dry_run; then
  f=$(state_file "$NAME")
  mkdir -p "$(dirname "$f")"
  printf 'ZONE=%s\nPROJECT=%s\nTYPE=%s\nQUEUED=%s\n' "$ZONE" "$PROJECT" "$TYPE" "$QUEUED" >"$f"
  note "recorded zone/project/type in $f"
  note "next: tpu_setup/install.sh $NAME"
fi
