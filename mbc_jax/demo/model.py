"""The demo's model: a tiny GPT-Neo whose architecture ships as `tiny_gpt_neo.json` (a Hugging Face config.json).

GPT-Neo, 4 layers, hidden 128, 4 heads, alternating global / local attention (local window 32
tokens), 256 positions, MLP 4 x hidden, no dropout, LM head tied to the token embedding: about
0.8M parameters plus 128 per vocabulary entry. The file is field for field what
`transformers.GPTNeoConfig(...).save_pretrained` writes; only the vocabulary and special-token ids
come from the tokenizer trained at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = Path(__file__).with_name("tiny_gpt_neo.json")


def model_config(tokenizer: Any = None) -> dict:
    """The demo model's `config.json`: the shipped file, with vocab_size and the bos / eos / pad ids of
    `tokenizer` when given (a tokenizer trained on a small suite can have fewer than 2048 tokens)."""
    config = json.loads(CONFIG_FILE.read_text())
    if tokenizer is not None:
        config.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return config
