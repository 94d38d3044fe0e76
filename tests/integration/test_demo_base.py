"""mbc_jax/demo/base.py: the pretrained demo base (a tiny recipe here: a few steps): a normal HF folder,
deterministic, cached by seed and code version, rebuilt when missing, built atomically; and
`model: demo` fine-tuning from it (init=random: the weightless folder, as before)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from mbc_jax import config as config_lib
from mbc_jax.demo import base

TINY = dataclasses.replace(base.PRETRAIN, steps=3, batch_size=8, warmup_steps=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    return base.build_base(root / "a", 0, TINY, log=lambda m: None)


def test_base_is_a_normal_hf_folder_with_its_recipe(built):
    from transformers import AutoTokenizer, GPTNeoConfig

    assert base.is_complete(built)
    config = GPTNeoConfig.from_pretrained(str(built))
    assert (config.num_layers, config.hidden_size) == (4, 128)
    tok = AutoTokenizer.from_pretrained(str(built))
    assert len(tok) == config.vocab_size and tok.eos_token_id == 0
    info = json.loads((built / "pretrain.json").read_text())
    assert info["spec"]["steps"] == 3 and info["seed"] == 0 and info["code_version"] == base.code_version()
    lines = [json.loads(x) for x in (built / "pretrain_metrics.jsonl").read_text().splitlines()]
    assert info["final_loss"] == [x["loss_mean"] for x in lines if "loss_mean" in x][-1]
    assert not list(built.parent.glob("*.partial-*"))  # the build folder is gone


def test_deterministic_and_loads(built, tmp_path):
    from mbc_jax.models import load_model

    again = base.build_base(tmp_path / "b", 0, TINY, log=lambda m: None)
    assert (again / base.WEIGHTS).read_bytes() == (built / base.WEIGHTS).read_bytes()
    model = load_model(str(built))
    assert np.isfinite(np.asarray(model.params["embed_tokens"])).all()


def test_cache_reuse_rebuild_and_leftover_partial(tmp_path, monkeypatch):
    monkeypatch.setenv(base.CACHE_ENV, str(tmp_path / "cache"))
    target = base.base_dir(7, TINY)
    assert target.parent == tmp_path / "cache" / "demo-base" and target.name.startswith(f"7-{base.code_version()}")
    target.parent.mkdir(parents=True)
    (target.parent / f"{target.name}.partial-1").mkdir()  # a killed build's leftover
    logs: list[str] = []
    assert base.demo_base(7, TINY, log=logs.append) == target and base.is_complete(target)
    assert any("first use" in m for m in logs)
    logs.clear()
    assert base.demo_base(7, TINY, log=logs.append) == target and logs == []  # cached: nothing built
    (target / base.WEIGHTS).unlink()  # incomplete: rebuilt
    assert base.demo_base(7, TINY, log=logs.append) == target and base.is_complete(target) and logs


def test_model_demo_starts_from_the_base(built, tmp_path, monkeypatch):
    from mbc_jax import assemble
    from mbc_jax.models import load_model

    monkeypatch.setattr(assemble, "demo_base", lambda seed, log: built)
    common = [f"out={tmp_path / 'r'}", "demo_records=40", "val_fraction=0", "mesh=1,1,1"]
    trainer = assemble.create_trainer(config_lib.load(None, common), log=lambda m: None)
    want = load_model(str(built)).params
    got = trainer.model.params
    assert np.array_equal(np.asarray(got["embed_tokens"]), np.asarray(want["embed_tokens"]))
    rand = assemble.create_trainer(config_lib.load(None, [f"out={tmp_path / 'q'}", *common[1:], "init=random"]),
                                log=lambda m: None)
    assert not np.array_equal(np.asarray(rand.model.params["embed_tokens"]), np.asarray(want["embed_tokens"]))
