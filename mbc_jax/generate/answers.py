"""Answers to records: prompts built as training tokenizes them, generation, the answer lines.

    answers = answer_records(model, records, SamplingConfig(), template)
    answers.rows        # one dict per record: the lines `mbc-jax generate` writes (`mbc-jax judge` reads)
    answers.summary     # tokens, seconds, mean entropies, stops at EOS, truncated prompts

    answerer = Answerer.prepare(model, SamplingConfig(), template)   # the same, a list of records at a time
    rows, seconds, truncated = answerer.answer(chunk); totals.add(rows, seconds, truncated)   # `AnswerTotals`

`mbc-jax generate`, `mbc-jax select` and `experiments/table1_entropy.py` answer records through
`answer_records`; `AnswerProgress` is their progress bar (pass it as `on_batch`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from mbc_jax import UserError
from mbc_jax.data import Template, tokenize
from mbc_jax.data.chat import chat_prompt
from mbc_jax.generate.decode import DEFAULT_BUCKET, Generation, batch_rows, generate
from mbc_jax.generate.sampling import SamplingConfig
from mbc_jax.progress import progress_bar
from mbc_jax.sharding import mesh_str


class AnswerProgress:
    """A progress bar for `answer_records` (records answered, tokens so far) on stderr, shown only on a terminal.

        with AnswerProgress(len(records), "generate") as bar:
            answers = answer_records(model, records, config, on_batch=bar)

    The bar opens at the first `on_batch` call, so an error raised by `answer_records`' checks leaves none behind.
    """

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.bar = total, desc, None

    def __call__(self, done: int, tokens: int) -> None:
        if self.bar is None:
            self.bar = progress_bar(self.total, self.desc)  # tqdm on stderr, off when it is not a terminal
        self.bar.update(done - self.bar.n)
        if done:
            self.bar.set_postfix(tokens=tokens, refresh=False)

    def __enter__(self) -> AnswerProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclasses.dataclass
class Prompt:
    """What to generate from for one record, and what the output file says about it."""

    index: int
    id: str
    category: str
    ids: np.ndarray  # int32, the prompt tokens exactly as training tokenizes them
    text: str  # the prompt as text: the template's rendering for dialogue records
    reference: str | None  # the held-out response, if the record has one
    truncated_from: int = 0  # original prompt length when the prompt was left-truncated, else 0
    instruction: str = ""  # what a judge reads: `instruction_text` of the record (no template markers)


CONTEXT_LABEL = "Context:"
EARLIER_TURNS_LABEL = "Earlier turns of the conversation:"


def instruction_text(record: Any, prompt_text: str) -> str:
    """The instruction a judge reads for `record`, free of the training template's markers.

    - dialogue schemas: the last user turn before the last response, then the record's context under
      "Context:" when it has one, then any earlier turns under "Earlier turns of the conversation:",
      one "role: text" paragraph each (system, user, assistant as the data names them);
    - text and tokens: `prompt_text` (the raw text or the decoded prompt tokens; no template applies).
    """
    if record.schema == "tokens" or record.input_ids is not None or record.text is not None:
        return prompt_text
    last_answer = max(i for i, (role, _) in enumerate(record.turns) if role == "assistant")
    before = record.turns[:last_answer]
    users = [i for i, (role, _) in enumerate(before) if role == "user"]
    last_user = users[-1] if users else None
    parts = [before[last_user][1]] if last_user is not None else []
    if record.context:
        parts.append(f"{CONTEXT_LABEL}\n{record.context}")
    earlier = [f"{role}: {text}" for i, (role, text) in enumerate(before) if i != last_user]
    if earlier:
        parts.append(EARLIER_TURNS_LABEL + "\n" + "\n\n".join(earlier))
    return "\n\n".join(parts)


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Token ids -> text, special tokens dropped, no "clean-up" (it would corrupt BPE text)."""
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def build_prompts(records: Sequence[Any], tokenizer: Any, template: Any = None, *,
                  vocab_size: int | None = None, max_prompt_length: int | None = None) -> list[Prompt]:
    """Prompts of records of any `mbc_jax.data` schema, tokenized exactly as training tokenizes them.

    - dialogue schemas (dolly, chat, prompt_completion): every token before the LAST response, i.e.
      the template rendered up to and including the assistant prefix (earlier turns, with their EOS,
      included); the reference is the last response's text. With a chat template: the turns before
      the last response rendered with add_generation_prompt=True, which must be a token prefix of
      the record's training rendering (else UserError);
    - tokens: input_ids[:prompt_length] (the reference is the rest, decoded);
    - text: the whole text is the prompt (a free continuation; no reference).
    A prompt longer than `max_prompt_length` keeps its LAST max_prompt_length tokens (the end of
    the prompt holds the assistant prefix the model must continue); `truncated_from` says so.
    """
    template = template or Template()
    examples, report = tokenize(records, tokenizer, template, max_length=1 << 62, vocab_size=vocab_size)
    assert len(examples) == len(records), report.summary()

    def decode(ids) -> str | None:
        return decode_text(tokenizer, ids) if tokenizer is not None else None

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
            if template.chat:
                text, chat_ids = chat_prompt(rec, tokenizer, template)
                cut = len(chat_ids)
                if ids[:cut].tolist() != chat_ids:
                    raise UserError(f"{rec.source}: the generation prompt of the tokenizer's chat template "
                                    "(add_generation_prompt=True) is not a token prefix of the record as training "
                                    "renders it; the model would be asked to continue a text it never saw")
            else:
                text = template.prompt(rec)
            reference = [c for r, c in rec.turns if r == "assistant"][-1]
        if cut == 0:
            raise UserError(f"{rec.source}: the prompt is empty (prompt_length 0): nothing to generate from; "
                            "give the record a prompt_length > 0")
        prompt = ids[:cut]
        truncated_from = 0
        if max_prompt_length is not None and cut > max_prompt_length:
            prompt, truncated_from = prompt[cut - max_prompt_length:], cut
        out.append(Prompt(rec.index, rec.id, rec.category, prompt.astype(np.int32), text, reference, truncated_from,
                          instruction_text(rec, text)))
    return out


