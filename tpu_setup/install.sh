#!/usr/bin/env bash
# Install mbc-jax with jax[tpu] on every worker of a TPU VM.
set -euo pipefail
# shellcheck source=_common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'EOF'
Usage: tpu_setup/install.sh [NAME] [options]

Put the project on every worker of the TPU (all hosts of a pod slice, in parallel), make a
virtual environment and `pip install -e '.[tpu,hf,test]'` in it, then check that JAX sees
the TPU chips. Safe to re-run: it updates the code and the packages, keeps the venv and runs/.

Code source (default: copy this checkout, including uncommitted and untracked files that git does
not ignore, so what runs is exactly what you have here):
  --git URL            clone URL on each worker instead (a repository the workers can reach)
  --ref REF            with --git: branch, tag or commit to check out (default: the remote HEAD)
  --src DIR            copy DIR instead of this checkout

Options (environment variable in brackets):
  NAME                 TPU name                                           [TPU_NAME]
  --zone ZONE          [TPU_ZONE]; default: recorded by create_tpu.sh
  --project PROJECT    [TPU_PROJECT]; default: recorded by create_tpu.sh, else gcloud's setting
  --worker W           all (default), one index (0) or a list (0,2)
  --python BIN         Python (>= 3.11) on the workers; default: the newest python3.1x found,
                       else python3.11 from apt (the TPU images ship Ubuntu 22.04 / Python 3.10)
  --pip-args "ARGS"    extra arguments for the pip install (e.g. "jax[tpu]==0.10.2")
  --no-check           skip the final JAX device check
  --dry-run            print the gcloud commands instead of running them     [DRY_RUN=1]
  -h, --help           this help

On the workers: code in ~/mbc-jax, venv in ~/mbc-jax-venv (MBC_REMOTE_DIR, MBC_REMOTE_VENV).
Extra ssh/scp flags for every call: TPU_SSH_FLAGS (e.g. "--tunnel-through-iap").
Several workers need your key in an agent first: ssh-add ~/.ssh/google_compute_engine

Examples:
  tpu_setup/install.sh mbc-v4
  tpu_setup/install.sh mbc-v5e16 --git https://github.com/ORG/mbc-jax.git --ref main
EOF
}

NAME="" ZONE="" PROJECT="" WORKER=all GIT_URL="" GIT_REF="" SRC=$MBC_REPO_ROOT PY="" PIP_ARGS="" CHECK=1
flag ARG name NAME
flag_tpu_target
flag --worker value WORKER
flag --git value GIT_URL '--git needs a URL'
flag --ref value GIT_REF
flag --src value SRC '--src needs a directory'
flag --python value PY
flag --pip-args value-or-empty PIP_ARGS
flag --no-check set CHECK 0
parse_flags "$@"

resolve_target
worker_re='^(all|[0-9]+([,-][0-9]+)*)$'
[[ $WORKER =~ $worker_re ]] || die_usage "--worker '$WORKER': expected all, 0, 0,2 or 1-3"
[ -z "$GIT_REF" ] || [ -n "$GIT_URL" ] || die_usage "--ref needs --git URL"
[ -n "$GIT_URL" ] || [ -d "$SRC" ] || die_usage "--src '$SRC' is not a directory"
require_gcloud

R=$(remote_path "$REMOTE_DIR")
V=$(remote_path "$REMOTE_VENV")
TARBALL=mbc-jax-src.tar.gz

# ---- the script every worker runs -----------------------------------------------------------
q() { if [ -n "$1" ]; then printf '%q' "$1"; fi; }
MODE=copy
[ -z "$GIT_URL" ] || MODE=git
DO_CHECK=0
if [ "$CHECK" = 1 ] && [ "$WORKER" = all ]; then
  DO_CHECK=1 # all hosts of a slice must start JAX together, which --worker=all does
elif [ "$CHECK" = 1 ]; then
  note "skipping the device check: on a pod slice JAX starts only when all workers run it (use --worker all)"
