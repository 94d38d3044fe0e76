"""The shipped paper configs (experiments/configs/): each loads; its model's built-in config.json has
the published parameter count; the disk its header promises is the hand count; each MBC config's
uniform twin differs only in the sampler; and the new families' configs plan on a 4-device FSDP mesh
with their model shrunk to a tiny one of the same family and shorter batches (the CPU compile of the
paper's 32 x 1,024 batch takes twice as long; the full models' plans, minutes on 2 cores, are in
tpu_setup/README.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mbc_jax import config as config_lib
from mbc_jax.checkpoints import checkpoint_schedule
from mbc_jax.cli import main as cli
from mbc_jax.commands.plan import model_config
from mbc_jax.models import config_from_hf

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"
CPU_SCALES = ("demo.yaml", "smollm2_135m_real.yaml")  # the tiny and real scales of reproduce: not the paper's epochs
PAPER = sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in CPU_SCALES)
GIB = 1 << 30
PUBLISHED = {  # parameter counts of the hub checkpoints (their safetensors headers / model cards)
    "EleutherAI/gpt-neo-125m": 125_198_592, "EleutherAI/gpt-neo-2.7B": 2_651_307_520,
    "EleutherAI/pythia-1.4b": 1_414_647_808, "meta-llama/Llama-3.2-1B": 1_235_814_400,
}
DOLLY_TRAIN = 15_011 - round(15_011 * 0.05)  # databricks-dolly-15k after the configs' 5% validation split
DISK = re.compile(r"Disk for ~([\d,]+) training records: (\d+) GiB at most \((\d+) x ([\d.]+) GiB train states \+ "
                  r"(\d+) x ([\d.]+) GiB snapshots\), (\d+) GiB at the end")
# the sizes that shrink a model to a tiny one of its family (every other field stays the published one)
TINY = {"gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=128),
        "llama": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=8, vocab_size=128)}


def header(path: Path) -> str:
    return " ".join(line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#"))


def test_the_paper_configs_are_the_expected_set():
    names = {p.name for p in PAPER}
    assert {"pythia_1p4b_mbc_lr1e-5.yaml", "pythia_1p4b_uniform_lr1e-5.yaml", "llama_3p2_1b_mbc_lr1e-5.yaml",
            "llama_3p2_1b_uniform_lr1e-5.yaml", "gpt_neo_2p7b_mbc_lr1e-5.yaml"} <= names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_config_loads_with_the_papers_optimizer_and_its_models_published_shape(path):
    cfg = config_lib.load(str(path), [])
    # Section 4: AdamW (0.9, 0.999), no weight decay, no warmup, linear decay to 0, 15 epochs; Algorithm 1's MBC
    assert (cfg.b1, cfg.b2, cfg.weight_decay, cfg.warmup_steps, cfg.end_learning_rate, cfg.epochs) == (
        0.9, 0.999, 0.0, 0, 0.0, 15.0)
    assert cfg.learning_rate in (1e-5, 5e-5) and cfg.sampler in ("mbc", "uniform")
    assert (cfg.mbc.floor, cfg.mbc.power, cfg.mbc.refresh, cfg.mbc.k) == (0.0, 1.0, "full", 0)
    hf, source = model_config(cfg, None)
    assert source.startswith("built-in")  # offline: the shapes ship with the package
    assert config_from_hf(hf).num_params() == PUBLISHED[cfg.model]
    assert cfg.max_length <= config_from_hf(hf).max_position_embeddings


@pytest.mark.parametrize("path", [p for p in PAPER if DISK.search(header(p))], ids=lambda p: p.stem)
def test_the_disk_in_the_header_is_the_hand_count(path):
    """Full state: float32 params + 2 AdamW moments + 3 int32 counters = 12 n + 12 bytes; snapshot: bfloat16
    params = 2 n; the latest 2 kept + step 0 + the one being written at the peak, one fewer at the end."""
    records, peak, n_full, full, n_snap, snap, end = DISK.search(header(path)).groups()
    assert f"--config experiments/configs/{path.name} " in header(path)  # its own plan command
    cfg = config_lib.load(str(path), [])
    n = config_from_hf(model_config(cfg, None)[0]).num_params()
    assert int(records.replace(",", "")) == DOLLY_TRAIN
    steps = len(checkpoint_schedule(cfg, DOLLY_TRAIN))
    assert steps == 16  # step 0 and the end of every epoch
    full_b, snap_b = 12 * n + 12, 2 * n
    assert (int(n_full), int(n_snap)) == (cfg.keep_checkpoints + 2, steps)
    assert float(full) == round(full_b / GIB, 1) and float(snap) == round(snap_b / GIB, 1)
    assert int(peak) == round((4 * full_b + 16 * snap_b) / GIB) and int(end) == round((3 * full_b + 16 * snap_b) / GIB)


@pytest.mark.parametrize("path", [p for p in PAPER if "_mbc" in p.name], ids=lambda p: p.stem)
def test_each_mbc_config_has_a_uniform_twin_differing_only_in_the_sampler(path):
    twin = path.with_name(path.name.replace("_mbc", "_uniform"))
    assert twin.is_file()
    assert path.read_text().replace("_mbc", "_uniform").replace("sampler: mbc", "sampler: uniform") == twin.read_text()


@pytest.mark.parametrize("name", ["pythia_1p4b_mbc_lr1e-5.yaml", "llama_3p2_1b_mbc_lr1e-5.yaml"])
def test_new_family_config_plans_with_a_tiny_model_of_its_family(name, tmp_path, capsys):
    cfg = config_lib.load(str(CONFIGS / name), [])
    hf = model_config(cfg, None)[0]
    tiny = {**hf, **TINY[hf["model_type"]]}
    (tmp_path / "config.json").write_text(json.dumps(tiny))
    numbers = tmp_path / "plan.json"
    rc = cli(["plan", "--config", str(CONFIGS / name), "--mesh", "1,-1,1", "--devices", "4", "--device-memory", "32",
              "--model-config", str(tmp_path), "--train-records", str(DOLLY_TRAIN), "--json", str(numbers),
              "max_length=128", "score_tokens_per_batch=1024"])
    assert rc == 0 and "device memory 32 GiB: fits" in capsys.readouterr().out
    plan = json.loads(numbers.read_text())
    n = config_from_hf(tiny).num_params()
    assert plan["parameters"] == n and plan["mesh"] == "data=1 x fsdp=4 x tensor=1"
    assert (plan["dtype"], plan["param_dtype"], plan["remat"]) == ("bfloat16", "float32", "full")
    assert plan["train_batch"] == [32, 128] and plan["score_batch"][:2] == [1024 // 128, 128]
    # float32 params, 4 n bytes in all, sharded over fsdp 4: about n bytes per device (plus the replicated
    # norms and biases), far from a whole copy
    assert n <= plan["per_device"]["parameters"] < 2 * n
    disk = plan["disk"]
    assert (disk["checkpoint_steps"], disk["full_states_peak"], disk["snapshot_dtype"]) == (16, 4, "bfloat16")
    assert disk["peak_bytes"] == 4 * (12 * n + 12) + 16 * 2 * n and disk["end_bytes"] == 3 * (12 * n + 12) + 16 * 2 * n


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_every_paper_config_clips_gradients_at_1_and_says_why(path):
    """Issue 28: grad_clip 1.0, the HF Trainer's max_grad_norm default, stated in the header as an inference."""
    assert config_lib.load(str(path), []).grad_clip == 1.0
    assert "our inference, not a fact from the paper" in header(path) and "max_grad_norm default is 1.0" in header(path)


