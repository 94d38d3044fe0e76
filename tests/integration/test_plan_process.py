"""`mbc-jax plan` run inside a process (a test, a notebook) leaves that process's JAX as it found it.

Issue 30, item 9: `plan --devices 4` used to set `jax_num_cpu_devices` and XLA_FLAGS when JAX had not
started yet, so every later test in the same pytest worker saw 4 CPU devices where it needs 8.
"""

import os
import subprocess
import sys

from conftest import REPO


def test_plan_in_process_leaves_jax_config_and_devices_unchanged(tmp_path):
    """A fresh interpreter, with the test environment's 8 CPU devices and JAX not yet started, runs plan on 4
    devices (with `--health`: the model loaded and scored in this process), then checks JAX's configuration,
    XLA_FLAGS and the device count it starts with."""
    script = f"""
import json, os, jax
from mbc_jax.cli import main
flags = os.environ["XLA_FLAGS"]
before = (jax.config.jax_platforms, jax.config.jax_num_cpu_devices)
rc = main(["plan", "--mesh", "1,-1,1", "--devices", "4", "--health", "--model-config", {str(REPO / "mbc_jax" / "demo" /
                                                                                  "tiny_gpt_neo.json")!r},
           "max_length=64", "batch_size=4", "steps=2", "checkpoint_every=1", "score_tokens_per_batch=256",
           "init=random", "demo_records=40"])  # --health: the model loaded and scored in this process too
after = (jax.config.jax_platforms, jax.config.jax_num_cpu_devices)
print(json.dumps({{"rc": rc, "same_config": before == after, "same_flags": flags == os.environ["XLA_FLAGS"],
                  "devices": len(jax.devices())}}))
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "same_config": True, "same_flags": True, "devices": 8}
