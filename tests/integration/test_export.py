"""Export -> reload gives identical logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import FIXTURES, reference
from mbc_jax.models import export_model, load_model


@pytest.mark.parametrize("name", ["gpt_neo_tiny", "opt_projected_postln", "gpt2_tiny", "pythia_tiny"])
def test_export_round_trip(name, tmp_path, shared_dir):
    model = load_model(str(FIXTURES / name))
    export_model(model, tmp_path / "export")
    again = load_model(str(tmp_path / "export"))
    ref = reference(name)
    a = np.asarray(model.apply(ref["input_ids"], segment_ids=ref["attention_mask"]))
    b = np.asarray(again.apply(ref["input_ids"], segment_ids=ref["attention_mask"]))
    np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "export" / "config.json").read_text())["model_type"] == model.config.model_type