BATCH4 = sorted(CONFIGS.glob("gpt_neo_2p7b_*_batch4.yaml"))


def test_the_implied_batch_configs_exist_for_both_rates_and_samplers():
    assert [p.name for p in BATCH4] == [f"gpt_neo_2p7b_{s}_lr{lr}_batch4.yaml" for s in ("mbc", "uniform")
                                        for lr in ("1e-5", "5e-5")]


@pytest.mark.parametrize("path", BATCH4, ids=lambda p: p.stem)
def test_implied_batch_config_takes_4_records_per_step_and_checkpoints_every_5000(path):
    """Section 2's checkpoints every 5,000 steps; about 3-4 records per optimizer step on ~10k records."""
    cfg = config_lib.load(str(path), [])
    twin = config_lib.load(str(path.with_name(path.name.replace("_batch4", ""))), [])
    assert cfg.batch_size * cfg.grad_accum == 4 and cfg.checkpoint_every == 5000
    assert config_lib.differences(twin, cfg) == ["batch_size: 32 -> 4", "checkpoint_every: 0 -> 5000"]
    assert cfg.out == twin.out + "_batch4"
    steps = checkpoint_schedule(cfg, DOLLY_TRAIN)
    assert steps == [*range(0, 53_475, 5000), 53_475]  # 14,260 records x 15 epochs / 4 = 53,475 steps
    assert "53,475 optimizer steps" in header(path)
