"""Supervised fine-tuning with uniform or Memorization-Based Curriculum (MBC) sampling.

    run = Run.create(cfg)      # the run folder: data, model, optimizer, sampler, checkpoints
    run.train()                # resumes from the latest checkpoint when there is one

At every step boundary s (steps completed): evaluate and checkpoint if s is a checkpoint step,
re-score the training set if MBC is due (s % k == 0), then draw the next batch and take one
jitted, donated train step. Everything a step depends on (params, optimizer state, sampler state,
seed) is in the checkpoint, and drawing is a pure function of (seed, step, weights), so a run
killed at any moment and resumed ends bitwise equal to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from jax.sharding import NamedSharding, PartitionSpec

from mbc_jax import UserError, distributed
from mbc_jax import config as config_lib
from mbc_jax.config import TrainConfig
from mbc_jax.data import Batch, Example, Template, load_records, pack, row_bucket, split_train_val, tokenize
from mbc_jax.models import Model, abstract_params, init_model, load_model, resolve_model_dir
from mbc_jax.models.config import DROPOUT_FIELDS
from mbc_jax.models.hf_io import WEIGHT_FILES
from mbc_jax.samplers import MBCSampler, Sampler, UniformSampler
from mbc_jax.scoring import Scorer, Scores, position_chunks, segment_sums, targets, unchunk
from mbc_jax.sharding import batch_divisor, batch_sharding, make_mesh

MEMORIZATION_COLUMNS = ("step", "split", "index", "id", "category", "tokens", "response_tokens", "exact_match",
                        "response_exact_match", "perplexity", "response_perplexity", "entropy", "draws")


class TrainingDiverged(UserError):
    pass


# ----------------------------------------------------------------------------- the train step


def fused_nll_loss(hidden: jax.Array, unembed: jax.Array, nxt: jax.Array, weight: jax.Array,
                   chunk: int = 1024) -> tuple[jax.Array, jax.Array]:
    """(sum over positions of weight * NLL, per-position NLL [B, T]) through the LM head, with its
    gradient computed in the forward pass.

    hidden [B, T, E]; unembed [V, E] (the LM head as rows, `CausalLM.unembedding`); nxt [B, T]
    target ids; weight [B, T] (the loss mask divided by the target count: the loss is linear in
    it). Logits go `chunk` positions at a time and are never stored: while a chunk's logits are in
    hand, d loss / d logits = weight * (softmax - onehot) is formed and turned into the chunk's
    hidden-state gradient and its share of the head gradient right away. Backward then only scales
    the stored gradients by the incoming cotangent: three head matmuls per chunk instead of the
    four (forward, recompute, two gradients) of a rematerialized chunked loss.

    The per-position NLL output is for logging (MBC's incremental refresh): it carries no gradient.
    """
    h, y, w = position_chunks(chunk, hidden, nxt, weight.astype(jnp.float32))
    loss, nll = _fused_head(h, unembed, y, w)
    return loss, unchunk(nll, *hidden.shape[:2])


def _head_pass(h, unembed, y, w, grads: bool):
    """Chunks h [C, c, E] through the head: (loss, nll [C, c]) and, with `grads`, (dh, d_unembed)."""
    rows = unembed.astype(h.dtype)

    def one(d_head, xs):
        hc, yc, wc = xs
        logits = jnp.einsum("te,ve->tv", hc, rows, preferred_element_type=jnp.float32)
        top = logits.max(-1, keepdims=True)
        ex = jnp.exp(logits - top)
        z = ex.sum(-1, keepdims=True)
        nll = (top + jnp.log(z))[:, 0] - jnp.take_along_axis(logits, yc[:, None], -1)[:, 0]
        if not grads:
            return d_head, (nll, None)
        d_logits = (ex * (wc[:, None] / z)).at[jnp.arange(yc.shape[0]), yc].add(-wc).astype(hc.dtype)
        dh = jnp.dot(d_logits, rows, preferred_element_type=jnp.float32).astype(hc.dtype)
        d_head = d_head + jnp.einsum("tv,te->ve", d_logits, hc, preferred_element_type=jnp.float32)
        return d_head, (nll, dh)

    init = jnp.zeros(unembed.shape if grads else (), jnp.float32)
    d_head, (nll, dh) = jax.lax.scan(one, init, (h, y, w))
    loss = jnp.where(w != 0, w * nll, 0.0).sum()
    return loss, nll, dh, (d_head.astype(unembed.dtype) if grads else None)


@jax.custom_vjp
def _fused_head(h, unembed, y, w):
    loss, nll, _, _ = _head_pass(h, unembed, y, w, grads=False)
    return loss, nll


def _fused_head_fwd(h, unembed, y, w):
    loss, nll, dh, d_head = _head_pass(h, unembed, y, w, grads=True)
    return (loss, nll), (dh, d_head, nll)


def _fused_head_bwd(res, cts):
    dh, d_head, nll = res
    ct = cts[0]  # the per-position NLL output is for logging: its cotangent is ignored
    y_zero = np.zeros(nll.shape, jax.dtypes.float0)  # target ids are integers
    return ct.astype(dh.dtype) * dh, ct.astype(d_head.dtype) * d_head, y_zero, ct * nll


_fused_head.defvjp(_fused_head_fwd, _fused_head_bwd)


def make_optimizer(cfg: TrainConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warmup (default none) and linear decay to `end_learning_rate`."""
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    decay = optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate, decay_steps)
    if cfg.warmup_steps:
        warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        schedule = optax.join_schedules([warmup, decay], [cfg.warmup_steps])
    else:
        schedule = decay
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
    if cfg.grad_accum > 1:
        tx = optax.MultiSteps(tx, cfg.grad_accum)
    return tx, schedule


