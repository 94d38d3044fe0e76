"""Supervised fine-tuning: the optimizer, the train step, and the `Trainer` that runs them.

    trainer = Trainer.create(cfg)   # run folder, model, data, optimizer, sampler
    trainer.train()                 # resumes from the latest checkpoint when there is one

At every step boundary s (steps completed): evaluate and checkpoint if s is a checkpoint step,
let the sampler re-score if it wants to (`Sampler.before_step`: MBC every k steps), draw the next
batch, take one jitted, donated train step, and hand the step's per-record losses to the sampler
(`Sampler.after_step`). Everything a step depends on (params, optimizer state, sampler state,
seed) is in the checkpoint, and drawing is a pure function of (seed, step, weights), so a run
killed at any moment and resumed ends bitwise equal to an uninterrupted one (on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbc_jax import UserError, distributed, trackers
from mbc_jax import checkpoints as ckpt
from mbc_jax import config as config_lib
from mbc_jax.checkpoints import Checkpoints, abstract_train_state, init_train_state
from mbc_jax.config import TrainConfig
from mbc_jax.data import Batch, Example, Template, load_records, pack_drawn, split_train_val, tokenize
from mbc_jax.demo import materialize
from mbc_jax.demo.base import demo_base
from mbc_jax.flops import peak_flops_per_device, train_flops_per_token
from mbc_jax.loss import fused_nll_loss, segment_sums, targets
from mbc_jax.models import Model, init_model, load_model, load_tokenizer, resolve_model_dir
from mbc_jax.models.config import DROPOUT_FIELDS
from mbc_jax.models.hf_io import WEIGHT_FILES
from mbc_jax.paths import as_path, fetch, orbax_dir
from mbc_jax.progress import progress_bar
from mbc_jax.run_folder import DATA, RunWriter, data_paths
from mbc_jax.samplers import make_sampler
from mbc_jax.scoring import Scorer, Scores
from mbc_jax.sharding import batch_divisor, batch_sharding, make_mesh


class TrainingDiverged(UserError):
    pass


# ----------------------------------------------------------------------------- optimizer and train step


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
    if module.cfg.attention_impl == "auto":  # under gradients the batched einsum is the faster one
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
        s = batch["record_index"].shape[1]  # per-record sums, for the sampler's after_step
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


# ----------------------------------------------------------------------------- setup


@dataclasses.dataclass
class RunData:
    train: list[Example]
    val: list[Example]


def _model_dir(cfg: TrainConfig, run_dir: Path, log=print) -> tuple[Path, bool]:
    """(folder with config.json [+ weights] [+ tokenizer], has_weights). `model: demo` is the demo base,
    pretrained on the demo world's corpus and cached (built on first use); with `init: random` it is the
    weightless demo folder (the same config and tokenizer), so nothing is pretrained."""
    if cfg.model == "demo" or cfg.data == "demo":
        with distributed.main_first("materialize demo"):
            paths = materialize(run_dir / DATA, num_records=cfg.demo_records, seed=0)
        if cfg.model == "demo":
            if cfg.init == "random":
                return fetch(paths["model"]), False  # a URL run folder: a local copy for the tokenizer
            with distributed.main_first("demo base"):
                return demo_base(seed=0, log=log), True
    src = resolve_model_dir(cfg.model)
    return src, any((src / f).is_file() for f in WEIGHT_FILES)


def _load_model(cfg: TrainConfig, run_dir: Path, mesh: Any, log) -> Model:
    model_dir, has_weights = _model_dir(cfg, run_dir, log)
    runtime = model_runtime(cfg)
    if cfg.init == "pretrained" and not has_weights:
        raise UserError(f"{model_dir}: no weights (init: pretrained); use init=random to start from random weights")
    if has_weights and cfg.init != "random":
        return load_model(str(model_dir), mesh=mesh, **runtime)
    hf_config = json.loads((model_dir / "config.json").read_text())
    log(f"model: random initialization from {model_dir / 'config.json'}")
    return init_model(hf_config, mesh=mesh, seed=cfg.seed, tokenizer=load_tokenizer(model_dir), **runtime)


def _template(cfg: TrainConfig) -> Template:
    return Template.from_spec(cfg.template)


def _load_data(cfg: TrainConfig, run_dir: Path, model: Model, log) -> RunData:
    train_path, val_path = data_paths(cfg, run_dir)
    template = _template(cfg)
    if cfg.max_length > model.config.max_position_embeddings:
        raise UserError(
            f"max_length: {cfg.max_length} exceeds the model's {model.config.max_position_embeddings} positions"
        )

    def examples(path: str) -> list[Example]:
        records, report = load_records(path, schema=cfg.schema, fields=cfg.fields, tree=cfg.tree,
                                       tree_filter=cfg.tree_filter)
        if model.tokenizer is None and report.schema != "tokens":
            raise UserError(f"{cfg.model}: the model folder has no tokenizer; needed for {report.schema!r} records")
        out, tok_report = tokenize(records, model.tokenizer, template, cfg.max_length,
                                   vocab_size=model.config.vocab_size)
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
    if cfg.loss_on == "response" and not sum(e.response_tokens for e in train):
        raise UserError("loss_on: response, but no training record has response tokens")
    if cfg.batch_size > len(train):
        raise UserError(f"batch_size: {cfg.batch_size} is larger than the {len(train)} training records")
    return RunData(train, val)


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, model: Model, data: RunData, log=print):
        self.cfg, self.dir, self.model, self.data, self.log = cfg, run_dir, model, data, log
        self.writer = RunWriter(run_dir)
        n = len(data.train)
        self.total_steps = ckpt.total_steps(cfg, n)
        self.epoch_steps = max(1, math.ceil(n / cfg.batch_size))  # micro-steps per epoch-equivalent
        self.checkpoint_every = cfg.checkpoint_every or self.epoch_steps
        self.mbc_k = cfg.mbc.k or self.epoch_steps
        self.tx, self.schedule = make_optimizer(cfg, self.total_steps // cfg.grad_accum)
        self.scorer = Scorer(model.module, model.mesh, seq_len=cfg.max_length,
                             tokens_per_batch=cfg.score_tokens_per_batch,
                             eos_id=_template(cfg).eos_id(model.tokenizer),  # for the no-EOS response exact match
                             tokenizer=model.tokenizer)  # the snapshots' zlib ratio (issue 32)
        self.train_batches = self.scorer.batches(data.train)
        self.scorer.max_segments = self.train_batches[0].record_index.shape[1] if self.train_batches else 1
        self.val_batches = self.scorer.batches(data.val) if data.val else []
        self.sampler = make_sampler(cfg, n, self.mbc_k)
        self._train_scores: tuple[int, Scores] | None = None
        self.seconds = {"train": 0.0, "score": 0.0, "eval": 0.0, "checkpoint": 0.0}
        # positions computed: trained (real = record tokens; padded = the batch shapes), and scored for MBC
        self.tokens = {"trained_real": 0, "trained_padded": 0, "mbc_scored_real": 0, "mbc_scored_padded": 0}
        self.mbc_refreshes = 0

    @classmethod
    def create(cls, cfg: TrainConfig, override: bool = False, log=print) -> Trainer:
        distributed.initialize()  # no-op for one process, and when the CLI already did it
        run_dir = as_path(cfg.out)  # a local folder, or a URL (gs://...: mbc_jax/paths.py)
        orbax_dir(run_dir)  # a URL orbax cannot write fails now, not after the model loaded
        run_dir.mkdir(parents=True, exist_ok=True)
        writer = RunWriter(run_dir)
        saved = writer.saved_config()
        if saved is not None:
            diff = config_lib.differences(config_lib.from_dict(saved, str(run_dir / "config.yaml")), cfg)
            if diff and not override:
                raise UserError(
                    f"{run_dir}: this run folder was made with a different config ({'; '.join(diff)}); "
                    f"use another `out`, or pass --override to continue it with the new config"
                )
        trackers.check(cfg.tracker)  # a missing optional package fails before the model loads
        model = _load_model(cfg, run_dir, make_mesh(cfg.mesh), log)
        writer.write_model(model.hf_config, model.tokenizer)  # the run keeps its own copy, for export
        data = _load_data(cfg, run_dir, model, log)
        writer.write_records({"train": data.train, "val": data.val})
        trainer = cls(cfg, run_dir, model, data, log)
        writer.write_config(config_lib.to_dict(cfg))  # last, once the config has proved valid against model and data
        return trainer

    # ------------------------------------------------------------------ scoring

    def _score_train(self, step: int, params) -> tuple[Scores, bool]:
        """(all training records' scores at `step`, whether this call computed them): one pass per
        step, shared by evaluation and MBC."""
        if self._train_scores and self._train_scores[0] == step:
            return self._train_scores[1], False
        scores = self.scorer(params, self.data.train, self.train_batches)
        self._train_scores = (step, scores)
        return scores, True

    def _mbc_score(self, step: int, params, order: np.ndarray, count: int) -> tuple[np.ndarray, Scores]:
        """The sampler's `score_fn`: all records, or `order[:count]` topped up to fill its batches."""
        t0 = time.perf_counter()
        self.mbc_refreshes += 1
        train = self.data.train
        if count >= len(order):
            which, batches = order, self.train_batches
            scores, fresh = self._score_train(step, params)
        else:
            which, batches = self.scorer.prefix_batches(train, order, count)
            fresh, scores = True, self.scorer(params, [train[i] for i in which], batches)
        if fresh:
            self.tokens["mbc_scored_real"] += sum(len(train[i]) for i in which)
            self.tokens["mbc_scored_padded"] += sum(b.input_ids.size for b in batches)
        self.seconds["score"] += time.perf_counter() - t0
        return which, scores

    def evaluate(self, step: int, params) -> dict:
        """Scores every record; writes the memorization snapshot of `step`; returns the eval metrics."""
        t0 = time.perf_counter()
        train, _ = self._score_train(step, params)
        val = self.scorer(params, self.data.val, self.val_batches) if self.data.val else None
        rows = [{"step": step, "split": "train", **r, "draws": int(d)}
                for r, d in zip(train.rows(self.data.train), self.sampler.counts)]
        if val is not None:
            rows += [{"step": step, "split": "val", **r, "draws": 0} for r in val.rows(self.data.val)]
        self.writer.write_snapshot(step, rows)
        out = {"step": step, "eval": True,  # exact match: Eq. 1, pooled over the records; _macro: per-record mean
               "train_exact_match": train.pooled("match"),
               "train_response_exact_match": train.pooled("match", response=True),
               "train_exact_match_macro": float(np.nanmean(train.exact_match())),
               "train_response_exact_match_macro": float(np.nanmean(train.exact_match(True))),
               "train_response_exact_match_no_eos": train.pooled("match", response=True, no_eos=True),
               "train_response_exact_match_no_eos_macro": float(np.nanmean(train.exact_match(True, no_eos=True))),
               "train_perplexity": float(np.exp(train.pooled("nll")))}
        if val is not None:
            out["val_perplexity"] = float(np.exp(val.pooled("nll")))
            out["val_response_perplexity"] = float(np.exp(val.pooled("nll", response=True)))
            out["val_entropy"] = val.pooled("entropy")
            out["val_response_entropy"] = val.pooled("entropy", response=True)
        self.seconds["eval"] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ batches

    def train_batch(self, idx: np.ndarray) -> Batch:
        """The drawn records packed into rows of max_length; row count bucketed (`data.row_bucket`)."""
        return pack_drawn(self.data.train, idx, self.cfg.max_length, self.cfg.batch_size,
                          batch_divisor(self.model.mesh))

    # ------------------------------------------------------------------ the loop

    def _initial_state(self, checkpoints: Checkpoints) -> tuple[dict, int | None]:
        """(train state, the step it was restored from or None): the latest checkpoint, else step 0."""
        latest = checkpoints.latest()
        if latest is None:
            return init_train_state(self.tx, self.model.params, self.model.mesh), None
        state, sampler_state = checkpoints.restore(latest, abstract_train_state(self.tx, self.model.params,
                                                                                self.model.mesh))
        self.sampler.load_state(sampler_state)
        self.log(f"resuming {self.dir} from the checkpoint of step {int(state['step'])}")
        return state, latest

    def train(self, desc: str | None = None) -> dict:
        """Train to the last step (resuming from the latest checkpoint); `desc` labels the progress bar
        (default `train SAMPLER`). Returns the summary written to summary.json."""
        cfg = self.cfg
        checkpoints = Checkpoints(self.dir, cfg.keep_checkpoints, self.total_steps, ckpt.snapshot_dtype(cfg))
        state, restored = self._initial_state(checkpoints)
        start = int(state["step"])
        self.writer.rewind(start)
        checkpoints.rewind(start)  # param snapshots after the restored step, like the memorization snapshots
        step_fn = jax.jit(make_train_step(self.model.module, self.tx, self.schedule, cfg.loss_on, cfg.grad_accum,
                                          seed=cfg.seed), donate_argnums=(0,))
        ckpt_steps = set(ckpt.checkpoint_schedule(cfg, len(self.data.train)))
        peak = peak_flops_per_device(cfg.peak_tflops) * len(jax.devices())
        flops_per_token = train_flops_per_token(self.model.config, cfg.max_length)
        sharding = batch_sharding(self.model.mesh)
        interval = {"loss": 0.0, "n": 0, "real": 0, "seconds": 0.0}
        bar = progress_bar(self.total_steps, desc or f"train {cfg.sampler}", unit="step", initial=start)
        t_run = time.perf_counter()
        with self.writer.metrics(trackers.open_trackers(cfg, self.dir, start, resumed=restored is not None)) as emit:
            for step in range(start, self.total_steps + 1):
                if step in ckpt_steps:
                    if cfg.track_memorization and not self.writer.has_snapshot(step):
                        ev = self.evaluate(step, state["params"])
                        emit(ev)
                        bar.write(_eval_line(ev))
                    emit.flush()  # on an object store metrics.jsonl is stored whole: its lines so far, before the save
                    if step != start or restored is None:
                        checkpoints.save(step, state, self.sampler.state())
                    checkpoints.save_params(step, state["params"])  # unless one is complete (before a kill)
                if step == self.total_steps:
                    break
                self.sampler.before_step(step, state["params"], functools.partial(self._mbc_score, step))
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
                if self.sampler.uses_step_losses:  # the gather is a collective across hosts: only when read
                    self.sampler.after_step(step, batch.record_index, distributed.gather(m["per_record"]))
                real = int((batch.segment_ids != 0).sum())
                self.tokens["trained_real"] += real
                self.tokens["trained_padded"] += int(batch.input_ids.size)
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
        checkpoints.close(self.total_steps)
        self.seconds["checkpoint"] += checkpoints.seconds
        self.params = state["params"]
        return self._finish(time.perf_counter() - t_run)

    def _finish(self, seconds: float) -> dict:
        self.writer.write_sampling(self.data.train, self.sampler.counts, self.sampler.probabilities())
        summary = {"run": str(self.dir), "sampler": self.cfg.sampler, "steps": self.total_steps,
                   "epochs": self.total_steps / self.epoch_steps, "train_records": len(self.data.train),
                   "val_records": len(self.data.val), "wall_seconds": seconds,
                   **{f"{k}_seconds": v for k, v in self.seconds.items()},
                   "tokens": dict(self.tokens), "mbc_refreshes": self.mbc_refreshes,
                   "score_compile_seconds": self.scorer.compile_seconds,
                   "distinct_records_drawn": int((self.sampler.counts > 0).sum()),
                   "final": self.writer.last_eval()}
        self.writer.write_summary(summary)
        return summary


def _eval_line(ev: dict) -> str:
    no_eos = ev.get("train_response_exact_match_no_eos")
    s = (f"step {ev['step']}: train exact match {ev['train_exact_match']:.3f} "
         f"(response {ev['train_response_exact_match']:.3f}"
         + ("" if no_eos is None else f", without EOS {no_eos:.3f}")
         + f"; per-record mean {ev['train_exact_match_macro']:.3f}), train ppl {ev['train_perplexity']:.2f}")
    if "val_perplexity" in ev:
        s += f", val ppl {ev['val_perplexity']:.2f}"
    return s
