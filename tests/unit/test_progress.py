"""The progress bar when stderr is not a terminal (issue 31): whole lines with done/total, rate and ETA."""

from __future__ import annotations

import io
import sys

from mbc_jax.progress import progress_bar


def test_a_bar_on_a_log_file_writes_whole_lines(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("MBC_JAX_PROGRESS_SECONDS", "0.000001")
    with progress_bar(4, "scoring") as bar:
        for _ in range(4):
            bar.update(1)
            bar.set_postfix_str("1234 tok/s", refresh=False)
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and len(lines) == len(set(lines))  # no redraws, no repeated closing line
    assert lines[0].startswith("scoring: 0/4 rec (0%)")
    assert lines[-1].startswith("scoring: 4/4 rec (100%)") and "1234 tok/s" in lines[-1] and "rec/s" in lines[-1]
    monkeypatch.setenv("MBC_JAX_PROGRESS_SECONDS", "0")
    err.truncate(0)
    with progress_bar(4, "quiet") as bar:
        bar.update(4)
    assert err.getvalue() == ""
