"""The huge-page launcher re-executes a process once, and a re-executed CLI runs normally."""

from __future__ import annotations

import os
import subprocess
import sys

from mbc_jax import launch


def test_cli_reexecutes_once_with_the_tunable_and_keeps_other_tunables():
    env = {k: v for k, v in os.environ.items() if k != "MBC_JAX_HUGE_PAGES"}
    env["GLIBC_TUNABLES"] = "glibc.malloc.check=0"
    probe = ("import os, sys; from mbc_jax.launch import ensure_huge_pages; ensure_huge_pages(); "
             "print(os.environ.get('GLIBC_TUNABLES'))")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    tunables = out.stdout.strip()
    assert tunables.startswith("glibc.malloc.check=0")
    with open(launch.THP_MODE) if os.path.exists(launch.THP_MODE) else open(os.devnull) as f:
        madvise = "[madvise]" in f.read()
    if madvise and sys.platform == "linux":
        assert tunables == "glibc.malloc.check=0:glibc.malloc.hugetlb=1"
    r = subprocess.run([sys.executable, "-m", "mbc_jax", "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "COMMAND" in r.stdout
