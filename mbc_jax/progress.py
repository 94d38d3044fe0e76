"""The one progress bar (tqdm on stderr) that the library, the experiments and the CLI all open.

On a terminal it is tqdm's redrawn bar. When stderr is a file or a pipe (a batch job's log) it is one plain line
every `MBC_JAX_PROGRESS_SECONDS` seconds (default 30) and one at the end: done/total, percent, elapsed<ETA,
rate and the caller's postfix (e.g. tokens/s), so a log shows a long job moving without carriage-return spam.
"""

from __future__ import annotations

import os
import sys
from typing import Any

SECONDS_ENV = "MBC_JAX_PROGRESS_SECONDS"
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class LineWriter:
    """A file for tqdm that turns its carriage-return redraws into whole lines (the empty ones dropped)."""

    def __init__(self, stream: Any):
        self.stream, self.last = stream, ""

    def write(self, s: str) -> None:
        text = s.replace("\r", "").rstrip()
        if text and text != self.last:  # the closing redraw repeats the last line
            self.stream.write(text + "\n")
            self.last = text

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int | None, desc: str, unit: str = "rec", *, initial: int = 0, show: bool | None = None
                 ) -> Any:
    """A tqdm bar on stderr. `show`: None draws it on a terminal and writes a line every few seconds otherwise
    (`MBC_JAX_PROGRESS_SECONDS`, 0 for none), True always draws it, False never shows anything."""
    from tqdm.auto import tqdm  # looked up at each call, so a test can substitute tqdm.auto.tqdm

    if show is None and not _is_terminal(sys.stderr):
        seconds = float(os.environ.get(SECONDS_ENV) or 30)
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=LineWriter(sys.stderr),
                    disable=seconds <= 0, mininterval=seconds, maxinterval=seconds, miniters=1, ascii=True,
                    bar_format=LINE_FORMAT if total else LINE_FORMAT_NO_TOTAL)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
                disable=None if show is None else not show)
