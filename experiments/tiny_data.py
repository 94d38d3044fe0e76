"""Real data at the tiny scale (`reproduce --scale tiny --data FILE`): a tokenizer fit for the file's text, the SFT
subsets and max_length chosen so that no response is cut, and a tiny base pretrained on the file's held-out text.

    prep = prepare("dolly.jsonl", out, n_train=320)  # train / valid files in out/data, the base, max_length, cuts
    prep.overrides()                                 # data=..., val_data=..., model=..., max_length=... for each run
    prep.header()                                    # REPORT.md's description of the data and model actually used

The rules (each stated in REPORT.md by `header`):

1. Tokenizer: a byte-level BPE of `VOCAB_SIZE` tokens fit on the text of every record of the file as the template
   renders it (the demo's code path, `mbc_jax.demo.tokenizer.build_tokenizer`); or the one `--tokenizer` names;
   or, with `--model`, that model's own.
2. Length: each record is tokenized whole (prompt, response, EOS); max_length is the `LENGTH_QUANTILE` quantile
   of these lengths (the smallest length at least that share of the records fit in), rounded up to a multiple of
   `LENGTH_STEP` and kept within `LENGTH_RANGE` (and within a given model's positions minus `TINY_MAX_NEW_TOKENS`,
   the tiny scale's new tokens per answer, from mbc_jax.generate).
3. Records: the file's records in a seeded random order (`numpy.random.default_rng(seed).permutation`: the file's
   own order may be sorted by category, as Dolly's is); the first `n_train` that fit in max_length train, the next
   `n_valid` that fit validate, and the longer ones met on the way are dropped and counted. Nothing is truncated,
   so no response is lost.
4. Base (not with `--model`): the demo's tiny GPT-Neo (mbc_jax/demo/tiny_gpt_neo.json, with the tokenizer's
   vocabulary and max_length + `TINY_MAX_NEW_TOKENS` positions) pretrained from random weights on every record outside
   the two subsets, as plain text (its fields joined by blank lines, instruction / context / response, then EOS),
   with the demo base's recipe (`mbc_jax.demo.base.pretrain`, `PRETRAIN`: our Trainer, text schema, loss on
   every token); documents longer than max_length are truncated (counted).

Everything but the copies in `out/data/` is cached in `cache_root()/data-base/<file sha256>-<settings>-<code>`
(the code version hashes mbc_jax/demo/ and this file), built in a `.partial-<pid>` folder and renamed into place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mbc_jax import UserError
from mbc_jax.data import Template, load_records, tokenize
from mbc_jax.demo import base as demo_base
from mbc_jax.demo.model import model_config
from mbc_jax.demo.tokenizer import build_tokenizer
from mbc_jax.generate import TINY_MAX_NEW_TOKENS
from mbc_jax.paths import file_sha256

VOCAB_SIZE = 4096  # Dolly: 241 tokens per record on average (2,048 tokens: 278; 8,192: 212)
LENGTH_QUANTILE = 0.9
LENGTH_STEP = 64
LENGTH_RANGE = (128, 512)
N_VALID = 80  # as many as the demo's valid.jsonl
SELECTION = "selection.json"
TINY_SCALES = ("tiny", "demo")  # `demo` is the old name of the tiny scale


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which records of the pool (0-based positions) train, validate, or are dropped for length."""

    max_length: int
    pool: int
    train: list[int]
    valid: list[int]
    dropped: list[int]  # longer than max_length, met in the seeded order before the subsets were full

    def held_out(self) -> list[int]:
        """Every record outside the two subsets (the dropped ones included), in file order: the pretraining text."""
        used = set(self.train) | set(self.valid)
        return [i for i in range(self.pool) if i not in used]


def choose_max_length(lengths: list[int] | np.ndarray, quantile: float = LENGTH_QUANTILE, step: int = LENGTH_STEP,
                      lo: int = LENGTH_RANGE[0], hi: int = LENGTH_RANGE[1]) -> int:
    """The smallest length that at least `quantile` of the records fit in, rounded up to a multiple of `step`,
    within [lo, hi]."""
    if len(lengths) == 0:
        raise UserError("no records to choose a max_length from")
    q = int(np.quantile(np.asarray(lengths), quantile, method="inverted_cdf"))
    return int(min(max(math.ceil(q / step) * step, lo), hi))


