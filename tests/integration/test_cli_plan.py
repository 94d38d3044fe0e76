"""`mbc-jax plan`: per-device bytes equal the analytic numbers, the verdict and exit code, built-in
shapes, the re-run with more fake devices than this process has, and the checkpoints' disk against a
hand count."""

from __future__ import annotations

import json

import pytest

from mbc_jax import config as config_lib
from mbc_jax.cli import main as cli
from mbc_jax.commands.plan import builtin_config, checkpoint_disk
from mbc_jax.models import config_from_hf

TINY = dict(model_type="gpt_neo", vocab_size=100, hidden_size=64, num_layers=2, num_heads=4, window_size=8,
            attention_types=[[["global", "local"], 1]], max_position_embeddings=64)
SMALL_RUN = ["batch_size=8", "max_length=64", "score_tokens_per_batch=512"]


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    return path


def analytic_param_bytes(fsdp: int) -> int:
    """float32 bytes per device: every weight with an `embed` dimension is split over fsdp; the
    LayerNorms and the MLP input bias (no `embed` dimension) are replicated."""
    cfg = config_from_hf(TINY)
    e, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    replicated = layers * 2 * 2 * e + 2 * e + layers * f  # ln_attn + ln_mlp (scale, bias), ln_final, fc_in bias
    sharded = cfg.num_params() - replicated
    assert sharded % fsdp == 0
    return 4 * (sharded // fsdp + replicated)


def test_bytes_per_device_are_analytic_and_too_little_memory_does_not_fit(tiny_config, tmp_path, capsys):
    numbers = tmp_path / "plan.json"
    rc = cli(["plan", "--mesh", "1,-1,1", "--devices", "8", "--model-config", str(tiny_config),
              "--device-memory", "0.001", "--json", str(numbers), *SMALL_RUN, "steps=10", "checkpoint_every=3",
              "keep_checkpoints=2"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "data=1 x fsdp=8 x tensor=1 on 8 devices" in out
    assert "device memory 0.001 GiB: does not fit" in out
    plan = json.loads(numbers.read_text())
    assert plan["fits"] is False and plan["peak_per_device"] > 0.001 * 2**30
    per = plan["per_device"]
    assert per["parameters"] == analytic_param_bytes(8)
    # AdamW: two moments shaped and sharded like the params, plus replicated int32 step counts
    assert 2 * per["parameters"] <= per["optimizer_state"] <= 2 * per["parameters"] + 16
    train = per["train_step"]
    # the compiled step's arguments are the state (params, moments, step) and this device's batch rows:
    # 1 of the 8 rows of 64 tokens (ids, segments, positions int32; response mask bool); record_index
    # only lends its shape to the step, so jit drops it
    assert train["arguments"] == per["parameters"] + per["optimizer_state"] + 4 + 64 * (3 * 4 + 1)
    assert train["aliased"] > 0.99 * (per["parameters"] + per["optimizer_state"])  # the donated state
    assert train["temporaries"] > 0 and plan["peak_per_device"] == max(
        train["peak"], per["scorer"]["peak"] + per["optimizer_state"])
    # disk: checkpoint steps 0, 3, 6, 9, 10; full state = float32 params + 2 moments + 3 int32 counters
    # (AdamW's, the schedule's, the step); at most keep 2 + step 0 + the one being written; 5 float32 snapshots
    n = config_from_hf(TINY).num_params()
    disk = plan["disk"]
    assert (disk["full_state_bytes"], disk["param_snapshot_bytes"]) == (12 * n + 12, 4 * n)
    assert disk["peak_bytes"] == 4 * (12 * n + 12) + 5 * 4 * n and disk["end_bytes"] == 3 * (12 * n + 12) + 5 * 4 * n
    assert f"needs {disk['peak_bytes'] / 2**20:.2f} MiB ({disk['peak_bytes']} bytes) = 4 x " in out


def test_more_devices_than_this_process_has_reruns(tiny_config, tmp_path, capfd):
    """pytest's JAX has 8 CPU devices: a 16-device plan runs in a fresh process (like a v5e-16 plan)."""
    numbers = tmp_path / "plan.json"
    rc = cli(["plan", "--mesh=2,-1,1", "--devices", "16", "--device-memory", "16", "--model-config", str(tiny_config),
              "--json", str(numbers), *SMALL_RUN])
    assert rc == 0 and "device memory 16 GiB: fits" in capfd.readouterr().out
    plan = json.loads(numbers.read_text())
    assert plan["devices"] == 16 and plan["mesh"] == "data=2 x fsdp=8 x tensor=1" and plan["fits"] is True
    assert plan["per_device"]["parameters"] == analytic_param_bytes(8)


def test_builtin_shapes_are_the_published_models():
    cfg = config_from_hf(json.loads(builtin_config("EleutherAI/gpt-neo-2.7B").read_text()))
    assert (cfg.num_params(), cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (2_651_307_520, 2560, 32, 20)
    assert cfg.layer_windows[:2] == (1 << 30, 256) and len(set(cfg.layer_windows)) == 2
    assert config_from_hf(json.loads(builtin_config("EleutherAI/gpt-neo-125m").read_text())).num_params() == 125_198_592
    assert builtin_config("facebook/opt-unknown") is None


@pytest.mark.parametrize("args, message", [
    (["--mesh", "1,-1,1"], "give --devices"),
    (["--mesh", "2,2,1", "--devices", "8"], "does not fit 8 devices"),
    (["--mesh", "1,1,1", "model=org/unknown-model"], "pass --model-config"),
])
def test_bad_input_is_one_line(args, message, capsys):
    assert cli(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_checkpoint_disk_by_hand(tiny_config):
    """bfloat16 compute -> bfloat16 snapshots; the checkpoint steps from --train-records or the demo's
    records; save_params: none; the paper's retention on more steps than it keeps."""
    import jax

    from mbc_jax.checkpoints import abstract_train_state
    from mbc_jax.models import abstract_params
    from mbc_jax.sharding import make_mesh
    from mbc_jax.train import make_optimizer

    mesh = make_mesh("1,1,1", jax.devices()[:1])
    abstract, shardings, _ = abstract_params(config_from_hf(TINY), mesh)
    params = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    abstract, shardings)
    n = config_from_hf(TINY).num_params()
    full = 12 * n + 12

    def disk(overrides, records=None):
        cfg = config_lib.load(None, overrides)
        return checkpoint_disk(cfg, abstract_train_state(make_optimizer(cfg, 10)[0], params, mesh), records)

    # 30 records, batch 8: 8 steps (ceil(2 * 30 / 8)), one checkpoint per ceil(30 / 8) = 4 steps: 0, 4, 8
    d = disk(["data=x.jsonl", "epochs=2", "dtype=bfloat16", "keep_checkpoints=2"], records=30)
    assert (d["checkpoint_steps"], d["snapshot_dtype"], d["param_snapshot_bytes"]) == (3, "bfloat16", 2 * n)
    assert d["peak_bytes"] == d["end_bytes"] == 3 * full + 3 * 2 * n  # 3 steps: retention deletes nothing
    # the paper's retention over 15 epoch checkpoints (+ step 0): 4 full states at the peak, 3 at the end
    d = disk(["data=x.jsonl", "epochs=15", "dtype=bfloat16", "keep_checkpoints=2"], records=32)
    assert d["checkpoint_steps"] == 16 and d["peak_bytes"] == 4 * full + 16 * 2 * n
    assert d["end_bytes"] == 3 * full + 16 * 2 * n
    # the demo: its demo_records; save_params: none writes no snapshots
    d = disk(["demo_records=40", "epochs=1", "checkpoint_every=2", "keep_checkpoints=1", "save_params=none"])
    assert d["train_records"] == 40 and d["checkpoint_steps"] == 4  # 5 steps (ceil(40 / 8)): 0, 2, 4, 5
    assert d["param_snapshots"] == 0 and d["peak_bytes"] == 3 * full and d["end_bytes"] == 2 * full
    # a dataset of unknown size: sizes per save only
    d = disk(["data=hf:some/data"])
    assert d["checkpoint_steps"] is None and d["full_state_bytes"] == full and "peak_bytes" not in d


TINY_LLAMA = dict(model_type="llama", vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64)


def test_gqa_model_plans_with_tensor_over_its_key_value_heads(tmp_path, capsys):
    """A Llama with 2 key/value heads plans on tensor 2 (its parameter count is that of the model
    built for real), and tensor 4 is a one-line error naming the key/value heads."""
    import jax

    from mbc_jax.models import init_model
    from mbc_jax.sharding import make_mesh

    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY_LLAMA))
    numbers = tmp_path / "plan.json"
    assert cli(["plan", "--mesh", "1,2,2", "--model-config", str(path), "--json", str(numbers), *SMALL_RUN]) == 0
    plan = json.loads(numbers.read_text())
    built = init_model(TINY_LLAMA, mesh=make_mesh("1,1,1", jax.devices()[:1]))
    assert plan["parameters"] == sum(x.size for x in jax.tree_util.tree_leaves(built.params))
    assert plan["per_device"]["train_step"]["temporaries"] > 0
    capsys.readouterr()
    assert cli(["plan", "--mesh", "1,1,4", "--model-config", str(path), *SMALL_RUN]) == 2
    err = capsys.readouterr().err
    assert "2 key/value heads ('heads') are not divisible by the tensor axis (4)" in err and "Traceback" not in err


def test_plan_with_a_tokenizer_counts_records_with_nothing_to_train_and_the_steps(tmp_path, capsys, shared_dir):
    """Issue 28: plan reads the config's data as training would: the records left out for want of a response
    target after truncation (by category), the cut responses, and the optimizer steps of the rest."""
    rows = [{"instruction": f"Name item {i}.", "context": "", "response": f"Item {i}.", "category": "open_qa"}
            for i in range(9)]
    rows += [{"instruction": "Summarize.", "context": "word " * 120, "response": "Short.", "category": "summarization"}
             for _ in range(3)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "vocab_size": 50257}))
    numbers = tmp_path / "plan.json"
    rc = cli(["plan", "--mesh", "1,-1,1", "--devices", "2", "--model-config", str(config), "--tokenizer",
              str(shared_dir / "tokenizers" / "gpt-neo-125M"), "--json", str(numbers), f"data={data}",
              "val_fraction=0", "loss_on=response", "batch_size=4", "epochs=2", "max_length=64",
              "score_tokens_per_batch=256"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "left out, no response target after truncation: 3 (summarization 3)" in out
    assert "optimizer steps: 5 (9 training records, from --tokenizer)" in out  # ceil(2 x 9 / 4)
    plan = json.loads(numbers.read_text())
    assert plan["data"]["train_records"] == 9 and plan["data"]["no_target_by_category"] == {"summarization": 3}
    assert plan["disk"]["total_steps"] == 5
