"""Answers to records: prompts built as training tokenizes them, the text of outputs, summaries."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mbc_jax import UserError
from mbc_jax.data import Template, tokenize
from mbc_jax.generate.decode import Generation


@dataclasses.dataclass
class Prompt:
    """What to generate from for one record, and what the output file says about it."""

    index: int
    id: str
    category: str
    ids: np.ndarray  # int32, the prompt tokens exactly as training tokenizes them
    text: str  # the prompt as text (what a judge reads)
    reference: str | None  # the held-out response, if the record has one
    truncated_from: int = 0  # original prompt length when the prompt was left-truncated, else 0


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids -> text, special tokens dropped, no "clean-up" (it would corrupt BPE text)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def build_prompts(records: Sequence[Any], tokenizer: Any, template: Any = None, *,
                  vocab_size: int | None = None, max_prompt_length: int | None = None) -> list[Prompt]:
    """Prompts of records of any `mbc_jax.data` schema, tokenized exactly as training tokenizes them.

    - dialogue schemas (dolly, chat, prompt_completion): every token before the LAST response, i.e.
      the template rendered up to and including the assistant prefix (earlier turns, with their EOS,
      included); the reference is the last response's text;
    - tokens: input_ids[:prompt_length] (the reference is the rest, decoded);
    - text: the whole text is the prompt (a free continuation; no reference).
    A prompt longer than `max_prompt_length` keeps its LAST max_prompt_length tokens (the end of
    the prompt holds the assistant prefix the model must continue); `truncated_from` says so.
    """
    template = template or Template()
    examples, report = tokenize(records, tokenizer, template, max_length=1 << 62, vocab_size=vocab_size)
    assert len(examples) == len(records), report.summary()

    def decode(ids) -> str:
        return decode_text(tokenizer, ids) if tokenizer is not None else ""

    out = []
    for rec, ex in zip(records, examples):
        ids, mask = ex.input_ids, ex.response_mask
        reference = None
        if rec.schema == "tokens" or rec.input_ids is not None:
            cut = rec.prompt_length or 0
            if cut < len(ids):
                reference = decode(ids[cut:])
            text = decode(ids[:cut])
        elif rec.text is not None:
            cut, text = len(ids), rec.text
        else:
            # start of the last run of response tokens
            last = int(np.flatnonzero(mask)[-1])
            cut = last
            while cut > 0 and mask[cut - 1]:
                cut -= 1
            text = template.prompt(rec)
            reference = [c for r, c in rec.turns if r == "assistant"][-1]
        if cut == 0:
            raise UserError(f"{rec.source}: the prompt is empty (prompt_length 0): nothing to generate from; "
                            "give the record a prompt_length > 0")
        prompt = ids[:cut]
        truncated_from = 0
        if max_prompt_length is not None and cut > max_prompt_length:
            prompt, truncated_from = prompt[cut - max_prompt_length:], cut
        out.append(Prompt(rec.index, rec.id, rec.category, prompt.astype(np.int32), text, reference, truncated_from))
    return out


def summarize(gens: Sequence[Generation], seconds: float) -> dict:
    """Aggregate numbers of a run (entropies: mean over records of the per-record means)."""
    n_tok = sum(g.num_tokens for g in gens)
    ent = [g.entropy for g in gens if g.num_tokens]
    sent = [g.sampling_entropy for g in gens if g.num_tokens]
    return {
        "records": len(gens), "tokens": n_tok, "seconds": seconds,
        "tokens_per_second": n_tok / seconds if seconds > 0 else float("nan"),
        "mean_entropy": float(np.mean(ent)) if ent else float("nan"),
        "mean_sampling_entropy": float(np.mean(sent)) if sent else float("nan"),
        "stopped_eos": sum(g.stopped == "eos" for g in gens),
        "mean_tokens": n_tok / len(gens) if gens else 0.0,
    }
