"""The demo's tokenizer: a small byte-level BPE trained at run time on the suite, as the template renders it,
and on the world's pretraining corpus (`corpus.build_corpus`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mbc_jax.data import Record, Template
from mbc_jax.demo.model import model_config

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Byte-level BPE target size: 256 byte symbols + 2 special tokens + merges. Large enough that
# nearly every word of the suite becomes a single token, small enough to keep the embedding tiny.
TOKENIZER_VOCAB_SIZE = 2048


def _training_texts(records: Iterable[dict], corpus: Iterable[dict] = ()) -> Iterable[str]:
    """The strings the data pipeline encodes for each record: its segments under the default `Template`;
    corpus documents come first, as text (without their end-of-text marker, a special token)."""
    for doc in corpus:
        yield doc["text"].replace(EOS_TOKEN, "")
    template = Template()
    for i, r in enumerate(records):
        turns = [("user", r["instruction"]), ("assistant", r["response"])]
        record = Record(index=i, id=str(i), category="", turns=turns, context=r["context"], schema="dolly")
        for text, _ in template.segments(record):
            yield text


def build_tokenizer(records: list[dict], out_dir: str | Path, vocab_size: int = TOKENIZER_VOCAB_SIZE,
                    corpus: Iterable[dict] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `records` (and the text-schema `corpus` documents), save it
    to `out_dir` and return it.

    GPT-2 style: bytes are mapped to 256 visible symbols and split by the GPT-2 regex before BPE,
    so any string encodes and decodes to itself (spaces, tabs and newlines included), and
    `" " + response` encodes as the response's words with their leading space. Ids 0 and 1 are
    `<|endoftext|>` (bos, eos and unk, as in GPT-Neo) and `<|pad|>`; no special token is added
    by `encode`. The result is a `transformers.PreTrainedTokenizerFast` that
    `AutoTokenizer.from_pretrained(out_dir)` loads; the same records give the same files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # on use: slow to import
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(records, corpus), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=model_config()["max_position_embeddings"],
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast
