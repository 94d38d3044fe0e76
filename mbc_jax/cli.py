"""The `mbc-jax` command line: one sub-command per module.

Each module that offers a command defines `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments and returning an exit code. Errors a user can act
on are raised as `UserError` and printed as one line (no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mbc_jax import UserError

# module path -> registered lazily so `mbc-jax --help` stays fast and a broken optional
# dependency of one command does not break the others.
COMMAND_MODULES = (
    "mbc_jax.commands.info",
    "mbc_jax.commands.score",
    "mbc_jax.commands.train",
    "mbc_jax.commands.export",
    "mbc_jax.commands.generate",
    "mbc_jax.commands.judge",
    "mbc_jax.commands.plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbc-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # command not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program (not called from Python): set up the process first
        from mbc_jax.launch import ensure_huge_pages

        ensure_huge_pages()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command != "plan":  # plan compiles for fake local devices; everything else may be multi-host
            from mbc_jax import distributed

            distributed.initialize()
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
