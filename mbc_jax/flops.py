"""Model FLOPs per trained token and the devices' peak FLOP/s: the trainer's MFU."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

PEAK_TFLOPS = {  # dense bf16 per device, vendor figures
    "h100": 989.0, "h200": 989.0, "a100": 312.0, "l4": 121.0, "v100": 125.0,
    "tpu v4": 275.0, "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v5p": 459.0, "tpu v6": 918.0,
}


def peak_flops_per_device(cfg_peak: float) -> float:
    """`cfg_peak` TFLOP/s if set, else the vendor figure of the device kind; on a CPU (or an unknown
    kind) a float32 matmul is timed once."""
    if cfg_peak:
        return cfg_peak * 1e12
    kind = jax.devices()[0].device_kind.lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name in kind:
            return tflops * 1e12
    a = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(5):
        f(a).block_until_ready()
    return 5 * 2 * 1024**3 / (time.perf_counter() - t0)


def train_flops_per_token(model_cfg: Any, seq_len: int) -> float:
    """Forward + backward model FLOPs per token: 6 x matmul parameters + attention scores (q.k and
    probs.v over the query heads' width)."""
    matmul_params = model_cfg.num_params() - model_cfg.position_params
    width = model_cfg.num_heads * model_cfg.head_dim
    return 6.0 * matmul_params + 12.0 * model_cfg.num_layers * seq_len * width
