"""Test set-up: 8 virtual CPU devices for the sharding tests, the shared oracle paths, and the
fixtures and helpers that tests in unit/ and integration/ both use (one copy of each, here)."""

import json
import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mbc_jax import demo as D  # noqa: E402
from mbc_jax.data import Example  # noqa: E402
from mbc_jax.generate import SamplingConfig, generate  # noqa: E402
from mbc_jax.models import init_model, load_model  # noqa: E402
from mbc_jax.sharding import make_mesh  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "hf"
FIXTURE_NAMES = ("gpt_neo_tiny", "gpt_neo_tiny_sharded", "opt_tiny", "opt_projected_postln", "gpt2_tiny", "pythia_tiny",
                 "llama_gqa_tiny", "qwen2_tiny")
TOKENIZER_DIR = SHARED / "tokenizers" / "gpt-neo-125M"
BENCH = SHARED / "bench" / "dolly256_gptneo.jsonl"

# The integration files that take longest (seconds of worker time under `pytest -n 2`, measured 2026-12-04),
# collected first so that pytest-xdist's whole-file scheduling (`--dist loadfile`, pyproject.toml) starts them
# early and the short files fill in around them, instead of one long file running alone at the end.
HEAVY_FILES = ("test_resume.py", "test_model_runtime.py", "test_multihost.py", "test_trainer.py",
               "test_experiments.py", "test_url_run_folder.py", "test_checkpoints.py", "test_select.py",
               "test_reproduce_real.py", "test_score_resume.py", "test_plan_health.py", "test_smollm2.py")


SHUFFLE_ENV = "MBC_JAX_SHUFFLE_FILES"  # a seed: the test files in a shuffled order (tests in a file keep theirs)


