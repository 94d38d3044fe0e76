"""Errors a user can act on, and the exit codes the programs map errors to."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """An error caused by the user's input: printed as one clear line by the CLI, never a traceback."""


def exit_code(fn: Callable[[], int | None], *, interrupted: str = "interrupted") -> int:
    """Run a program's body and return its exit code: what `fn` returns (None -> 0); a UserError is
    printed as one `error: ...` line on stderr -> 2; Ctrl-C prints `interrupted` -> 130. Anything
    else propagates (a bug: its traceback is the useful report)."""
    try:
        return int(fn() or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