@dataclasses.dataclass
class AnswerTotals:
    """A run's summary numbers as running sums, added one list of answer rows at a time and kept exactly (the
    entropy sums as fractions): a run answered in chunks, or killed and resumed, sums to the summary of a run
    in one piece. `state` / `from_state` carry them through JSON (`mbc-jax generate`'s resume state)."""

    records: int = 0
    tokens: int = 0
    answered: int = 0  # records with at least one token: what the mean entropies average over
    entropy: Fraction = Fraction(0)
    sampling_entropy: Fraction = Fraction(0)
    stopped_eos: int = 0
    prompts_truncated: int = 0
    empty: int = 0
    seconds: float = 0.0

    def add(self, rows: Sequence[dict], seconds: float, truncated: int = 0) -> None:
        for r in rows:
            self.records += 1
            self.tokens += r["num_tokens"]
            if r["num_tokens"]:
                self.answered += 1
                self.entropy += Fraction(r["entropy"])
                self.sampling_entropy += Fraction(r["sampling_entropy"])
            self.stopped_eos += r["stopped"] == "eos"
        self.empty += count_empty(rows)
        self.prompts_truncated += truncated
        self.seconds += seconds

    def summary(self, max_prompt_length: int) -> dict:
        """Tokens, seconds (the generation's only), mean entropies (over records of the per-record means), stops at
        EOS, truncated prompts, empty answers."""
        def mean(total: Fraction) -> float:
            return float(total / self.answered) if self.answered else float("nan")
        return {
            "records": self.records, "tokens": self.tokens, "seconds": self.seconds,
            "tokens_per_second": self.tokens / self.seconds if self.seconds > 0 else float("nan"),
            "mean_entropy": mean(self.entropy), "mean_sampling_entropy": mean(self.sampling_entropy),
            "stopped_eos": self.stopped_eos, "mean_tokens": self.tokens / self.records if self.records else 0.0,
            "prompts_truncated": self.prompts_truncated, "max_prompt_length": max_prompt_length, "empty": self.empty,
        }

    def state(self) -> dict:
        return {k: str(v) if isinstance(v, Fraction) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_state(cls, state: dict) -> AnswerTotals:
        return cls(**{k: Fraction(v) if isinstance(v, str) else v for k, v in state.items()})


@dataclasses.dataclass
class Answers:
    """What `answer_records` returns."""

    rows: list[dict]  # one per record, in the records' order: the lines of `mbc-jax generate`
    summary: dict  # `AnswerTotals.summary` of the rows: tokens, seconds, entropies, truncated prompts, empty answers
    eos_token_id: int | None  # the token that stops a row (None: none; only with ignore_eos)


def _answer_row(prompt: Prompt, gen: Generation, tokenizer: Any) -> dict:
    """One answer line: index, id, category, instruction (what the judge reads, `instruction_text`),
    prompt (the text generation continued: the template's rendering), output_text (the output decoded without
    its EOS, stripped), output_ids, entropy, sampling_entropy, num_tokens, stopped, prompt_tokens,
    prompt_truncated, and reference when the record has one."""
    ids = [int(i) for i in gen.output_ids]
    text_ids = ids[:-1] if gen.stopped == "eos" else ids
    row = {
        "index": prompt.index, "id": prompt.id, "category": prompt.category, "instruction": prompt.instruction,
        "prompt": prompt.text,  # null, like output_text, for pre-tokenized records without a tokenizer
        "output_text": decode_text(tokenizer, text_ids).strip() if tokenizer is not None else None,
        "output_ids": ids, "entropy": gen.entropy, "sampling_entropy": gen.sampling_entropy,
        "num_tokens": gen.num_tokens, "stopped": gen.stopped,
        "prompt_tokens": int(prompt.ids.size), "prompt_truncated": bool(prompt.truncated_from),
    }
    if prompt.reference is not None:
        row["reference"] = prompt.reference
    return row


def special_ids(model: Any, template: Template, template_source: str = "the template"
                ) -> tuple[tuple[int | None, str], tuple[int | None, str]]:
    """((eos, where from), (pad, where from)): eos from the template's eos_token_id, else the tokenizer's, else
    (no tokenizer: pre-tokenized records) the model's config.json; pad from the tokenizer, else config.json."""
    tok, files = model.tokenizer, f"{model.path} (tokenizer files)"
    config_json = f"{model.path}/config.json"
    if template.eos_token_id is not None:
        eos = (template.eos_token_id, f"{template_source} (eos_token_id)")
    elif tok is not None:
        eos = (tok.eos_token_id, files)
    else:
        eos = (model.config.eos_token_id, config_json)
    pad = (tok.pad_token_id, files) if tok is not None else (model.config.pad_token_id, config_json)
    return eos, pad


def require_tokenizer(model: Any, records: Sequence[Any]) -> None:
    """A UserError unless the model has a tokenizer or every record is pre-tokenized."""
    if model.tokenizer is None and not all(r.input_ids is not None for r in records):
        raise UserError(f"{model.path}: the folder has no tokenizer files (tokenizer.json, vocab.json, ...); "
                        "generation needs one to encode prompts and decode answers (pre-tokenized records need "
                        "none): copy the base model's tokenizer files into the folder")


@dataclasses.dataclass
class Answerer:
    """The settings of `answer_records` once checked (`prepare`): answers records one list at a time, so
    `mbc-jax generate` answers its input a chunk at a time with what a single call would do."""

    model: Any
    config: SamplingConfig
    template: Template
    seed: int
    batch_size: int
    bucket: int
    max_prompt: int  # prompts keep at most their last max_prompt tokens
    eos: int | None
    pad: int

    @classmethod
    def prepare(cls, model: Any, config: SamplingConfig, template: Template | None = None, *, seed: int = 0,
                batch_size: int = 32, bucket: int = DEFAULT_BUCKET, max_prompt_length: int | None = None,
                template_source: str = "the template") -> Answerer:
        """The checks of `answer_records` that need no records: positions, EOS and pad ids."""
        positions = model.config.max_position_embeddings
        room = config.prompt_room(positions)
        if room < 1:
            raise UserError(f"--max-new-tokens {config.max_new_tokens}: the model has only {positions} positions; "
                            f"use at most {positions - 1}")
        max_prompt = max_prompt_length or room
        if max_prompt > room:
            raise UserError(f"--max-prompt-length {max_prompt} + --max-new-tokens {config.max_new_tokens} exceeds "
                            f"the model's {positions} positions; use --max-prompt-length <= {room}")
        template = template or Template()
        eos, pad = special_ids(model, template, template_source)
        if eos[0] is None and not config.ignore_eos:
            raise UserError(f"no eos_token_id (searched: {eos[1]}): set eos_token_id in the template, or pass "
                            "--ignore-eos")
        vocab = model.config.vocab_size
        for name, (value, source) in (("eos_token_id", eos), ("pad_token_id", pad)):
            if value is not None and not 0 <= value < vocab:
                raise UserError(f"{source}: {name} {value} is outside the model's vocabulary (ids 0..{vocab - 1}, "
                                f"{model.path}/config.json); set {name} in the template or fix that file")
        pad_id = pad[0] if pad[0] is not None else (eos[0] if eos[0] is not None else 0)
        return cls(model, config, template, seed, batch_size, bucket, max_prompt, eos[0], pad_id)

    def plan(self, prompts: int | None) -> str:
        """The line `log` gets before generation: prompts, settings, rows per batch, mesh."""
        rows = batch_rows(prompts or self.batch_size, self.batch_size, self.model.mesh)
        return (f"generate: {'?' if prompts is None else prompts} prompts, {self.config.describe()}, seed {self.seed}, "
                f"{rows} rows per batch on mesh {mesh_str(self.model.mesh)}")

    def answer(self, records: Sequence[Any], on_batch: Callable[[int, int], None] | None = None,
               log: Callable[[str], None] | None = None) -> tuple[list[dict], float, int]:
        """(answer rows, seconds of generation, prompts truncated) of `records`: prompts bucketed and batched
        among these records only; record `index` picks each one's random stream."""
        require_tokenizer(self.model, records)
        tok, max_prompt = self.model.tokenizer, self.max_prompt
        prompts = build_prompts(records, tok, self.template, vocab_size=self.model.config.vocab_size,
                                max_prompt_length=max_prompt)
        truncated = [p for p in prompts if p.truncated_from]
        if log is not None and truncated:
            log(f"generate: {len(truncated)} prompt(s) longer than {max_prompt} tokens kept their last {max_prompt} "
                f"(ids {', '.join(p.id for p in truncated[:10])}{', ...' if len(truncated) > 10 else ''})")
        if on_batch is not None:
            on_batch(0, 0)
        start = time.perf_counter()
        gens = generate(self.model, [p.ids for p in prompts], self.config, seed=self.seed, eos_token_id=self.eos,
                        pad_token_id=self.pad, batch_size=self.batch_size, bucket=self.bucket,
                        row_keys=[p.index for p in prompts], on_batch=on_batch)
        seconds = time.perf_counter() - start
        return [_answer_row(p, g, tok) for p, g in zip(prompts, gens)], seconds, len(truncated)


def answer_records(model: Any, records: Sequence[Any], config: SamplingConfig, template: Template | None = None, *,
                   seed: int = 0, batch_size: int = 32, bucket: int = DEFAULT_BUCKET,
                   max_prompt_length: int | None = None, on_batch: Callable[[int, int], None] | None = None,
                   log: Callable[[str], None] | None = None, template_source: str = "the template") -> Answers:
    """Answer every record's prompt with `model` (an `mbc_jax.models.Model` with a tokenizer).

    Prompts are built as training tokenizes the records (`build_prompts`), keeping at most their
    last `max_prompt_length` tokens (default, and at most: the model's positions minus
    `config.max_new_tokens`). Generation stops at the EOS token and pads with the pad token of
    `special_ids` (pad: else EOS, else 0; an id outside the vocabulary is an error naming its file);
    record `index` picks the random stream, so a record's answer does not depend on the others. `log`
    receives the plan (prompts, settings, rows, mesh) and the truncated prompts; then
    `on_batch(prompts_done, tokens_generated)` is called with (0, 0) as generation starts (once every
    check has passed: open a progress bar there) and after each batch. The seconds in the summary time
    the generation only.
    """
    require_tokenizer(model, records)
    answerer = Answerer.prepare(model, config, template, seed=seed, batch_size=batch_size, bucket=bucket,
                                max_prompt_length=max_prompt_length, template_source=template_source)
    if log is not None:
        log(answerer.plan(len(records)))
    rows, seconds, truncated = answerer.answer(records, on_batch, log)
    totals = AnswerTotals()
    totals.add(rows, seconds, truncated)
    return Answers(rows, totals.summary(answerer.max_prompt), answerer.eos)


def count_empty(rows: Sequence[dict]) -> int:
    """Answers with no text: output_text empty after stripping (no tokenizer: no token before the EOS)."""
    def empty(r: dict) -> bool:
        if r["output_text"] is not None:
            return not r["output_text"].strip()
        return r["num_tokens"] - (r["stopped"] == "eos") == 0
    return sum(empty(r) for r in rows)
