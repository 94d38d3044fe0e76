"""The Trainer on the demo data: MBC's incremental scoring batches, bucketed train batches, the
packed train step's loss, dropout as a function of (seed, step), and a batch larger than the data."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import TINY_RUN
from mbc_jax import UserError
from mbc_jax import config as config_lib

# ------------------------------------------------------------------ MBC's scoring batches


def test_incremental_refresh_fills_the_batches_it_needs(tmp_path):
    """The stalest fraction always, then the next stalest while they pack into no more batches."""
    from mbc_jax.assemble import create_trainer

    args = [f"out={tmp_path / 'r'}", *TINY_RUN, "sampler=mbc", "mbc.refresh=incremental", "mbc.refresh_fraction=0.1"]
    run = create_trainer(config_lib.load(None, args), log=lambda *a: None)
    n = len(run.data.train)
    run.sampler.set_perplexities(np.ones(n), step=0)
    run.sampler.set_perplexities(np.ones(n - 10), step=5, which=np.arange(10, n))  # 0..9 are stalest
    order = run.sampler.staleness_order()
    k = round(0.1 * n)
    which, batches = run.scorer.prefix_batches(run.data.train, order, k)
    np.testing.assert_array_equal(which, order[:len(which)])
    assert set(which[:10].tolist()) <= set(range(10)) and len(which) > k
    alone = run.scorer.batches([run.data.train[i] for i in order[:k]])
    assert len(batches) == len(alone)
    packed = sorted(int(i) for b in batches for i in b.record_index.ravel() if i >= 0)
    assert packed == list(range(len(which)))


def test_train_batch_holds_every_drawn_record_in_bucketed_rows(tmp_path):
    from mbc_jax.assemble import create_trainer
    from mbc_jax.data import row_bucket
    from mbc_jax.sharding import batch_divisor

    run = create_trainer(config_lib.load(None, [f"out={tmp_path / 'r'}", *TINY_RUN]), log=lambda *a: None)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.choice(len(run.data.train), run.cfg.batch_size, replace=True)
        batch = run.train_batch(idx)
        used = int((batch.segment_ids != 0).any(1).sum())
        rows = row_bucket(used, len(idx), batch_divisor(run.model.mesh))
        assert batch.input_ids.shape == (rows, run.cfg.max_length)
        assert sorted(batch.record_index[batch.record_index >= 0].tolist()) == sorted(idx.tolist())


# ------------------------------------------------------------------ train step


_PACKED_LOSS_MODELS = {
    "gpt_neo": dict(model_type="gpt_neo", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, window_size=4,
                    attention_types=[[["global", "local"], 1]], max_position_embeddings=64),
    "llama_gqa": dict(model_type="llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64),
}


@pytest.mark.parametrize("family", sorted(_PACKED_LOSS_MODELS))
def test_packed_train_loss_equals_per_record_losses(family):
    """The loss of a packed batch equals the token-weighted mean of each record's loss alone (for a
    RoPE model too: positions restart per record)."""
    import jax.numpy as jnp

    from mbc_jax.data import Example, pack
    from mbc_jax.models import init_model
    from mbc_jax.sharding import make_mesh
    from mbc_jax.train import make_optimizer, make_train_step

    model = init_model(_PACKED_LOSS_MODELS[family], mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=0)
    rng = np.random.default_rng(0)
    examples = [Example(i, str(i), "", rng.integers(0, 64, n).astype(np.int32), np.arange(n) >= 3)
                for i, n in enumerate([20, 9, 30, 14, 5])]
    cfg = config_lib.load(None, ["learning_rate=1e-3"])
    tx, schedule = make_optimizer(cfg, 10)
    step = jax.jit(make_train_step(model.module, tx, schedule, "response"))

    def loss_of(exs, rows):
        (b,) = pack(exs, 64, rows_per_batch=rows)
        state = {"params": model.params, "opt_state": tx.init(model.params), "step": jnp.zeros((), jnp.int32)}
        _, m = step(state, {k: jnp.asarray(getattr(b, k)) for k in
                            ("input_ids", "segment_ids", "positions", "response_mask", "record_index")})
        return float(m["loss"]), float(m["targets"])

    packed_loss, packed_n = loss_of(examples, 2)
    alone = [loss_of([e], 1) for e in examples]
    assert packed_n == sum(n for _, n in alone)
    assert packed_loss == pytest.approx(sum(loss * n for loss, n in alone) / packed_n, rel=1e-5)


def test_tiny_llama_trains_sharded_with_remat():
    """Smoke test: a tiny Llama (GQA 4:2, RoPE) on data 2 x fsdp 2 x tensor 2 (tensor over the
    key/value heads) with full remat learns a fixed packed batch: 30 AdamW steps take its loss from
    about ln(64) (uniform) to less than 70% of that, and the parameters stay sharded as created."""
    import jax.numpy as jnp

    from mbc_jax.data import Example, pack
    from mbc_jax.models import init_model
    from mbc_jax.sharding import make_mesh
    from mbc_jax.train import make_optimizer, make_train_step

    model = init_model(_PACKED_LOSS_MODELS["llama_gqa"], mesh=make_mesh("2,2,2"), seed=0, remat="full")
    rng = np.random.default_rng(1)
    examples = [Example(i, str(i), "", rng.integers(0, 64, n).astype(np.int32), np.arange(n) >= 2)
                for i, n in enumerate([20, 9, 30, 14, 5, 25, 12, 18])]
    (b,) = pack(examples, 64, rows_per_batch=4)
    batch = {k: jnp.asarray(getattr(b, k)) for k in
             ("input_ids", "segment_ids", "positions", "response_mask", "record_index")}
    cfg = config_lib.load(None, ["learning_rate=3e-3"])
    tx, schedule = make_optimizer(cfg, 30)
    step = jax.jit(make_train_step(model.module, tx, schedule, "all"), donate_argnums=(0,))
    state = {"params": model.params, "opt_state": tx.init(model.params), "step": jnp.zeros((), jnp.int32)}
    spec = model.params["layers"]["attn"]["k"]["kernel"].sharding.spec
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    assert abs(losses[0] - np.log(64)) < 0.3 and losses[-1] < 0.7 * losses[0]
    assert state["params"]["layers"]["attn"]["k"]["kernel"].sharding.spec == spec


def test_train_step_dropout_is_a_function_of_seed_and_step(tmp_path):
    """`dropout=` reaches the model; the train step's masks depend on (seed, step) only, so a
    resumed run replays them; a rate of 0 is the deterministic step."""
    import functools

    import jax.numpy as jnp

    from mbc_jax.assemble import create_trainer
    from mbc_jax.train import make_train_step, model_runtime

    assert "resid_dropout" not in model_runtime(config_lib.load(None, []))  # default: the model's own rates
    run = create_trainer(config_lib.load(None, [f"out={tmp_path / 'r'}", *TINY_RUN, "dropout=0.1"]),
                         log=lambda *a: None)
    mc = run.model.module.cfg
    assert (mc.embed_dropout, mc.attention_dropout, mc.resid_dropout) == (0.1, 0.1, 0.1)
    b = run.train_batch(np.arange(8))
    batch = {k: jnp.asarray(getattr(b, k)) for k in
             ("input_ids", "segment_ids", "positions", "response_mask", "record_index")}

    @functools.cache
    def compiled(module, seed):
        return jax.jit(make_train_step(module, run.tx, run.schedule, "response", seed=seed))

    def loss(module, step, seed=0):
        state = {"params": run.model.params, "opt_state": run.tx.init(run.model.params),
                 "step": jnp.asarray(step, jnp.int32)}
        return float(compiled(module, seed)(state, batch)[1]["loss"])

    m = run.model.module
    assert loss(m, 3) == loss(m, 3)
    assert len({loss(m, 3), loss(m, 4), loss(m, 3, seed=1)}) == 3
    no_drop = m.clone(cfg=mc.replace(embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0))
    assert loss(no_drop, 3) == loss(no_drop, 4) != loss(m, 3)


def test_batch_larger_than_data(tmp_path):
    from mbc_jax.assemble import create_trainer

    cfg = config_lib.load(None, [f"out={tmp_path / 'r'}", "init=random", "demo_records=40", "val_fraction=0",
                                 "batch_size=64"])
    with pytest.raises(UserError, match="batch_size: 64 is larger than the 40 training records"):
        create_trainer(cfg, log=lambda *a: None)


def test_records_with_nothing_to_train_are_never_drawn_nor_counted_and_are_listed(tmp_path):
    """Issue 28: under loss_on: response a record whose response truncation cut away entirely is left out of
    training: MBC never draws it, N / epochs / k exclude it, and the run folder lists it by category."""
    import csv
    import json

    from mbc_jax.assemble import create_trainer

    rows = [{"instruction": f"say item {i}", "context": "", "response": f"item {i} is here", "category": "open_qa"}
            for i in range(34)]
    long_context = " ".join(["the"] * 200)  # far past max_length 64: the response is cut away
    rows += [{"instruction": f"summarize {i}", "context": long_context, "response": "short",
              "category": "summarization"} for i in range(6)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r"
    cfg = config_lib.load(None, [f"out={out}", "model=demo", "init=random", f"data={data}", "val_fraction=0",
                                 "loss_on=response", "sampler=mbc", "epochs=2", "batch_size=8", "max_length=64",
                                 "log_every=2", "mesh=1,1,1", "mbc.k=0"])
    lines = []
    run = create_trainer(cfg, log=lines.append)
    assert len(run.data.train) == 34 and run.epoch_steps == 5 and run.mbc_k == 5
    assert run.total_steps == 9  # ceil(2 epochs x 34 records / 8)
    assert any("left out of training, no response target after truncation: 6 records (summarization 6)" in x
               for x in lines)
    summary = run.train()
    assert summary["train_records"] == 34 and summary["targets"]["no_target_by_category"] == {"summarization": 6}
    listed = list(csv.DictReader(open(out / "no_target.csv")))
    assert sorted(r["id"] for r in listed) == sorted(str(i) for i in range(34, 40))
    assert {r["category"] for r in listed} == {"summarization"} and {r["response_tokens"] for r in listed} == {"0"}
    drawn = {r["id"] for r in csv.DictReader(open(out / "sampling.csv")) if int(r["draws"])}
    assert drawn and not drawn & {r["id"] for r in listed}  # MBC drew only trainable records
    assert sum(int(r["draws"]) for r in csv.DictReader(open(out / "sampling.csv"))) == 9 * 8
    snapshot = list(csv.DictReader(open(out / "memorization" / "step_00000009.csv")))
    assert not {r["id"] for r in snapshot} & {r["id"] for r in listed}  # the figures' inputs leave them out


def test_mbc_refresh_records_its_weights_health_and_warns_on_a_collapse(tmp_path):
    """Issue 29: at every refresh, the effective sample size (count and share of N), the largest weight, the top
    1%'s share and the distinct records drawn go to mbc_health.jsonl; a one-record collapse prints one warning."""
    import json

    import numpy as np

    from mbc_jax.assemble import create_trainer
    from mbc_jax.samplers import weight_health
    from mbc_jax.train import health_warning

    cfg = config_lib.load(None, [f"out={tmp_path / 'r'}", *TINY_RUN, "sampler=mbc", "epochs=1", "checkpoint_every=0"])
    lines: list[str] = []
    run = create_trainer(cfg, log=lines.append)
    run.train()
    refreshes = [json.loads(x) for x in (tmp_path / "r" / "mbc_health.jsonl").read_text().splitlines()]
    assert [r["step"] for r in refreshes] == list(range(0, run.total_steps, run.mbc_k))
    n = len(run.data.train)
    for r in refreshes:
        assert 1 <= r["ess"] <= n and r["ess_share"] == pytest.approx(r["ess"] / n)
        assert 1 / n <= r["max_weight"] <= 1 and r["max_weight"] <= r["top1pct_share"] <= 1
    assert refreshes[0]["distinct_drawn"] == 0 and not any(x.startswith("warning: step") for x in lines)
    ppl = np.full(n, 2.0)
    ppl[5] = 1e6  # one record holds almost all the weight, as a 3-token response of perplexity 13,029 did
    run.sampler.set_perplexities(ppl, step=0)
    warned = health_warning(0, weight_health(run.sampler.probabilities(), run.sampler.counts), run.sampler,
                            run.data.train)
    assert warned.startswith("warning: step 0: MBC's weights are concentrated")
    assert f"{run.data.train[5].id} (p 1.00, perplexity 1e+06" in warned