fi
script="R=$R
V=$V
MODE=$MODE
GIT_URL=$(q "$GIT_URL")
GIT_REF=$(q "$GIT_REF")
PY=$(q "$PY")
PIP_ARGS=$(q "$PIP_ARGS")
CHECK=$DO_CHECK
TARBALL=$TARBALL
"
read -r -d '' body <<'REMOTE' || true
set -euo pipefail
echo "[install] $(hostname): code -> $R, venv -> $V"
if [ "$MODE" = git ]; then
  if [ ! -d "$R/.git" ]; then git clone -q "$GIT_URL" "$R"; fi
  if [ -n "$GIT_REF" ]; then
    git -C "$R" fetch -q --all --tags
    git -C "$R" checkout -q "$GIT_REF"
  else
    git -C "$R" pull -q --ff-only
  fi
else
  mkdir -p "$R"
  tar -xzf "$HOME/$TARBALL" -C "$R"
  rm -f "$HOME/$TARBALL"
fi
# a Python >= 3.11 (the TPU images are Ubuntu 22.04, whose python3 is 3.10)
if [ -z "$PY" ]; then
  for c in python3.13 python3.12 python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then PY=$c; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "[install] $(hostname): no Python >= 3.11; installing python3.11 with apt"
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq update
  sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq install -y python3.11 python3.11-venv
  PY=python3.11
fi
if [ -x "$V/bin/python" ] && ! "$V/bin/python" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then rm -rf "$V"; fi
[ -x "$V/bin/python" ] || "$PY" -m venv "$V"
"$V/bin/python" -m pip install -q --upgrade pip
cd "$R"
set -f
"$V/bin/pip" install -q -e ".[tpu,hf,test]" $PIP_ARGS # split on purpose: extra words
set +f
echo "[install] $(hostname): jax $("$V/bin/python" -c "import jax; print(jax.__version__)")"
if [ "$CHECK" = 1 ]; then
  "$V/bin/python" - <<"PY"
import jax
d = jax.devices()
print(f"[install] worker {jax.process_index()}/{jax.process_count()}: "
      f"{jax.local_device_count()} local, {len(d)} global devices, {d[0].device_kind}")
assert d[0].platform == "tpu", f"no TPU: JAX sees {d}"
PY
fi
REMOTE
script+=$body

# ---- ship the code, then run the script on the workers ---------------------------------------
if [ -z "$GIT_URL" ]; then
  if is_dry_run; then
    TAR="/tmp/$TARBALL"
  else
    TMPD=$(mktemp -d)
    trap 'rm -rf "$TMPD"' EXIT
    TAR="$TMPD/$TARBALL"
  fi
  if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # tracked + untracked-but-not-ignored files, as they are on disk now
    list_files() {
      git -C "$SRC" ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
        if [ -e "$SRC/$f" ]; then printf '%s\0' "$f"; fi
      done
    }
    nfiles=$(list_files | tr -cd '\0' | wc -c | tr -d ' ')
    if is_dry_run; then
      note "would pack $nfiles files of $SRC (git ls-files -co --exclude-standard) into $TARBALL"
    else
      list_files | (cd "$SRC" && COPYFILE_DISABLE=1 tar --null -T - -czf "$TAR")
    fi
  else
    excludes=(--exclude=.git --exclude=.venv --exclude=venv --exclude=runs --exclude=__pycache__ --exclude='*.egg-info')
    if is_dry_run; then
      note "would pack $SRC (not a git checkout; without .git, venvs, runs/, caches) into $TARBALL"
    else
      (cd "$SRC" && COPYFILE_DISABLE=1 tar "${excludes[@]}" -czf "$TAR" .)
    fi
  fi
  if ! is_dry_run; then
    note "packed $SRC: $(du -h "$TAR" | cut -f1) -> worker(s) $WORKER"
  fi
  gcloud_run compute tpus tpu-vm scp "$TAR" "$NAME:$TARBALL" --worker="$WORKER" \
    ${LOC[@]+"${LOC[@]}"} ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
fi

gcloud_run compute tpus tpu-vm ssh "$NAME" --worker="$WORKER" ${LOC[@]+"${LOC[@]}"} \
  ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$script"

if ! is_dry_run; then
  note "installed on $NAME (worker(s) $WORKER). next: tpu_setup/run.sh $NAME -- mbc-jax train --config ..."
fi