def select(lengths: list[int] | np.ndarray, max_length: int, n_train: int, n_valid: int, seed: int = 0,
           categories: Sequence[str] | None = None) -> Selection:
    """Rule 3 of the module docstring: the first records of a seeded permutation that fit, train then validation.
    With `categories` (one per record), stratified: every category gets an equal share of each subset (the
    remainder to the categories first in sorted order), filled from the same seeded order."""
    order = np.random.default_rng(seed).permutation(len(lengths)).tolist()
    if categories is None:
        quota = {None: (n_train, n_valid)}
        cat_of = [None] * len(lengths)
    else:
        names = sorted(set(categories))
        quota = {c: (n_train // len(names) + (k < n_train % len(names)),
                     n_valid // len(names) + (k < n_valid % len(names))) for k, c in enumerate(names)}
        cat_of = list(categories)
    taken = {c: [0, 0] for c in quota}
    train: list[int] = []
    valid: list[int] = []
    dropped: list[int] = []
    for i in order:
        if len(train) + len(valid) == n_train + n_valid:
            break
        c = cat_of[i]
        if taken[c] == list(quota[c]):
            continue  # this category is full (stratified); not a length drop
        if lengths[i] > max_length:
            dropped.append(i)
        elif taken[c][0] < quota[c][0]:
            train.append(i)
            taken[c][0] += 1
        else:
            valid.append(i)
            taken[c][1] += 1
    return Selection(max_length, len(lengths), train, valid, dropped)


def plain_text(record: Any, eos: str) -> str:
    """A record as pretraining prose: instruction, context, response (or every turn) joined by blank lines, + EOS."""
    if record.text is not None:
        return record.text + eos
    texts = [t for _, t in record.turns[:1]] + [record.context] + [t for _, t in record.turns[1:]]
    return "\n\n".join(t.strip() for t in texts if t and t.strip()) + eos


@dataclasses.dataclass
class Prepared:
    """The prepared data and model: paths for the runs and the facts REPORT.md states."""

    data: str
    sha256: str
    records: int
    schema: str
    tokenizer: str  # how it was made, in words
    vocab_size: int
    lengths: dict  # {"mean", "median", "p90", "max"} of the whole records' token lengths
    max_length: int
    n_train: int
    n_valid: int
    dropped: int
    truncated: int  # SFT records truncated at max_length (0 by the rule; counted on the written files)
    responses_lost: int
    categories: dict  # {category: [in the file, in training]}
    train_path: str
    valid_path: str
    model: str  # the base folder (or --model)
    pretrain: dict | None  # the base's pretrain.json (None with --model)
    seed: int = 0
    length_cap: int = LENGTH_RANGE[1]  # the upper bound of max_length (lower with --model: its positions - 64)
    stratified: bool = False  # equal shares of each category in both subsets (the real scale)
    template: str = "the paper's Human:/Assistant: template"  # how records were rendered and measured

    def overrides(self) -> list[str]:
        return [f"data={self.train_path}", f"val_data={self.valid_path}", f"model={self.model}",
                f"max_length={self.max_length}"]

    def cuts(self) -> str:
        """One line: what was cut."""
        s = (f"{self.data}: {self.records} records; max_length {self.max_length}; {self.n_train} train + "
             f"{self.n_valid} validation records; dropped for length: {self.dropped}; truncated: {self.truncated}; "
             f"responses lost: {self.responses_lost}")
        if self.pretrain:
            s += (f"; base pretrained on {self.pretrain['corpus_documents']} held-out records "
                  f"({self.pretrain['corpus_truncated']} truncated to {self.max_length} tokens)")
        return s

    def header(self) -> str:
        """REPORT.md's opening paragraphs: the data, the selection rule, the tokenizer and the model."""
        cats = ", ".join(f"{c} {t}/{n}" for c, (n, t) in sorted(self.categories.items()))
        lines = [
            f"Data: `{Path(self.data).name}` ({self.records:,} records, {self.schema} schema, sha256 "
            f"`{self.sha256[:16]}`), not the demo's generated suite. Tokenizer ({self.vocab_size:,} tokens): "
            f"{self.tokenizer}; whole records are {self.lengths['mean']:.0f} tokens on average "
            f"(median {self.lengths['median']}, 90th percentile {self.lengths['p90']}, longest {self.lengths['max']}).",
            "",
            f"Records: max_length {self.max_length} = the {LENGTH_QUANTILE:.0%} quantile of the records' token "
            f"lengths rounded up to a multiple of {LENGTH_STEP}, within {LENGTH_RANGE[0]}..{self.length_cap}, each "
            f"record rendered with {self.template}. In a seeded random order (seed {self.seed}), the first "
            f"{self.n_train} records that fit train and the next {self.n_valid} validate"
            + (" (stratified: an equal share of each category in both subsets)" if self.stratified else "")
            + f"; **{self.dropped} records met on the way were dropped for length, "
            f"{self.truncated} truncated, {self.responses_lost} responses lost**. Training records by category "
            f"(training / in the file): {cats}.",
            "",
        ]
        if self.pretrain:
            p = self.pretrain
            spec = p["spec"]
            lines += [
                f"Model: the demo's tiny GPT-Neo (4 layers, hidden 128, "
                f"{self.max_length + TINY_MAX_NEW_TOKENS} positions) "
                f"pretrained from random weights on the file's {p['corpus_documents']:,} other records as plain text "
                f"(instruction, context and response joined by blank lines; {p['corpus_truncated']} longer than "
                f"{self.max_length} tokens truncated) with the demo base's recipe (our Trainer, text schema, loss on "
                f"every token, {spec['steps']} steps of {spec['batch_size']} documents, learning rate "
                f"{spec['learning_rate']}): loss {p['first_loss']:.3f} -> {p['final_loss']:.3f}, "
                f"{p['epochs']:.2f} epochs, {p['wall_seconds']:.0f} s (cached: `{self.model}`).",
            ]
        else:
            lines += [f"Model: `{self.model}` (--model, or the scale's own), with its own tokenizer; no base "
                      "pretraining."]
        lines += ["", "Left out: the analyses that need the demo world's ground truth, the familiarity AUC (which "
                  "answers the base's corpus states) and the world judge (it grades by the world's facts); a real "
                  "judge runs with --judge-base-url."]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- preparing


def code_version() -> str:
    """The demo's code version (base recipe, model config, tokenizer code) and this file's bytes."""
    return hashlib.sha256((demo_base.code_version() + Path(__file__).read_text()).encode()).hexdigest()[:12]


def _jsonl_lines(path: Path, n_records: int) -> list[str]:
    """The file's non-blank lines, one per record (so the chosen records are written back byte for byte)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != n_records:
        raise UserError(f"{path}: {len(lines)} lines hold {n_records} records; the tiny scale needs one record "
                        "per line (a plain JSONL file)")
    return lines


def _load_tokenizer(name: str) -> Any:
    from mbc_jax.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir(name))
    if tok is None:
        raise UserError(f"{name}: no tokenizer files (tokenizer.json, vocab.json, ...) in that folder")
    return tok


def prepare(data: str, out: Path, n_train: int, n_valid: int = N_VALID, *, tokenizer: str | None = None,
            model: str | None = None, vocab_size: int = VOCAB_SIZE, seed: int = 0,
            spec: demo_base.PretrainSpec = demo_base.PRETRAIN, log: Callable[[str], None] = print,
            template: str | None = None, stratify: bool = False, length_cap: int = LENGTH_RANGE[1]) -> Prepared:
    """Prepare `data` (a local JSONL file) for the tiny scale: see the module docstring. `tokenizer` names one
    (a folder or hub id) instead of fitting a BPE; `model` names a model to fine-tune instead of pretraining a
    base (its own tokenizer is used). The real scale (experiments/reproduce.py) adds a `template` spec (`chat`:
    the tokenizer's chat template), `stratify` (equal shares of each category) and a lower `length_cap`. The SFT
    files are copied into `out/data/`."""
    path = Path(data)
    if not (path.is_file() and path.suffix == ".jsonl"):
        raise UserError(f"--data {data}: the tiny scale needs a local .jsonl file (one record per line); convert "
                        "it, or use --scale small")
    if model and tokenizer:
        raise UserError("--tokenizer with --model: the model's own tokenizer is used; pass one of them")
    sha = file_sha256(path)
    settings = json.dumps([n_train, n_valid, vocab_size, seed, repr(spec), LENGTH_QUANTILE, LENGTH_STEP, LENGTH_RANGE,
                           TINY_MAX_NEW_TOKENS, tokenizer, model]
                          + ([template, stratify, length_cap] if (template, stratify, length_cap) != (
                              None, False, LENGTH_RANGE[1]) else []))  # the tiny scale's keys stay as they were
    key = f"{sha[:16]}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}-{code_version()}"
    target = demo_base.cache_root() / "data-base" / key
    if not ((target / SELECTION).is_file() and (model or demo_base.is_complete(target))):
        if not model:
            log(f"{path.name}: fitting a tokenizer and pretraining the tiny base on its held-out text "
                f"(first use; cached in {target})")
        _build(path, target, n_train, n_valid, vocab_size, seed, spec, tokenizer, model, sha, log,
               Template.from_spec(template), stratify, length_cap)
    facts = json.loads((target / SELECTION).read_text())
    dest = Path(out) / "data"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "valid.jsonl"):
        shutil.copyfile(target / name, dest / name)
    prep = Prepared(**{**facts, "data": str(path), "train_path": str(dest / "train.jsonl"),
                       "valid_path": str(dest / "valid.jsonl"), "model": model or str(target)})
    log(prep.cuts())
    return prep


def _build(path: Path, target: Path, n_train: int, n_valid: int, vocab_size: int, seed: int,
           spec: demo_base.PretrainSpec, tokenizer: str | None, model: str | None, sha: str,
           log: Callable[[str], None], template: Template, stratify: bool, hi: int) -> None:
    records, load_report = load_records(str(path))
    lines = _jsonl_lines(path, len(records))
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if model:
        from mbc_jax.models import resolve_model_dir

        tok = _load_tokenizer(model)
        positions = json.loads((resolve_model_dir(model) / "config.json").read_text())["max_position_embeddings"]
        hi = min(hi, positions - TINY_MAX_NEW_TOKENS)
        how = f"the tokenizer of `{model}`"
    elif tokenizer:
        tok = _load_tokenizer(tokenizer)
        how = f"`{tokenizer}` (--tokenizer)"
    else:
        texts = ({"text": s} for r in records for s, _ in template.segments(r))
        tok = build_tokenizer([], work / "tokenizer", vocab_size=vocab_size, corpus=texts)
        how = ("a byte-level BPE fit on the file's text as the template renders it (mbc_jax.demo.tokenizer)")
    examples, _ = tokenize(records, tok, template, max_length=1 << 30)
    lengths = [len(e) for e in examples]
    max_length = choose_max_length(lengths, hi=hi)
    sel = select(lengths, max_length, n_train, n_valid, seed,
                 categories=[r.category or "(none)" for r in records] if stratify else None)
    if len(sel.train) < n_train or len(sel.valid) < n_valid:
        raise UserError(f"{path}: only {len(sel.train) + len(sel.valid)} records fit in {max_length} tokens"
                        + (" (stratified by category)" if stratify else "")
                        + f"; this scale needs {n_train} to train and {n_valid} to validate")
    truncated = lost = 0
    for name, idx in (("train.jsonl", sel.train), ("valid.jsonl", sel.valid)):
        (work / name).write_text("".join(lines[i] + "\n" for i in idx), encoding="utf-8")
        # the cuts as the runs will make them: the written file, tokenized at max_length (0 and 0 by the rule)
        _, rep = tokenize(load_records(str(work / name))[0], tok, template, max_length=max_length)
        truncated, lost = truncated + len(rep.truncated), lost + len(rep.no_response)
    pool_cats = Counter(r.category for r in records)
    train_cats = Counter(records[i].category for i in sel.train)
    arr = np.asarray(lengths)
    facts: dict[str, Any] = {
        "sha256": sha, "records": len(records), "schema": load_report.schema, "tokenizer": how,
        "vocab_size": len(tok), "seed": seed,
        "lengths": {"mean": round(float(arr.mean()), 1), "median": int(np.median(arr)),
                    "p90": int(np.quantile(arr, 0.9, method="inverted_cdf")), "max": int(arr.max())},
        "max_length": max_length, "length_cap": hi, "n_train": len(sel.train), "n_valid": len(sel.valid),
        "dropped": len(sel.dropped),
        "truncated": truncated, "responses_lost": lost,
        "categories": {c: [pool_cats[c], train_cats[c]] for c in sorted(pool_cats)},
        "pretrain": None,
        "stratified": stratify,
        **({"template": "the tokenizer's chat template"} if template.chat else {}),
    }
    if not model:
        facts["pretrain"] = _pretrain(records, sel, tok, work, target, seed, spec, sha, log)
    (work / SELECTION).write_text(json.dumps(facts, indent=2) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if model:
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work, target)
        return
    for name in ("train.jsonl", "valid.jsonl", SELECTION):
        os.replace(work / name, work / "base" / name)
    shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover
    os.replace(work / "base", target)
    shutil.rmtree(work, ignore_errors=True)


def _pretrain(records: list, sel: Selection, tok: Any, work: Path, target: Path, seed: int,
              spec: demo_base.PretrainSpec, sha: str, log: Callable[[str], None]) -> dict:
    """Rule 4: the base, pretrained into `work/base`; returns its pretrain.json."""
    eos = tok.eos_token or ""
    docs = [plain_text(records[i], eos) for i in sel.held_out()]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    doc_lengths = [len(x) for x in tok(docs, add_special_tokens=True, verbose=False)["input_ids"]]
    model_dir = work / "model"
    tok.model_max_length = sel.max_length + TINY_MAX_NEW_TOKENS
    tok.save_pretrained(str(model_dir))
    config = {**model_config(tok), "max_position_embeddings": tok.model_max_length}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    info = {
        "what": f"tiny GPT-Neo pretrained on held-out records of a data file (sha256 {sha}) as plain text "
                "(experiments/tiny_data.py)",
        "seed": seed, "code_version": code_version(), "corpus_documents": len(docs),
        "corpus_truncated": sum(n > sel.max_length for n in doc_lengths),
        "corpus_tokens": int(sum(min(n, sel.max_length) for n in doc_lengths)),
    }
    info = demo_base.pretrain(work / "base", work / "pretrain", model_dir, corpus, info, seed=seed, spec=spec,
                              max_length=sel.max_length, log=log)
    log(f"base: pretrained in {info['wall_seconds']:.0f}s, loss {info['first_loss']:.3f} -> {info['final_loss']:.3f}")
    return info
