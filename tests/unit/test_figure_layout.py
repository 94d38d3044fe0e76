"""Pure pieces of Figures 3 and 8: which validation curve is the headline, the per-record plot's order
and the uniform level, by hand."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from experiments.common import UserError, trained_positions
from experiments.fig3_validation_perplexity import HEADLINE, SECONDARY
from experiments.fig8_sampling_frequency import record_order, uniform_level


def test_record_order_groups_categories_in_blocks_keeping_file_order():
    cats = ["qa", "sum", "qa", "brain", "sum", "qa"]
    # blocks in sorted order: brain (3), qa (0, 2, 5), sum (1, 4)
    assert record_order(cats).tolist() == [3, 0, 2, 5, 1, 4]
    assert record_order([]).tolist() == []


def test_uniform_level_is_draws_over_records():
    # 4 records, 2 epochs of a uniform sampler: each drawn twice
    assert uniform_level({"draws": np.array([2, 2, 2, 2])}) == 2.0
    # MBC with the same 8 draws: the level is still 8 / 4
    assert uniform_level({"draws": np.array([5, 0, 1, 2])}) == 2.0


def test_headline_follows_loss_on():
    assert HEADLINE == {"response": "val_response_perplexity", "full": "val_perplexity"}
    assert SECONDARY == {"response": "val_perplexity", "full": "val_response_perplexity"}
    run = SimpleNamespace(config={"loss_on": "response"}, path=Path("runs/x"))
    assert trained_positions(run) == "response"
    run.config = {"loss_on": "prompt"}
    with pytest.raises(UserError, match=r"runs/x/config.yaml: loss_on is 'prompt', expected one of response, full"):
        trained_positions(run)
