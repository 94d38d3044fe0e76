"""Tests for mbc_jax/cli.py: every listed command module registers, and a broken one is an error."""

from __future__ import annotations

import pytest

from mbc_jax import cli


def test_every_command_module_registers():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"info", "score", "train", "export", "demo", "generate", "judge", "select", "plan", "fetch"}


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "mbc_jax.commands.no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="mbc_jax.commands.no_such_command"):
        cli.build_parser()


def test_no_pytorch_advisory(tmp_path):
    """transformers says "PyTorch was not found ..." at import when torch is missing; the CLI drops that line
    (here torch is hidden from a fresh interpreter, with and without the CLI's filter)."""
    import subprocess
    import sys

    script = tmp_path / "notorch.py"
    script.write_text(
        "import importlib.util, sys\n"
        "find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda n, *a, **k: None if n.split('.')[0] == 'torch' else find(n, *a, **k)\n"
        "sys.modules['torch'] = None\n"
        "if sys.argv[1] == 'cli':\n"
        "    from mbc_jax.cli import quiet_transformers\n"
        "    quiet_transformers()\n"
        "import transformers\n"
        "transformers.AutoTokenizer\n"
    )
    run = lambda mode: subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True,  # noqa: E731
                                      timeout=300)
    plain, cli = run("plain"), run("cli")
    assert plain.returncode == 0 and cli.returncode == 0, plain.stderr + cli.stderr
    if "PyTorch was not found" not in plain.stderr:  # transformers 4.x stays silent when flax is installed
        pytest.skip("this transformers release prints no PyTorch advisory without torch")
    assert "PyTorch was not found" not in cli.stderr


def test_score_table_pools_exact_match_over_targets_as_eq_1():
    """Issue 28: the ALL row is Eq. 1 (matches / targets over all records), not the mean of per-record ratios."""
    from mbc_jax.commands.score import category_table, pooled

    rows = [dict(category="a", tokens=1, response_tokens=1, response_tokens_no_eos=0, exact_match=1.0,
                 response_exact_match=1.0, response_exact_match_no_eos=None, entropy=0.5, response_entropy=0.5,
                 perplexity=2.0, response_perplexity=2.0),
            dict(category="b", tokens=9, response_tokens=3, response_tokens_no_eos=2, exact_match=1 / 9,
                 response_exact_match=0.0, response_exact_match_no_eos=0.0, entropy=1.5, response_entropy=1.0,
                 perplexity=8.0, response_perplexity=9.0)]
    assert pooled(rows, "exact_match", "tokens") == pytest.approx(2 / 10)  # (1 + 1) matches / 10 targets
    assert pooled(rows, "response_exact_match", "response_tokens") == pytest.approx(1 / 4)
    assert pooled(rows, "response_exact_match_no_eos", "response_tokens_no_eos") == pytest.approx(0.0)
    assert pooled(rows, "entropy", "tokens") == pytest.approx((0.5 + 9 * 1.5) / 10)
    all_row = next(line for line in category_table(rows).splitlines() if line.lstrip().startswith("ALL"))
    assert all_row.split()[:4] == ["ALL", "2", "0.200", "0.250"]  # the mean of ratios would be 0.556 / 0.500
