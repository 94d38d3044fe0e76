"""The one progress bar (tqdm on stderr) that the library, the experiments and the CLI all open."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str, unit: str = "rec", *, initial: int = 0, show: bool | None = None) -> Any:
    """A tqdm bar on stderr. `show`: None draws it only when stderr is a terminal, True always, False never."""
    from tqdm.auto import tqdm  # looked up at each call, so a test can substitute tqdm.auto.tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=None if show is None else not show)
