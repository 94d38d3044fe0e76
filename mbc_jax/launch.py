"""Process set-up that must happen before jax starts: transparent huge pages for XLA's buffers.

XLA:CPU takes each step's temporary buffers (gigabytes for a training step) fresh from malloc,
which serves them with mmap; every 4 KiB page is then faulted in and zeroed by the kernel on first
touch, every step. With glibc's `glibc.malloc.hugetlb=1` tunable those mappings are advised as
transparent huge pages (2 MiB), which cuts the faults 512-fold (the measured effect is in
`benchmarks/README.md`, "Measurements behind design choices").

glibc reads tunables only at process start, so `ensure_huge_pages()` re-executes the current
command once with the tunable added. It does nothing unless: Linux with glibc >= 2.35, the kernel's
THP mode is `madvise` (with `always` it is already on; with `never` it cannot be), the tunable is
not already set, and `MBC_JAX_HUGE_PAGES` is not `0`.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_would_help() -> bool:
    if sys.platform != "linux" or os.environ.get("MBC_JAX_HUGE_PAGES", "1") == "0":
        return False
    if "glibc.malloc.hugetlb" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    lib, version = platform.libc_ver()
    try:
        if lib != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
            return False
        with open(THP_MODE) as f:
            return "[madvise]" in f.read()
    except (OSError, ValueError):
        return False


def without_huge_pages(env: dict[str, str]) -> dict[str, str]:
    """A copy of `env` with this module's tunable taken out (any other glibc tunables kept)."""
    env = dict(env)
    rest = [t for t in env.pop("GLIBC_TUNABLES", "").split(":") if t and t != TUNABLE]
    if rest:
        env["GLIBC_TUNABLES"] = ":".join(rest)
    return env


def ensure_huge_pages() -> None:
    """Re-executes this process with huge pages for malloc, when that helps (see the module doc)."""
    if not huge_pages_would_help() or "jax" in sys.modules:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), TUNABLE)))
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
