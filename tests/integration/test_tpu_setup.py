"""The tpu_setup/ scripts, with a fake `gcloud` on PATH.

The fake records every call's argv, so the tests assert the exact gcloud sub-commands and flags.
With FAKE_GCLOUD_EXEC=1 it also plays the TPU workers on this machine: `tpu-vm ssh --command`
runs the command under bash (once per worker, in parallel, MBC_WORKER_ID=0..FAKE_WORKERS-1) and
`tpu-vm scp` copies to / from $HOME, so the remote halves of install.sh / run.sh / logs.sh /
fetch.sh run for real in a temporary home folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SETUP = REPO / "tpu_setup"
# The fake workers run the remote halves here, which use GNU tail --pid, setsid and /proc, as
# the Linux TPU VMs do.
linux_workers = pytest.mark.skipif(sys.platform != "linux", reason="the fake TPU workers need Linux")
SCRIPTS = ("create_tpu.sh", "install.sh", "run.sh", "logs.sh", "fetch.sh", "delete_tpu.sh", "gpu_setup.sh")

FAKE_GCLOUD = r'''
import ctypes, os, shutil, subprocess, sys

argv = sys.argv[1:]
calls = os.environ["FAKE_GCLOUD_DIR"]
n = sum(f.startswith("call-") for f in os.listdir(calls))
with open(os.path.join(calls, f"call-{n:03d}"), "wb") as f:
    f.write(b"".join(a.encode() + b"\0" for a in argv))
if "describe" in argv:
    print(os.environ.get("FAKE_GCLOUD_DESCRIBE", ""))
if os.environ.get("FAKE_GCLOUD_EXEC") != "1" or argv[:3] != ["compute", "tpus", "tpu-vm"]:
    sys.exit(0)
verb, rest = argv[3], argv[4:]
opts = dict(a.split("=", 1) for a in rest if a.startswith("--") and "=" in a)
pos = [a for a in rest if not a.startswith("--")]
home = os.environ["HOME"]
if verb == "scp":
    src, dst = pos
    if ":" in src:
        src = os.path.join(home, src.split(":", 1)[1])
        copy = shutil.copytree if os.path.isdir(src) else shutil.copy
        copy(src, os.path.join(dst, os.path.basename(src)))
    else:
        shutil.copy(src, os.path.join(home, dst.split(":", 1)[1]))
    sys.exit(0)
if verb != "ssh":
    sys.exit(0)
workers = range(int(os.environ.get("FAKE_WORKERS", "1"))) if opts["--worker"] == "all" else [int(opts["--worker"])]
r, w = os.pipe()
if os.fork() == 0:
    # Run each worker's command, then stay as their jobs' reaper (a TPU VM's systemd reaps at
    # once; some sandboxes' init takes seconds, and a zombie still answers kill -0).
    os.close(r)
    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass
    procs = [subprocess.Popen(["bash", "-c", opts["--command"]], env={**os.environ, "MBC_WORKER_ID": str(i)})
             for i in workers]
    codes = [p.wait() for p in procs]
    os.write(w, str(next((c for c in codes if c), 0)).encode())
    os.close(w)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            os._exit(0)
os.close(w)
sys.exit(int(os.read(r, 16) or b"1"))
'''

# A stand-in for the venv's python / pip on a "worker": logs its arguments, answers the checks.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$HOME/venv-calls.log"
case "$*" in *"print(jax.__version__)"*) echo 0.10.2 ;; esac
if [ "${1:-}" = - ]; then cat > /dev/null; echo "[install] worker 0/1: 4 local, 4 global devices, TPU v4"; fi
exit 0
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    (bin_dir / "gcloud").chmod(0o755)
    (tmp_path / "calls").mkdir()
    (tmp_path / "home").mkdir()
    e = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "MBC_", "DRY_RUN", "GCLOUD"))}
    e.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        HOME=str(tmp_path / "home"),
        MBC_TPU_STATE_DIR=str(tmp_path / "state"),
        FAKE_GCLOUD_DIR=str(tmp_path / "calls"),
        MBC_WORKER_ID="0",  # the workers' metadata server is not here
    )
    return e


def sh(script: str, *args: str, env: dict[str, str], rc: int | None = 0, cwd: Path | None = None, **extra: str):
    p = subprocess.run(
        ["bash", str(SETUP / script), *args],
        env={**env, **extra},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if rc is not None:
        assert p.returncode == rc, f"rc={p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def calls(env: dict[str, str]) -> list[list[str]]:
    d = Path(env["FAKE_GCLOUD_DIR"])
    return [f.read_bytes().decode().split("\0")[:-1] for f in sorted(d.glob("call-*"))]


def command_of(argv: list[str]) -> str:
    (cmd,) = [a[len("--command=") :] for a in argv if a.startswith("--command=")]
    return cmd


def fake_worker_home(env: dict[str, str]) -> Path:
    """A home folder as install.sh leaves it: checkout + venv (with stand-in python and pip)."""
    home = Path(env["HOME"])
    (home / "mbc-jax").mkdir(exist_ok=True)
    vbin = home / "mbc-jax-venv" / "bin"
    vbin.mkdir(parents=True, exist_ok=True)
    (vbin / "activate").write_text("")
    for exe in ("python", "pip"):
        (vbin / exe).write_text(FAKE_PYTHON)
        (vbin / exe).chmod(0o755)
    return home


# ---- every script ----------------------------------------------------------------------------


def test_every_script_parses():
    for script in [*SCRIPTS, "_common.sh"]:
        p = subprocess.run(["bash", "-n", str(SETUP / script)], capture_output=True, text=True)
        assert p.returncode == 0, f"{script}: {p.stderr}"
    assert sorted(f.name for f in SETUP.glob("*.sh")) == sorted([*SCRIPTS, "_common.sh"])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_strict_mode_and_usage_errors(script, env):
    p = sh(script, "--help", env=env)
    assert p.stdout.startswith(f"Usage: tpu_setup/{script}")
    assert "--dry-run" in p.stdout and "DRY_RUN=1" in p.stdout
    assert "set -euo pipefail" in (SETUP / script).read_text()
    p = sh(script, "--no-such-option", env=env, rc=2)
    assert "unknown option --no-such-option" in p.stderr
    assert calls(env) == []


@pytest.mark.parametrize(
    "script, args, first",
    [
        ("create_tpu.sh", ["t", "--type", "v4-32"], "compute tpus tpu-vm create t --zone=us-central2-b"),
        ("install.sh", ["t"], "compute tpus tpu-vm scp /tmp/mbc-jax-src.tar.gz t:mbc-jax-src.tar.gz --worker=all"),
        ("run.sh", ["t", "--", "mbc-jax", "info"], "compute tpus tpu-vm ssh t --worker=all --zone=us-central2-b"),
        ("logs.sh", ["t", "--status"], "compute tpus tpu-vm ssh t --worker=all --zone=us-central2-b"),
        ("fetch.sh", ["t", "runs/x", "out"], "compute tpus tpu-vm scp t:mbc-jax/runs/x out --recurse --worker=0"),
        ("delete_tpu.sh", ["t"], "compute tpus tpu-vm delete t --zone=us-central2-b"),
    ],
)
def test_dry_run_prints_gcloud_and_touches_nothing(script, args, first, env, tmp_path):
    env = {**env, "TPU_ZONE": "us-central2-b"}
    by_env = sh(script, *args, env=env, cwd=tmp_path, DRY_RUN="1")
    by_flag = sh(script, args[0], "--dry-run", *args[1:], env=env, cwd=tmp_path)
    for p in (by_env, by_flag):
        assert p.stdout.startswith(f"+ gcloud {first}")
    assert calls(env) == [] and not (tmp_path / "out").exists() and not Path(env["MBC_TPU_STATE_DIR"]).exists()


@pytest.mark.parametrize(
    "script, args, rc, message",
    [
        ("create_tpu.sh", ["a", "--type"], 1, "--type needs a value"),
        ("create_tpu.sh", ["a", "--accelerator-type", ""], 1, "--type needs a value"),
        ("create_tpu.sh", ["a", "b", "--help"], 2, "unexpected argument 'b' (the name is already 'a')"),
        ("create_tpu.sh", ["a", "--spot=1"], 2, "unknown option --spot=1"),
        ("run.sh", ["a", "b"], 2, "unexpected argument 'b' (put the command after --)"),
        ("run.sh", ["a", "--env"], 1, "--env needs KEY=VALUE"),
        ("logs.sh", ["a", "-n=5"], 2, "unknown option -n=5"),
        ("logs.sh", ["a", "--run-id"], 1, "--run needs a value"),
        ("logs.sh", ["a", "--save"], 1, "--save needs a directory"),
        ("delete_tpu.sh", ["a", "--zone=z", "--"], 2, "unknown option --"),
        ("fetch.sh", ["a", "b", "c", "d"], 2, "too many arguments: a b c d"),
        ("install.sh", ["a", "--pip-args"], 1, "--pip-args needs a value"),
        ("gpu_setup.sh", ["--zone", "z"], 2, "unknown option --zone"),
        ("gpu_setup.sh", ["a"], 2, "unexpected argument 'a'"),
    ],
)
def test_flag_errors(script, args, rc, message, env):
    p = sh(script, *args, env=env, rc=rc, DRY_RUN="1")
    assert message in p.stderr and p.stdout == "" and calls(env) == []


def test_flag_spellings(env):
    # aliases, --flag=VALUE (empty allowed), --dry-run anywhere, everything after -- passed on as is
    p = sh("create_tpu.sh", "--dry-run", "a", "--accelerator-type=v4-32", "--runtime-version", "rv", "--zone=z",
           "--project=", "--", "--x=1", "--help", env=env)  # fmt: skip
    assert p.stdout == (
        "+ gcloud compute tpus tpu-vm create a --zone=z --accelerator-type=v4-32 --version=rv --x=1 --help\n"
    )
    p = sh("logs.sh", "a", "--zone", "z", "--run-id=r1", "-n", "3", "--worker=0", "--no-follow", env=env, DRY_RUN="1")
    assert p.stdout.startswith("+ gcloud compute tpus tpu-vm ssh a --worker=0 --zone=z --command=")
    assert '\nD="$LOGROOT"/r1\n' in p.stdout and p.stdout.endswith('\ntail -n 3 "$F"\'\n')
    p = sh("install.sh", "a", "--zone", "z", "--git=u", "--pip-args", "", "--no-check", env=env, DRY_RUN="1")
    assert "\nGIT_URL=u\n" in p.stdout and "\nPIP_ARGS=\n" in p.stdout and "\nCHECK=0\n" in p.stdout
    p = sh("delete_tpu.sh", "a", "--zone", "z", "-y", "--async", env=env, DRY_RUN="1")
    assert p.stdout == "+ gcloud compute tpus tpu-vm delete a --zone=z --quiet --async\n"
    assert calls(env) == []


def test_missing_gcloud_is_a_clear_error(env):
    p = sh("create_tpu.sh", "mbc-v4", env=env, rc=1, GCLOUD="/nonexistent/gcloud")
    assert "not found on PATH" in p.stderr and "https://cloud.google.com/sdk/docs/install" in p.stderr
    # DRY_RUN works without gcloud: it only prints.
    p = sh("delete_tpu.sh", "mbc-v4", "--zone", "us-central2-b", env=env, GCLOUD="/nonexistent/gcloud", DRY_RUN="1")
    assert p.stdout == "+ gcloud compute tpus tpu-vm delete mbc-v4 --zone=us-central2-b\n"


def test_no_secrets_in_the_files():
    pattern = re.compile(r"AIza[0-9A-Za-z_-]{20}|ya29\.|-----BEGIN|hf_[A-Za-z0-9]{20}|ghp_[A-Za-z0-9]{20}")
    for f in SETUP.iterdir():
        assert not pattern.search(f.read_text()), f


# ---- create ----------------------------------------------------------------------------------


def test_create_single_host_dry_run_prints_and_calls_nothing(env):
    p = sh("create_tpu.sh", "mbc-v4", "--type", "v4-8", env=env, DRY_RUN="1")
    assert p.stdout == (
        "+ gcloud compute tpus tpu-vm create mbc-v4 --zone=us-central2-b --accelerator-type=v4-8"
        " --version=tpu-ubuntu2204-base\n"
    )
    assert "4 chips (= JAX devices) on 1 host" in p.stderr
    assert calls(env) == [] and not Path(env["MBC_TPU_STATE_DIR"]).exists()


def test_create_pod_slice_spot_and_records_it(env):
    sh("create_tpu.sh", "mbc-v5e16", "--type=v5litepod-16", "--spot", "--project", "my-proj", env=env)
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "create", "mbc-v5e16", "--zone=us-central1-a",
         "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot", "--project=my-proj"],
    ]  # fmt: skip
    state = (Path(env["MBC_TPU_STATE_DIR"]) / "mbc-v5e16.env").read_text()
    assert state == "ZONE=us-central1-a\nPROJECT=my-proj\nTYPE=v5litepod-16\nQUEUED=0\n"


def test_create_from_env_vars_with_extra_flags(env):
    tpu_env = dict(TPU_NAME="mbc-v4-32", TPU_TYPE="v4-32", TPU_ZONE="us-central2-b", TPU_VERSION="v2-alpha-tpuv4")
    sh("create_tpu.sh", "--", "--network=lab-net", env=env, TPU_SPOT="1", **tpu_env)
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "create", "mbc-v4-32", "--zone=us-central2-b", "--accelerator-type=v4-32",
         "--version=v2-alpha-tpuv4", "--spot", "--network=lab-net"],
    ]  # fmt: skip


def test_create_queued_waits_until_active(env, tmp_path):
    sh("create_tpu.sh", "mbc-q", "--type", "v4-8", "--queued", env=env, FAKE_GCLOUD_DESCRIBE="ACTIVE")
    assert calls(env) == [
        ["compute", "tpus", "queued-resources", "create", "mbc-q", "--node-id=mbc-q", "--zone=us-central2-b",
         "--accelerator-type=v4-8", "--runtime-version=tpu-ubuntu2204-base"],
        ["compute", "tpus", "queued-resources", "describe", "mbc-q", "--zone=us-central2-b",
         "--format=value(state.state)"],
    ]  # fmt: skip
    assert "QUEUED=1" in (Path(env["MBC_TPU_STATE_DIR"]) / "mbc-q.env").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["mbc", "--type", "v4_8"], "accelerator type 'v4_8'"),
        (["mbc", "--type", "v3-8"], "no default zone for v3-8"),
        (["mbc", "--type", "v9x-8", "--zone", "z"], "no default runtime version for v9x-8"),
        (["My_TPU"], "TPU name 'My_TPU'"),
    ],
)
def test_create_rejects_bad_input(env, args, message):
    p = sh("create_tpu.sh", *args, env=env, rc=2)
    assert message in p.stderr and calls(env) == []


# ---- install ---------------------------------------------------------------------------------


@linux_workers
def test_install_copies_the_checkout_and_installs_on_all_workers(env, tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (src / "pkg" / "tracked.py").write_text("")
    (src / "untracked.py").write_text("")
    (src / "runs").mkdir()
    (src / "runs" / "big.ckpt").write_text("ignored")
    (src / ".gitignore").write_text("runs/\n")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "pyproject.toml", "pkg/tracked.py", ".gitignore"], check=True)

    sh("create_tpu.sh", "mbc-v4", env=env)  # records the zone: install.sh needs only the name
    home = fake_worker_home(env)
    sh("install.sh", "mbc-v4", "--src", str(src), "--python", "python3", env=env, FAKE_GCLOUD_EXEC="1")

    (_, scp, ssh) = calls(env)
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and scp[4].endswith("/mbc-jax-src.tar.gz")
    assert scp[5:] == ["mbc-v4:mbc-jax-src.tar.gz", "--worker=all", "--zone=us-central2-b"]
    assert ssh[:7] == ["compute", "tpus", "tpu-vm", "ssh", "mbc-v4", "--worker=all", "--zone=us-central2-b"]
    script = command_of(ssh)
    assert '"$V/bin/pip" install -q -e ".[tpu,hf,test]"' in script
    assert "PY=python3\n" in script
    assert "python3.11 python3.11-venv" in script  # without --python: the Ubuntu 22.04 images have 3.10
    # What the worker got: tracked and untracked files, not the ignored ones, not .git.
    files = sorted(str(p.relative_to(home / "mbc-jax")) for p in (home / "mbc-jax").rglob("*") if p.is_file())
    assert files == [".gitignore", "pkg/tracked.py", "pyproject.toml", "untracked.py"]
    assert not (home / "mbc-jax-src.tar.gz").exists()
    venv_calls = (home / "venv-calls.log").read_text()
    assert "pip install -q -e .[tpu,hf,test]" in venv_calls
    assert "python -" in venv_calls  # the device check ran


def test_install_git_mode_one_worker_dry_run(env):
    p = sh("install.sh", "mbc-v4", "--zone=us-central2-b", "--git", "https://example.org/mbc-jax.git",
           "--ref", "v1.0", "--worker", "0", env=env, DRY_RUN="1")  # fmt: skip
    assert calls(env) == []
    assert p.stdout.startswith("+ gcloud compute tpus tpu-vm ssh mbc-v4 --worker=0 --zone=us-central2-b --command=")
    assert "tpu-vm scp" not in p.stdout
    assert "GIT_URL=https://example.org/mbc-jax.git\nGIT_REF=v1.0\n" in p.stdout
    assert "CHECK=0" in p.stdout and "skipping the device check" in p.stderr


def test_install_remote_script_parses(env):
    sh("install.sh", "mbc-v4", "--zone=z", env=env)
    script = command_of(calls(env)[-1])
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


# ---- run / logs ------------------------------------------------------------------------------


@linux_workers
def test_run_launches_on_all_workers_and_streams_worker_0(env):
    home = fake_worker_home(env)
    p = sh("run.sh", "mbc-v5e16", "--zone", "us-central1-a", "--run-id", "r1", "--env", "GREETING=hi there",
           "--", 'echo "$GREETING from $MBC_RUN_ID in $(basename "$PWD")"; exit 3',
           env=env, rc=3, FAKE_GCLOUD_EXEC="1", FAKE_WORKERS="2")  # fmt: skip
    launch, stream = calls(env)
    assert launch[:7] == ["compute", "tpus", "tpu-vm", "ssh", "mbc-v5e16", "--worker=all", "--zone=us-central1-a"]
    assert stream[:7] == ["compute", "tpus", "tpu-vm", "ssh", "mbc-v5e16", "--worker=0", "--zone=us-central1-a"]
    assert "hi there from r1 in mbc-jax" in p.stdout
    assert "[run] worker 0: exit code 3" in p.stdout
    run_dir = home / "mbc-jax-logs" / "r1"
    for w in (0, 1):
        assert "hi there from r1 in mbc-jax" in (run_dir / f"worker-{w}.log").read_text()
        assert (run_dir / f"worker-{w}.rc").read_text() == "3\n"
    assert (home / "mbc-jax-logs" / "latest").resolve() == run_dir.resolve()

    status = sh("logs.sh", "mbc-v5e16", "--status", env=env, FAKE_GCLOUD_EXEC="1", FAKE_WORKERS="2")
    lines = sorted(status.stdout.splitlines())
    assert [line.split(" | ")[0] for line in lines] == ["[w0] r1: exited with code 3", "[w1] r1: exited with code 3"]
    assert lines[1].endswith("exit code 3")  # with the last line of that worker's log
    tail = sh("logs.sh", "mbc-v5e16", "-n", "1", "--no-follow", env=env, FAKE_GCLOUD_EXEC="1", FAKE_WORKERS="2")
    assert sorted(line[:5] for line in tail.stdout.splitlines()) == ["[w0] ", "[w1] "]


@linux_workers
def test_run_refuses_while_a_job_runs_and_stop_ends_it(env):
    home = fake_worker_home(env)
    kw = dict(env=env, FAKE_GCLOUD_EXEC="1")
    sh("run.sh", "mbc-v4", "--zone=z", "--run-id", "long", "--no-follow", "--", "sleep", "30", **kw)
    p = sh("run.sh", "mbc-v4", "--zone=z", "--run-id", "second", "--no-follow", "--", "true", **kw, rc=3)
    assert "a job is still running" in p.stderr and not (home / "mbc-jax-logs" / "second").exists()
    assert "running (pid" in sh("logs.sh", "mbc-v4", "--zone=z", "--status", **kw).stdout
    p = sh("run.sh", "mbc-v4", "--zone=z", "--stop", **kw)
    assert "[run] worker 0: stopped pid" in p.stdout
    assert (home / "mbc-jax-logs" / "long" / "worker-0.rc").read_text() == "143\n"
    assert "exited with code 143" in sh("logs.sh", "mbc-v4", "--zone=z", "--status", **kw).stdout


def test_run_quotes_the_command_and_needs_one(env):
    p = sh("run.sh", "mbc-v4", "--zone=z", "--run-id=r", "--no-follow", "--",
           "mbc-jax", "train", "--config", "experiments/configs/a b.yaml", "--mesh", "1,-1,1",
           env=env, DRY_RUN="1")  # fmt: skip
    assert calls(env) == []
    assert p.stdout.count("+ gcloud compute tpus tpu-vm ssh mbc-v4 --worker=all --zone=z --command=") == 1
    assert "\nmbc-jax train --config '\\''experiments/configs/a b.yaml'\\'' --mesh 1,-1,1\n" in p.stdout
    p = sh("run.sh", "mbc-v4", "--zone=z", env=env, rc=2)
    assert "no command" in p.stderr


def test_logs_save_uses_output_directory(env, tmp_path):
    out = tmp_path / "saved"
    sh("logs.sh", "mbc-v4", "--zone=z", "--run", "r1", "--save", str(out), env=env)
    (argv,) = calls(env)
    assert argv[:9] == ["compute", "tpus", "tpu-vm", "ssh", "mbc-v4", "--worker=all", "--zone=z",
                        f"--output-directory={out}", argv[8]]  # fmt: skip
    assert '"$LOGROOT"/r1' in command_of(argv) and out.is_dir()


# ---- fetch / delete --------------------------------------------------------------------------


@linux_workers
def test_fetch_run_folder_from_worker_0(env, tmp_path):
    home = fake_worker_home(env)
    (home / "mbc-jax" / "runs" / "neo").mkdir(parents=True)
    (home / "mbc-jax" / "runs" / "neo" / "metrics.jsonl").write_text('{"step": 1}\n')
    local = tmp_path / "local"
    sh("fetch.sh", "mbc-v4", "runs/neo", str(local), "--zone", "us-central2-b", env=env, FAKE_GCLOUD_EXEC="1")
    assert calls(env) == [
        ["compute", "tpus", "tpu-vm", "scp", "mbc-v4:mbc-jax/runs/neo", str(local), "--recurse", "--worker=0",
         "--zone=us-central2-b"],
    ]  # fmt: skip
    assert (local / "neo" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_fetch_from_gcs(env, tmp_path):
    sh("fetch.sh", "--gcs", "gs://bucket/mbc/neo/", str(tmp_path / "runs"), env=env)
    assert calls(env) == [["storage", "cp", "--recursive", "gs://bucket/mbc/neo", str(tmp_path / "runs")]]


def test_delete_uses_the_recorded_zone_and_forgets_the_tpu(env):
    sh("create_tpu.sh", "mbc-v4", env=env)
    sh("delete_tpu.sh", "mbc-v4", "--yes", env=env)
    assert calls(env)[-1] == ["compute", "tpus", "tpu-vm", "delete", "mbc-v4", "--zone=us-central2-b", "--quiet"]
    assert not (Path(env["MBC_TPU_STATE_DIR"]) / "mbc-v4.env").exists()
    sh("delete_tpu.sh", "mbc-q", "--zone=us-east5-b", "--queued", env=env)
    assert calls(env)[-1] == ["compute", "tpus", "queued-resources", "delete", "mbc-q", "--zone=us-east5-b", "--force"]


# ---- gpu -------------------------------------------------------------------------------------


def test_gpu_setup_dry_run(env, tmp_path):
    venv = tmp_path / "venv"
    p = sh("gpu_setup.sh", "--venv", str(venv), "--python", "python3", env=env, DRY_RUN="1")
    lines = p.stdout.splitlines()
    assert lines[:3] == [
        f"+ python3 -m venv {venv}",
        f"+ {venv}/bin/python -m pip install --upgrade pip",
        f"+ {venv}/bin/pip install -e '{REPO}[cuda12,hf]'",
    ]
    assert lines[3].startswith(f"+ {venv}/bin/python -c 'import sys, jax") and 'platform == "gpu"' in p.stdout
    assert not venv.exists() and calls(env) == []
    p = sh("gpu_setup.sh", "--venv", str(venv), "--python", "python3", "--cuda", "13", "--with-tests",
           env=env, DRY_RUN="1")  # fmt: skip
    assert f"+ {venv}/bin/pip install -e '{REPO}[cuda13,hf,test]'" in p.stdout
    assert "expected 12 or 13" in sh("gpu_setup.sh", "--cuda", "11", env=env, rc=2).stderr
