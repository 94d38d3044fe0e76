"""The `mbc-jax` command line: one sub-command per module.

Each module that offers a command defines `register(subparsers)`, which adds its parser and sets
`func` to a callable taking the parsed arguments and returning an exit code. Errors a user can act
on are raised as `UserError` and printed as one line (no traceback); see `mbc_jax.errors.exit_code`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import warnings

from mbc_jax import exit_code

# The modules that register the sub-commands, in `--help` order; one that fails to import is an error.
# `export` and `demo` are registered by commands/train.py.
COMMAND_MODULES = (
    "mbc_jax.commands.info",
    "mbc_jax.commands.score",
    "mbc_jax.commands.train",
    "mbc_jax.commands.generate",
    "mbc_jax.commands.judge",
    "mbc_jax.commands.select",
    "mbc_jax.commands.plan",
    "mbc_jax.commands.fetch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mbc-jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


class _NoTorchAdvisory(logging.Filter):
    """Drops transformers' import-time "PyTorch was not found ..." line: this package runs on JAX and uses
    transformers for tokenizers and configs only, so the advisory is noise to a user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("PyTorch was not found")


def quiet_transformers() -> None:
    """Installs the filter on transformers' logger (before transformers is imported; idempotent)."""
    logger = logging.getLogger("transformers")
    if not any(isinstance(f, _NoTorchAdvisory) for f in logger.filters):
        logger.addFilter(_NoTorchAdvisory())


# Warnings from the libraries underneath that a user cannot act on, filtered for the command's duration only
# (the caller's filters come back after it: `main` is also called from Python, in tests and notebooks).
QUIET_WARNINGS = (
    "Some donated buffers were not usable",  # JAX on CPU, which cannot donate: the train step donates its state
    "Sharding info not provided when restoring",  # orbax: we restore onto the mesh the checkpoint was saved with
)


def main(argv: list[str] | None = None) -> int:
    quiet_transformers()
    if argv is None:  # run as a program (not called from Python): set up the process first
        from mbc_jax.launch import ensure_huge_pages

        ensure_huge_pages()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        for message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        return exit_code(lambda: _run(args))


def _run(args: argparse.Namespace) -> int | None:
    # plan compiles for fake local devices and fetch runs no JAX; everything else may be multi-host
    if args.command not in ("plan", "fetch"):
        from mbc_jax import distributed

        distributed.initialize()
    return args.func(args)