def model_runtime(cfg: TrainConfig) -> dict:
    """The train config's choices that override the model's `ModelConfig` (see `models.load_model`)."""
    runtime = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat)
    if cfg.dropout is not None:  # one rate for all three places; else the model's config.json rates
        runtime.update(dict.fromkeys(DROPOUT_FIELDS, cfg.dropout))
    return runtime


def make_train_step(module: Any, tx: optax.GradientTransformation, schedule: optax.Schedule, loss_on: str,
                    grad_accum: int = 1, seed: int = 0):
    """state, batch -> state, metrics. Loss = mean NLL over the loss targets of all records in the batch.

    Dropout (the module config's rates) uses the key fold_in(key(seed), state["step"]): a pure
    function of the step, so a resumed run drops exactly what an uninterrupted one would.
    """
    if module.cfg.attention_impl == "auto":
        # With gradients the batched einsum beats CPU's per-head loop (which wins for scoring): the
        # 125M-shape 8 x 256 train step 10.96 -> 10.60 s. Both are tested equal, gradients included.
        module = module.clone(cfg=module.cfg.replace(attention_impl="einsum"))
    if any(getattr(module.cfg, f) for f in DROPOUT_FIELDS):
        module = module.clone(deterministic=False)

    def loss_fn(params, batch, step):
        rngs = {} if module.deterministic else {"dropout": jax.random.fold_in(jax.random.key(seed), step)}
        hidden = module.apply({"params": params}, batch["input_ids"], batch["positions"], batch["segment_ids"],
                              return_hidden=True, rngs=rngs)
        unembed = module.apply({"params": params}, method=module.unembedding)
        nxt, full, resp = targets(batch)
        mask = resp if loss_on == "response" else full
        count = mask.sum()
        loss, nll = fused_nll_loss(hidden, unembed, nxt, mask / jnp.maximum(count, 1))
        s = batch["record_index"].shape[1]  # per-record sums, for MBC's incremental refresh
        per_record = {"nll": segment_sums(jax.lax.stop_gradient(nll), mask, batch["segment_ids"], s),
                      "count": segment_sums(jnp.ones_like(nll), mask, batch["segment_ids"], s)}
        return loss, (count, per_record)

    def step(state, batch):
        (loss, (count, per_record)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, state["step"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "targets": count,
                   "learning_rate": schedule(state["step"] // grad_accum), "per_record": per_record}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    return step


# ----------------------------------------------------------------------------- FLOPs and MFU

PEAK_TFLOPS = {  # dense bf16 per device, vendor figures
    "h100": 989.0, "h200": 989.0, "a100": 312.0, "l4": 121.0, "v100": 125.0,
    "tpu v4": 275.0, "tpu v5 lite": 197.0, "tpu v5e": 197.0, "tpu v5p": 459.0, "tpu v6": 918.0,
}


def peak_flops_per_device(cfg_peak: float) -> float:
    if cfg_peak:
        return cfg_peak * 1e12
    kind = jax.devices()[0].device_kind.lower()
    for name, tflops in PEAK_TFLOPS.items():
        if name in kind:
            return tflops * 1e12
    # CPU or unknown: measure a float32 matmul once
    a = jnp.ones((1024, 1024), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(5):
        f(a).block_until_ready()
    return 5 * 2 * 1024**3 / (time.perf_counter() - t0)


def train_flops_per_token(model_cfg, seq_len: int) -> float:
    """Forward + backward model FLOPs per token: 6 x matmul parameters + attention scores."""
    matmul_params = model_cfg.num_params() - (model_cfg.max_position_embeddings + model_cfg.position_offset) * model_cfg.hidden_size
    return 6.0 * matmul_params + 12.0 * model_cfg.num_layers * seq_len * model_cfg.hidden_size


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class RunData:
    train: list[Example]
    val: list[Example]


def _atomic_write(path: Path, text: str) -> None:
    if not distributed.is_main():  # run files: process 0 writes them
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _prepare_model_dir(cfg: TrainConfig, run_dir: Path) -> tuple[Path, bool]:
    """(folder with config.json [+ weights] [+ tokenizer], has_weights)."""
    if cfg.model == "demo" or cfg.data == "demo":
        from mbc_jax.demo import materialize

        with distributed.main_first("materialize demo"):
            paths = materialize(run_dir / "data", num_records=cfg.demo_records, seed=0)
        if cfg.model == "demo":
            return paths["model"], False
    src = resolve_model_dir(cfg.model)
    return src, any((src / f).is_file() for f in WEIGHT_FILES)


def data_paths(cfg: TrainConfig, run_dir: Path) -> tuple[str, str | None]:
    if cfg.data == "demo":
        return str(run_dir / "data" / "data.jsonl"), cfg.val_data or str(run_dir / "data" / "valid.jsonl")
    return cfg.data, cfg.val_data


class Run:
    def __init__(self, cfg: TrainConfig, run_dir: Path, model: Model, data: RunData, log=print):
        self.cfg, self.dir, self.model, self.data, self.log = cfg, run_dir, model, data, log
        n = len(data.train)
        per_step = cfg.batch_size * cfg.grad_accum
        self.total_steps = cfg.steps or math.ceil(cfg.epochs * n / per_step) * cfg.grad_accum
        self.epoch_steps = max(1, math.ceil(n / cfg.batch_size))  # micro-steps per epoch-equivalent
        self.checkpoint_every = cfg.checkpoint_every or self.epoch_steps
        self.mbc_k = cfg.mbc.k or self.epoch_steps
        self.tx, self.schedule = make_optimizer(cfg, self.total_steps // cfg.grad_accum)
        mesh = model.mesh
        self.scorer = Scorer(model.module, mesh, seq_len=cfg.max_length, tokens_per_batch=cfg.score_tokens_per_batch)
        self.train_batches = self.scorer.batches(data.train)
        self.scorer.max_segments = self.train_batches[0].record_index.shape[1] if self.train_batches else 1
        self.val_batches = self.scorer.batches(data.val) if data.val else []
        if cfg.sampler == "mbc":
            self.sampler: Sampler = MBCSampler(n, cfg.batch_size, cfg.seed, cfg.mbc.power, cfg.mbc.floor)
        else:
            self.sampler = UniformSampler(n, cfg.batch_size, cfg.seed)
        self.state_shardings = None
        self._step_fn = None
        self._last_train_scores: tuple[int, Scores] | None = None
        self.seconds = {"train": 0.0, "score": 0.0, "eval": 0.0, "checkpoint": 0.0}

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, cfg: TrainConfig, override: bool = False, log=print) -> "Run":
        distributed.initialize()  # no-op for one process, and when the CLI already did it
        run_dir = Path(cfg.out)
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = run_dir / "config.yaml"
        if saved.is_file():
            old = config_lib.from_dict(yaml.safe_load(saved.read_text()) or {}, str(saved))
            diff = config_lib.differences(old, cfg)
            if diff and not override:
                raise UserError(
                    f"{run_dir}: this run folder was made with a different config ({'; '.join(diff)}); "
                    f"use another `out`, or pass --override to continue it with the new config"
                )
        mesh = make_mesh(cfg.mesh)
        model_dir, has_weights = _prepare_model_dir(cfg, run_dir)
        runtime = model_runtime(cfg)
        if cfg.init == "pretrained" and not has_weights:
            raise UserError(f"{model_dir}: no weights (init: pretrained); use init=random to start from random weights")
        if has_weights and cfg.init != "random":
            model = load_model(str(model_dir), mesh=mesh, **runtime)
        else:
            from mbc_jax.models import load_tokenizer

            hf_config = json.loads((model_dir / "config.json").read_text())
            model = init_model(hf_config, mesh=mesh, seed=cfg.seed, tokenizer=load_tokenizer(model_dir), **runtime)
            log(f"model: random initialization from {model_dir / 'config.json'}")
        # the run keeps its own copy of the model's config and tokenizer, for export
        (run_dir / "model").mkdir(exist_ok=True)
        _atomic_write(run_dir / "model" / "config.json", json.dumps(model.hf_config, indent=2) + "\n")
        if model.tokenizer is not None and distributed.is_main():
            model.tokenizer.save_pretrained(str(run_dir / "model"))
        data = cls._load_data(cfg, run_dir, model, log)
        run = cls(cfg, run_dir, model, data, log)
        # written last, once the config has proved valid against the model and data
        _atomic_write(saved, yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return run

    @staticmethod
    def _load_data(cfg: TrainConfig, run_dir: Path, model: Model, log) -> RunData:
        train_path, val_path = data_paths(cfg, run_dir)
        template = Template.from_file(cfg.template) if cfg.template else Template()
        max_length = min(cfg.max_length, model.config.max_position_embeddings)
        if cfg.max_length > model.config.max_position_embeddings:
            raise UserError(f"max_length: {cfg.max_length} exceeds the model's {model.config.max_position_embeddings} positions")

        def examples(path: str) -> list[Example]:
            records, report = load_records(path, schema=cfg.schema)
            if model.tokenizer is None and report.schema != "tokens":
                raise UserError(f"{cfg.model}: the model folder has no tokenizer; needed for {report.schema!r} records")
            out, tok_report = tokenize(records, model.tokenizer, template, max_length, vocab_size=model.config.vocab_size)
            log(report.summary())
            log(tok_report.summary())
            return out

        train = examples(train_path)
        if val_path:
            val = examples(val_path)
        elif cfg.val_fraction:
            train, val = split_train_val(train, cfg.val_fraction, seed=cfg.seed)
        else:
            val = []
        if cfg.loss_on == "response":
            train_targets = sum(e.response_tokens for e in train)
            if not train_targets:
                raise UserError("loss_on: response, but no training record has response tokens")
        if cfg.batch_size > len(train):
            raise UserError(f"batch_size: {cfg.batch_size} is larger than the {len(train)} training records")
        rows = [{"index": e.index, "id": e.id, "category": e.category, "split": split, "tokens": len(e),
                 "response_tokens": e.response_tokens} for split, xs in (("train", train), ("val", val)) for e in xs]
        _write_csv(run_dir / "records.csv", rows, ("index", "id", "category", "split", "tokens", "response_tokens"))
        return RunData(train, val)

    # ------------------------------------------------------------------ state and checkpoints

    def _init_state(self) -> dict:
        params = self.model.params
        replicated = NamedSharding(self.model.mesh, PartitionSpec())
        # optimizer moments are sharded like their params; counts and the step are replicated
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, sharding: sharding, jax.eval_shape(self.tx.init, params),
            jax.tree_util.tree_map(lambda p: p.sharding, params), transform_non_params=lambda _: replicated)
        opt_state = jax.jit(self.tx.init, out_shardings=opt_shardings)(params)
        # from numpy: device_put of a jax array onto a multi-process sharding fails with one device per process
        return {"params": params, "opt_state": opt_state, "step": jax.device_put(np.zeros((), np.int32), replicated)}

    def _checkpoint_manager(self):
        import orbax.checkpoint as ocp

        # keep_period = total steps: step 0 (the untrained model) and the last step are never deleted,
        # so first-vs-last analyses (Table 1, extraction) always find both
        options = ocp.CheckpointManagerOptions(max_to_keep=self.cfg.keep_checkpoints, create=True,
                                               keep_period=self.total_steps, enable_async_checkpointing=True)
        return ocp.CheckpointManager((self.dir / "checkpoints").absolute(), options=options)

    def _restore(self, manager, step: int, state: dict) -> dict:
        import orbax.checkpoint as ocp

        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), sampler=ocp.args.StandardRestore()))
        self.sampler.load_state(restored["sampler"])
        return restored["state"]

    def _save(self, manager, step: int, state: dict) -> None:
        import orbax.checkpoint as ocp

        t0 = time.perf_counter()
        try:
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                sampler=ocp.args.StandardSave({k: np.asarray(v) for k, v in self.sampler.state().items()})))
        except OSError as e:
            raise UserError(self._save_failed(manager, step, e))
        self.seconds["checkpoint"] += time.perf_counter() - t0

    def _save_failed(self, manager, step: int, e: Exception) -> str:
        good = [s for s in manager.all_steps() if s != step]
        return (f"saving the checkpoint of step {step} failed ({e}); the last good checkpoint is "
                f"{'step ' + str(max(good)) if good else 'none'}, and running the same command again resumes from it")

    # ------------------------------------------------------------------ scoring

    def _score_train(self, step: int, params) -> Scores:
        if self._last_train_scores and self._last_train_scores[0] == step:
            return self._last_train_scores[1]
        scores = self.scorer(params, self.data.train, self.train_batches)
        self._last_train_scores = (step, scores)
        return scores

    def _mbc_perplexity(self, scores: Scores) -> np.ndarray:
        metric = self.cfg.mbc.metric
        response = metric == "response" or (metric == "loss" and self.cfg.loss_on == "response")
        ppl = scores.perplexity(response)
        return np.where(np.isfinite(ppl), ppl, scores.perplexity(False))  # no response tokens: use the full dialogue

    def _refresh_mbc(self, step: int, params) -> None:
        assert isinstance(self.sampler, MBCSampler)
        t0 = time.perf_counter()
        if self.cfg.mbc.refresh == "incremental" and step > 0:
            which, batches = self._refresh_subset()
            scores = self.scorer(params, [self.data.train[i] for i in which], batches)
            self.sampler.set_perplexities(self._mbc_perplexity(scores), step, which)
        else:
            self.sampler.set_perplexities(self._mbc_perplexity(self._score_train(step, params)), step)
        self.seconds["score"] += time.perf_counter() - t0

    def _refresh_subset(self) -> tuple[np.ndarray, list[Batch]]:
        """Incremental refresh: the stalest `refresh_fraction` of records, topped up with the next
        stalest ones for as long as they fit in the packed batches the fraction needs anyway (those
        positions are computed either way; without the top-up a small fraction leaves most of one
        batch as padding). Returns the record indices and their packed batches."""
        order = self.sampler.staleness_order()
        train = self.data.train
        k = max(1, int(round(self.cfg.mbc.refresh_fraction * len(order))))
        batches = self.scorer.batches([train[i] for i in order[:k]])
        room = len(batches) * self.scorer.rows * self.scorer.seq_len - sum(len(train[i]) for i in order[:k])
        hi = k
        while hi < len(order) and len(train[order[hi]]) <= room:
            room -= len(train[order[hi]])
            hi += 1
        best, lo = (order[:k], batches), k + 1  # binary search: the longest prefix that packs as tightly
        while lo <= hi:
            m = (lo + hi) // 2
            topped = self.scorer.batches([train[i] for i in order[:m]])
            if len(topped) == len(batches):
                best, lo = (order[:m], topped), m + 1
            else:
                hi = m - 1
        return best

    def _update_from_losses(self, step: int, batch: Batch, per_record: dict) -> None:
        """Incremental refresh: the drawn records' perplexities from the train step's own losses."""
        idx = batch.record_index
        real = idx >= 0
        nll, count = np.asarray(per_record["nll"])[real], np.asarray(per_record["count"])[real]
        ok = count > 0
        if ok.any():
            self.sampler.set_perplexities(np.exp(nll[ok] / count[ok]), step, idx[real][ok])

    def evaluate(self, step: int, params) -> dict:
        t0 = time.perf_counter()
        train = self._score_train(step, params)
        rows = []
        for split, examples, scores in (("train", self.data.train, train),
                                        ("val", self.data.val, self.scorer(params, self.data.val, self.val_batches)
                                         if self.data.val else None)):
            if scores is None:
                continue
            draws = self.sampler.counts if split == "train" else np.zeros(len(examples), np.int64)
            for r, d in zip(scores.rows(examples), draws):
                rows.append({"step": step, "split": split, **r, "draws": int(d)})
            if split == "val":
                val = scores
        _write_csv(self.dir / "memorization" / f"step_{step:08d}.csv", rows, MEMORIZATION_COLUMNS)
        out = {"step": step, "eval": True,
               "train_exact_match": float(np.nanmean(train.exact_match())),
               "train_response_exact_match": float(np.nanmean(train.exact_match(True))),
               "train_perplexity": float(np.exp(train.sums["nll"].sum() / max(train.sums["tokens"].sum(), 1)))}
        if self.data.val:
            out["val_perplexity"] = float(np.exp(val.sums["nll"].sum() / max(val.sums["tokens"].sum(), 1)))
            out["val_response_perplexity"] = float(np.exp(val.sums["response_nll"].sum() / max(val.sums["response_tokens"].sum(), 1)))
            out["val_entropy"] = float(val.sums["entropy"].sum() / max(val.sums["tokens"].sum(), 1))
        self.seconds["eval"] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ batches

    def train_batch(self, idx: np.ndarray) -> Batch:
        """The drawn records packed into rows of max_length; row count bucketed (`row_bucket`)."""
        examples = [self.data.train[i] for i in idx]
        (batch,) = pack(examples, self.cfg.max_length, rows_per_batch=len(examples))
        used = int((batch.segment_ids != 0).any(1).sum())
        rows = row_bucket(used, len(examples), batch_divisor(self.model.mesh))
        s = self.cfg.batch_size
        ri = np.full((rows, s), -1, np.int32)
        ri[: min(rows, len(batch.record_index)), : batch.record_index.shape[1]] = batch.record_index[:rows]
        ri = np.where(ri >= 0, np.asarray(idx)[np.maximum(ri, 0)], -1)  # -> indices into the training set
        fix = lambda a: np.pad(a[:rows], ((0, max(0, rows - len(a))), (0, 0)))  # noqa: E731
        return Batch(fix(batch.input_ids), fix(batch.segment_ids), fix(batch.positions), fix(batch.response_mask), ri)

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        cfg, log = self.cfg, self.log
        state = self._init_state()
        manager = self._checkpoint_manager()
        start = 0
        latest = manager.latest_step()
        if latest is not None:
            state = self._restore(manager, latest, state)
            start = int(state["step"])
            log(f"resuming {self.dir} from the checkpoint of step {start}")
        metrics_path = self.dir / "metrics.jsonl"
        _truncate_metrics(metrics_path, start)
        for f in (self.dir / "memorization").glob("step_*.csv"):  # evaluated after the checkpoint: redo
            if int(f.stem[5:]) > start and distributed.is_main():
                f.unlink()
        from tensorboardX import SummaryWriter

        tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start if start else None,
                           write_to_disk=distributed.is_main())
        step_fn = jax.jit(make_train_step(self.model.module, self.tx, self.schedule, cfg.loss_on, cfg.grad_accum,
                                          seed=cfg.seed),
                          donate_argnums=(0,))
        ckpt_steps = set(range(0, self.total_steps, self.checkpoint_every)) | {self.total_steps}
        peak = peak_flops_per_device(cfg.peak_tflops) * len(jax.devices())
        flops_per_token = train_flops_per_token(self.model.config, cfg.max_length)
        sharding = batch_sharding(self.model.mesh)
        interval = {"loss": 0.0, "n": 0, "real": 0, "seconds": 0.0}
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=start, desc=f"train {cfg.sampler}", unit="step", file=sys.stderr,
                   dynamic_ncols=True, disable=None)
        t_run = time.perf_counter()
        with open(metrics_path if distributed.is_main() else os.devnull, "a") as mf:
            def emit(rec: dict) -> None:
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                for k, v in rec.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                        tb.add_scalar(("eval/" if rec.get("eval") else "train/") + k, v, rec["step"])

            for step in range(start, self.total_steps + 1):
                if step in ckpt_steps:
                    if cfg.track_memorization and not (self.dir / "memorization" / f"step_{step:08d}.csv").exists():
                        ev = self.evaluate(step, state["params"])
                        emit(ev)
                        bar.write(_eval_line(ev))
                    if step != start or latest is None:
                        self._save(manager, step, state)
                if step == self.total_steps:
                    break
                if isinstance(self.sampler, MBCSampler) and step % self.mbc_k == 0:
                    self._refresh_mbc(step, state["params"])
                idx = self.sampler.draw(step)
                batch = self.train_batch(idx)
                arrays = distributed.put_batch(batch, sharding)  # each host feeds only the rows it owns
                t0 = time.perf_counter()
                state, m = step_fn(state, arrays)
                loss = float(m["loss"])
                dt = time.perf_counter() - t0
                self.seconds["train"] += dt
                if not math.isfinite(loss):
                    ids = [self.data.train[i].id for i in idx]
                    raise TrainingDiverged(
                        f"step {step}: the loss is {loss}; the batch held records {', '.join(ids)}. The last "
                        f"checkpoint is kept; lower learning_rate or set grad_clip, then rerun to resume")
                if isinstance(self.sampler, MBCSampler) and cfg.mbc.refresh == "incremental":
                    self._update_from_losses(step, batch, distributed.gather(m["per_record"]))
                real = int((batch.segment_ids != 0).sum())
                interval["loss"] += loss
                interval["n"] += 1
                interval["real"] += real
                interval["seconds"] += dt
                bar.update(1)
                if (step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps:
                    tps = interval["real"] / max(interval["seconds"], 1e-9)
                    rec = {"step": step + 1, "epoch": round((step + 1) / self.epoch_steps, 3), "loss": loss,
                           "loss_mean": interval["loss"] / interval["n"], "learning_rate": float(m["learning_rate"]),
                           "grad_norm": float(m["grad_norm"]), "tokens": int(batch.input_ids.size), "real_tokens": real,
                           "tokens_per_s": tps, "mfu": tps * flops_per_token / peak,
                           "step_seconds": interval["seconds"] / interval["n"],
                           "score_seconds": self.seconds["score"], "train_seconds": self.seconds["train"]}
                    emit(rec)
                    bar.set_postfix(loss=f"{rec['loss_mean']:.3f}", lr=f"{rec['learning_rate']:.2e}")
                    interval = {"loss": 0.0, "n": 0, "real": 0, "seconds": 0.0}
        bar.close()
        try:
            manager.wait_until_finished()
        except OSError as e:
            raise UserError(self._save_failed(manager, self.total_steps, e))
        manager.close()
        tb.close()
        self.params = state["params"]
        return self._finish(time.perf_counter() - t_run)

    def _finish(self, seconds: float) -> dict:
        p = self.sampler.probabilities()
        rows = [{"index": e.index, "id": e.id, "category": e.category, "draws": int(c), "weight": float(w)}
                for e, c, w in zip(self.data.train, self.sampler.counts, p)]
        _write_csv(self.dir / "sampling.csv", rows, ("index", "id", "category", "draws", "weight"))
        last_eval = {}
        path = self.dir / "metrics.jsonl"
        for line in (path.read_text().splitlines() if path.exists() else []):  # process 0's file
            rec = json.loads(line)
            if rec.get("eval"):
                last_eval = rec
        summary = {"run": str(self.dir), "sampler": self.cfg.sampler, "steps": self.total_steps,
                   "epochs": self.total_steps / self.epoch_steps, "train_records": len(self.data.train),
                   "val_records": len(self.data.val), "wall_seconds": seconds,
                   **{f"{k}_seconds": v for k, v in self.seconds.items()},
                   "distinct_records_drawn": int((self.sampler.counts > 0).sum()), "final": last_eval}
        _atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _eval_line(ev: dict) -> str:
    s = (f"step {ev['step']}: train exact match {ev['train_exact_match']:.3f} "
         f"(response {ev['train_response_exact_match']:.3f}), train ppl {ev['train_perplexity']:.2f}")
    if "val_perplexity" in ev:
        s += f", val ppl {ev['val_perplexity']:.2f}"
    return s


def _write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    import csv

    if not distributed.is_main():  # run files: process 0 writes them
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    tmp.replace(path)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines of steps after the checkpoint: they are logged again."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        _atomic_write(path, "".join(k + "\n" for k in keep))


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> tuple[Path, int]:
    """Writes a Hugging Face folder from a run's checkpoint (latest, or `step`)."""
    import orbax.checkpoint as ocp

    from mbc_jax.models import export_model, load_tokenizer
    from mbc_jax.models.config import config_from_hf

    run_dir = Path(run_dir)
    if not (run_dir / "model" / "config.json").is_file():
        raise UserError(f"{run_dir}: not a run folder (no model/config.json)")
    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    steps = manager.all_steps()
    if not steps:
        raise UserError(f"{run_dir}: no checkpoints saved yet")
    step = max(steps) if step is None else step
    if step not in steps:
        raise UserError(f"{run_dir}: no checkpoint of step {step} (saved: {', '.join(map(str, sorted(steps)))})")
    hf_config = json.loads((run_dir / "model" / "config.json").read_text())
    cfg = config_from_hf(hf_config)
    mesh = make_mesh("1,1,1", jax.devices()[:1])
    abstract, shardings, module = abstract_params(cfg, mesh)
    target = jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        {"params": target}, partial_restore=True)))
    params = restored["state"]["params"]
    manager.close()
    model = Model(cfg, hf_config, module, params, mesh, load_tokenizer(run_dir / "model"), str(run_dir))
    return export_model(model, out_dir), step


def copy_run_files(src: Path, dst: Path) -> None:  # pragma: no cover - convenience for experiments
    shutil.copytree(src, dst, dirs_exist_ok=True)