def pytest_collection_modifyitems(session, config, items):
    """Heaviest integration files first (HEAVY_FILES' order); every other test keeps its collected order.

    With MBC_JAX_SHUFFLE_FILES=SEED the files run in a seeded random order instead, to show that the suite
    passes in any file order (no test depends on what an earlier file left in the process):
    `MBC_JAX_SHUFFLE_FILES=3 python -m pytest -q -n 0 -p no:randomly`.
    """
    seed = os.environ.get(SHUFFLE_ENV)
    if seed is not None:
        files = sorted({item.path for item in items})
        perm = np.random.default_rng(int(seed)).permutation(len(files))
        rank = {files[j]: position for position, j in enumerate(perm)}
        items.sort(key=lambda item: rank[item.path])
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # None on pytest-xdist workers
            reporter.write_line(f"{SHUFFLE_ENV}={seed}: " + ", ".join(files[j].name for j in perm))
        return
    rank = {name: i for i, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: ties keep their order


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's cache (the demo base lives there): one per test session."""
    os.environ["MBC_JAX_CACHE"] = str(tmp_path_factory.mktemp("mbc-jax-cache"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared oracle folder) is not present")
    return SHARED


# ---------------------------------------------------------------------- models


def reference(name: str):
    return np.load(FIXTURES / name.replace("_sharded", "") / "reference.npz")


def real_max_err(logits, ref) -> float:
    mask = ref["attention_mask"].astype(bool)
    return float(np.abs(np.asarray(logits) - ref["logits"])[mask].max())


def _padded_batch(vocab: int, lengths=(29, 17, 8), seed: int = 0):
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(3, vocab, n)
        mask[b, :n] = 1
    return ids, mask


# ------------------------------------------------------------------------ data


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------- scoring


FIXTURE_MODELS = ("gpt_neo_tiny", "opt_tiny", "opt_projected_postln", "gpt2_tiny", "pythia_tiny", "llama_gqa_tiny",
                  "qwen2_tiny")


def fixture_examples(name: str) -> tuple[list[Example], dict]:
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    examples = []
    for b, row in enumerate(ref["input_ids"]):
        n = int(ref["attention_mask"][b].sum())
        examples.append(Example(b, f"r{b}", "", row[:n].astype(np.int32), np.arange(n) >= ref["prompt_lens"][b]))
    return examples, ref


def assert_matches_reference(get, ref) -> None:
    np.testing.assert_allclose(get("perplexity"), ref["record_ppl"], rtol=1e-4)
    np.testing.assert_allclose(get("response_perplexity"), ref["record_response_ppl"], rtol=1e-4)
    np.testing.assert_array_equal(np.float32(get("exact_match")), ref["record_exact_match"])
    np.testing.assert_array_equal(np.float32(get("response_exact_match")), ref["record_response_exact_match"])
    np.testing.assert_allclose(get("entropy"), ref["record_tf_entropy"], rtol=1e-4)


def random_examples(n: int, vocab: int, seed: int = 0, max_len: int = 60) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(2, max_len))
        prompt = int(rng.integers(1, length))
        out.append(Example(i, str(i), "", rng.integers(0, vocab, length).astype(np.int32), np.arange(length) >= prompt))
    return out


TINY = dict(model_type="gpt_neo", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, window_size=6,
            attention_types=[[["global", "local"], 1]], max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_model():
    return init_model(TINY, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=1)


# A RoPE family with grouped-query attention (4 query heads on 2 key/value heads) and a window (6)
# below the sequence length: the same vocabulary as TINY, so the layout tests run on both.
TINY_ROPE = dict(model_type="mistral", vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64, sliding_window=6,
                 rope_parameters=dict(rope_type="default", rope_theta=100.0))


@pytest.fixture(scope="module")
def tiny_rope_model():
    return init_model(TINY_ROPE, mesh=make_mesh("1,1,1", jax.devices()[:1]), seed=1)


# ------------------------------------------------------------------ generation


N = 12  # new tokens, as the fixtures' greedy_continuation
GREEDY = SamplingConfig(greedy=True, repetition_penalty=1.0, max_new_tokens=N, ignore_eos=True)


def prompt_set(ref) -> list[np.ndarray]:
    """The fixture prompt with a longer and a shorter one (different left padding in one batch)."""
    return [ref["greedy_prompt"], ref["input_ids"][1][:20], ref["input_ids"][2][:3]]


@pytest.fixture(scope="module")
def neo(shared_dir):
    return load_model(str(FIXTURES / "gpt_neo_tiny"))


@pytest.fixture(scope="module")
def neo_greedy(neo):
    return generate(neo, prompt_set(reference("gpt_neo_tiny")), GREEDY)


@pytest.fixture(scope="module")
def tokenizer(shared_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def tiny_neo_dir(tmp_path_factory, tokenizer):
    """A tiny random-weight GPT-Neo (2 layers, width 32, 64 positions) with the real GPT-Neo tokenizer, exported as
    an HF folder (the generate tests)."""
    from mbc_jax.models import export_model, init_model

    config = dict(model_type="gpt_neo", vocab_size=50257, hidden_size=32, num_layers=2, num_heads=2,
                  window_size=8, attention_types=[[["global", "local"], 1]], max_position_embeddings=64,
                  intermediate_size=64, activation_function="gelu_new", bos_token_id=50256, eos_token_id=50256)
    model = init_model(config, seed=0)
    model.tokenizer = tokenizer
    return export_model(model, tmp_path_factory.mktemp("tiny_neo"))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------- training runs


# init=random: the mechanics under test need no pretrained base (test_demo_base.py tests that path)
TINY_RUN = ["model=demo", "init=random", "data=demo", "demo_records=64", "epochs=2", "batch_size=8",
            "checkpoint_every=4", "log_every=2", "learning_rate=3e-3", "max_length=256", "keep_checkpoints=2",
            "mesh=1,1,1"]


# ------------------------------------------------------------------------ demo


COUNTS_600 = {
    "open_qa": 120,
    "classification": 100,
    "closed_qa": 80,
    "rewriting": 70,
    "information_extraction": 60,
    "summarization": 50,
    "brainstorming": 60,
    "creative_writing": 60,
}


@pytest.fixture(scope="module")
def suite() -> list[dict]:
    return D.generate_suite()


# ----------------------------------------------------------------------- judge


SECRET = "sk-test-DO-NOT-LEAK-4f9c2e7a1b"


# the judge's tests run without the caller's OpenAI settings: pytestmark = pytest.mark.usefixtures("_no_key")
@pytest.fixture
def _no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# ----------------------------------------------------------------------- trackers


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:  # TFRecord's masking of the CRC32C
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        value |= (buf[i] & 0x7F) << shift
        shift, i = shift + 7, i + 1
        if not buf[i - 1] & 0x80:
            return value, i


def _proto_fields(buf: bytes):
    """(field number, value) of a protobuf message: int for varints, bytes otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        else:
            size = {1: 8, 5: 4}[wire]
            v, i = buf[i:i + size], i + size
        yield num, v


def read_tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalars in a TensorBoard folder, read without TensorBoard: the TFRecord
    framing (length, masked CRC32C of it, data, masked CRC32C of it; both checked) and the Event protos
    decoded by hand (event.proto: wall_time 1, step 2, summary 5 -> value 1 -> tag 1 / simple_value 2,
    session_log 7 -> status 1). Files in the order they were started; a SessionLog START (1) at step S
    drops what earlier files logged at steps >= S, as TensorBoard's purge does."""
    import struct

    files = []
    for path in sorted(Path(folder).glob("events.*")):
        raw, events, i = path.read_bytes(), [], 0
        while i < len(raw):
            header = raw[i:i + 8]
            (n,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[i + 8:i + 12])[0] == _masked_crc(header), path
            data = raw[i + 12:i + 12 + n]
            assert struct.unpack("<I", raw[i + 12 + n:i + 16 + n])[0] == _masked_crc(data), path
            events.append(dict(_proto_fields(data)))
            i += 16 + n
        files.append((struct.unpack("<d", events[0][1])[0], events))
    out: dict[str, dict[int, float]] = {}
    for _, events in sorted(files, key=lambda f: f[0]):
        for ev in events:
            step = ev.get(2, 0)
            if 7 in ev and dict(_proto_fields(ev[7])).get(1) == 1:
                for series in out.values():
                    for s in [s for s in series if s >= step]:
                        del series[s]
            for num, value in (_proto_fields(ev[5]) if 5 in ev else []):
                if num == 1:
                    fields = dict(_proto_fields(value))
                    out.setdefault(fields[1].decode(), {})[step] = struct.unpack("<f", fields[2])[0]
    return out
