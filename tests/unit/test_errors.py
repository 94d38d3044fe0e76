"""Tests for mbc_jax/errors.py: one mapping of errors to exit codes for every program."""

from __future__ import annotations

import pytest

from mbc_jax import UserError, exit_code


def test_exit_code_maps_user_errors_and_interrupts(capsys):
    assert exit_code(lambda: None) == 0
    assert exit_code(lambda: 1) == 1

    def bad_input():
        raise UserError("data.jsonl:3: text: empty; fill it in or drop the record")

    def ctrl_c():
        raise KeyboardInterrupt

    assert exit_code(bad_input) == 2
    assert capsys.readouterr().err == "error: data.jsonl:3: text: empty; fill it in or drop the record\n"
    assert exit_code(ctrl_c) == 130
    assert capsys.readouterr().err == "interrupted\n"
    assert exit_code(ctrl_c, interrupted="interrupted; rerun to resume") == 130
    assert capsys.readouterr().err == "interrupted; rerun to resume\n"


def test_exit_code_lets_bugs_through():
    def bug():
        raise ZeroDivisionError("a bug, not bad input")

    with pytest.raises(ZeroDivisionError):
        exit_code(bug)
