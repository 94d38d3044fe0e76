"""Tests for mbc_jax/cli.py: every listed command module registers, and a broken one is an error."""

from __future__ import annotations

import pytest

from mbc_jax import cli


def test_every_command_module_registers():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"info", "score", "train", "export", "demo", "generate", "judge", "select", "plan"}


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "mbc_jax.commands.no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="mbc_jax.commands.no_such_command"):
        cli.build_parser()
