"""How numbers are written in tables, logs and file names (one copy of each rule)."""

from __future__ import annotations

import math


def fmt(x: float | None, digits: int = 3, *, missing: str = "n/a", short_from: float | None = None) -> str:
    """`x` with `digits` decimals; `missing` for None and for a float NaN or infinity. With `short_from`,
    a value of at least that magnitude (infinity included) is written in 3 significant digits instead."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return missing
    if short_from is not None and abs(x) >= short_from:
        return f"{x:.3g}"
    if isinstance(x, float) and math.isinf(x):
        return missing
    return f"{x:.{digits}f}"


def fmt_lr(lr: float) -> str:
    """A learning rate as run folders, labels and reports name it: 1e-05 -> "1e-5", 5e+00 -> "5e+0"."""
    return f"{lr:.0e}".replace("e-0", "e-").replace("e+0", "e+")
