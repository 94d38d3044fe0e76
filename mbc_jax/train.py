"""Supervised fine-tuning: the optimizer, the train step, and the `Trainer` that runs them.

    trainer = create_trainer(cfg)   # mbc_jax.assemble: run folder, model, data, then Trainer(...)
    trainer.train()                 # resumes from the latest checkpoint when there is one

The trainer is handed its model and data (`Trainer(cfg, run_dir, model, data)`): where they come from
(a folder, a hub id, the demo) is `mbc_jax.assemble`'s business. `step_program` builds what a step
compiles (optimizer, schedule, jitted step, batch shapes) for the Trainer and for `mbc-jax plan` alike.

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
from mbc_jax.checkpoints import Checkpoints, abstract_train_state, init_train_state
from mbc_jax.config import TrainConfig
from mbc_jax.data import Batch, Example, TargetReport, Template, pack_drawn
from mbc_jax.flops import peak_flops_per_device, train_flops_per_token
from mbc_jax.loss import fused_nll_loss, segment_sums, targets
from mbc_jax.models import Model
from mbc_jax.models.config import DROPOUT_FIELDS
from mbc_jax.progress import progress_bar
from mbc_jax.run_folder import RunWriter
from mbc_jax.samplers import ESS_WARN_SHARE, make_sampler, weight_health
from mbc_jax.scoring import Scorer, Scores
from mbc_jax.sharding import batch_divisor, batch_sharding


class TrainingDiverged(UserError):
    pass


# The run's totals kept in every full checkpoint (beside the sampler's state), in this order, so that
# summary.json counts every leg of a killed and resumed run exactly once.
PROGRESS_KEY = "run_totals"
PROGRESS = ("trained_real", "trained_padded", "mbc_scored_real", "mbc_scored_padded", "mbc_refreshes",
            "train_seconds", "score_seconds", "eval_seconds", "checkpoint_seconds", "score_compile_seconds")


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


@dataclasses.dataclass(frozen=True)
class StepProgram:
    """What a training step compiles, built once for the Trainer and for `mbc-jax plan` (`step_program`):
    the optimizer and its schedule, the jitted step (state donated), the run's micro-steps (None when the
    training record count is unknown and `steps` unset), and the shape of the largest train batch."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    step: Any
    total_steps: int | None
    max_length: int
    segments: int  # records per batch: the most a train batch's rows hold (`record_index`'s width)
    divisor: int  # the mesh's batch divisor: a train batch's rows are a multiple of it

    @property
    def batch_rows(self) -> int:
        """The most rows a train batch takes (`Trainer.train_batch`): one record per row, rounded up to the mesh."""
        return -(-self.segments // self.divisor) * self.divisor

    def abstract_batch(self, sharding: Any) -> dict:
        """The largest train batch as abstract arrays (`abstract_batch`), for ahead-of-time compilation."""
        return abstract_batch(self.batch_rows, self.max_length, self.segments, sharding)


def step_program(cfg: TrainConfig, module: Any, mesh: Any, train_records: int | None) -> StepProgram:
    """The `StepProgram` of `cfg` for the model `module` on `mesh`, its length counted from `train_records`
    (`checkpoints.total_steps`; with neither it nor `steps`, the schedule's length is a placeholder)."""
    total = ckpt.total_steps(cfg, train_records) if train_records is not None else cfg.steps or None
    tx, schedule = make_optimizer(cfg, (total or 0) // cfg.grad_accum)
    step = jax.jit(make_train_step(module, tx, schedule, cfg.loss_on, cfg.grad_accum, seed=cfg.seed),
                   donate_argnums=(0,))
    return StepProgram(tx, schedule, step, total, cfg.max_length, cfg.batch_size, batch_divisor(mesh))


def abstract_batch(rows: int, length: int, segments: int, sharding: Any) -> dict:
    """A packed batch of `rows` x `length` tokens with a `record_index` of `rows` x `segments`, as
    `jax.ShapeDtypeStruct`s (the layout of the train step's and the scorer's batches)."""
    tok = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=sharding)
    return {"input_ids": tok, "segment_ids": tok, "positions": tok,
            "response_mask": jax.ShapeDtypeStruct((rows, length), jnp.bool_, sharding=sharding),
            "record_index": jax.ShapeDtypeStruct((rows, segments), jnp.int32, sharding=sharding)}


@dataclasses.dataclass
class RunData:
    """The tokenized training and validation records of a run."""

    train: list[Example]
    val: list[Example]
    targets: TargetReport | None = None  # training records left out (no loss target) and cut responses


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """One run's training loop over a loaded model and tokenized data (built by `mbc_jax.assemble`)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, model: Model, data: RunData, log=print):
        self.cfg, self.dir, self.model, self.data, self.log = cfg, run_dir, model, data, log
        self.writer = RunWriter(run_dir)
        n = len(data.train)
        self.program = step_program(cfg, model.module, model.mesh, n)
        self.total_steps = self.program.total_steps
        self.epoch_steps = max(1, math.ceil(n / cfg.batch_size))  # micro-steps per epoch-equivalent
        self.checkpoint_every = cfg.checkpoint_every or self.epoch_steps
        self.mbc_k = cfg.mbc.k or self.epoch_steps
        self.tx, self.schedule = self.program.tx, self.program.schedule
        self.scorer = Scorer(model.module, model.mesh, seq_len=cfg.max_length,
                             tokens_per_batch=cfg.score_tokens_per_batch,
                             eos_id=Template.from_spec(cfg.template).eos_id(model.tokenizer),  # no-EOS exact match
                             tokenizer=model.tokenizer)  # the snapshots' zlib ratio (issue 32)
        self.train_batches = self.scorer.batches(data.train)
        self.scorer.max_segments = self.train_batches[0].record_index.shape[1] if self.train_batches else 1
        self.val_batches = self.scorer.batches(data.val) if data.val else []
        self.batch_sharding = batch_sharding(model.mesh)
        self.sampler = make_sampler(cfg, n, self.mbc_k)
        self._train_scores: tuple[int, Scores] | None = None
        self.seconds = {"train": 0.0, "score": 0.0, "eval": 0.0, "checkpoint": 0.0}
        # positions computed: trained (real = record tokens; padded = the batch shapes), and scored for MBC
        self.tokens = {"trained_real": 0, "trained_padded": 0, "mbc_scored_real": 0, "mbc_scored_padded": 0}
        self.mbc_refreshes = 0
        self._compile_before = 0.0  # the scorer's compile seconds in earlier legs
        self.health: list[dict] = []  # mbc_health.jsonl: the weights' health at each MBC refresh
        self._checkpoint_steps = set(ckpt.checkpoint_schedule(cfg, n))
        self.legs: list[dict] = []
        self._leg_open, self._leg_t0 = False, time.perf_counter()

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
        if fresh and not (count >= len(order) and self._shares_eval(step)):
            self.tokens["mbc_scored_real"] += sum(len(train[i]) for i in which)
            self.tokens["mbc_scored_padded"] += sum(b.input_ids.size for b in batches)
        self.seconds["score"] += time.perf_counter() - t0
        return which, scores

    def _shares_eval(self, step: int) -> bool:
        """Whether a full MBC re-score at `step` is the evaluation's pass (counted once, as evaluation): at a
        checkpoint step with memorization tracked. A resumed run re-scores there once more, but its totals
        count what the run computes, as an uninterrupted run's do."""
        return self.cfg.track_memorization and step in self._checkpoint_steps

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
        return pack_drawn(self.data.train, idx, self.program.max_length, self.program.segments,
                          self.program.divisor)

    # ------------------------------------------------------------------ the loop

    def _initial_state(self, checkpoints: Checkpoints) -> tuple[dict, int | None]:
        """(train state, the step it was restored from or None): the latest checkpoint, else step 0."""
        latest = checkpoints.latest()
        if latest is None:
            return init_train_state(self.tx, self.model.params, self.model.mesh), None
        state, sampler_state = checkpoints.restore(latest, abstract_train_state(self.tx, self.model.params,
                                                                                self.model.mesh))
        self.sampler.load_state(sampler_state)
        self._load_progress(sampler_state)
        self.log(f"resuming {self.dir} from the checkpoint of step {int(state['step'])}")
        return state, latest

    # ------------------------------------------------------------------ the run's totals, across legs

    def checkpoint_state(self, checkpoint_seconds: float) -> dict[str, np.ndarray]:
        """What a full checkpoint stores beside the train state: the sampler's state and the run's totals so
        far (tokens, MBC refreshes, seconds; `PROGRESS`), so a resumed run's summary counts every leg once."""
        totals = {**self.tokens, "mbc_refreshes": self.mbc_refreshes,
                  **{f"{k}_seconds": v for k, v in self.seconds.items()},
                  "checkpoint_seconds": self.seconds["checkpoint"] + checkpoint_seconds,
                  "score_compile_seconds": self._compile_before + self.scorer.compile_seconds}
        return {**self.sampler.state(), PROGRESS_KEY: np.asarray([totals[k] for k in PROGRESS], np.float64)}

    def _load_progress(self, saved: dict) -> None:
        """The run's totals at the restored checkpoint (none in checkpoints written before they were kept)."""
        if PROGRESS_KEY not in saved:
            return
        totals = dict(zip(PROGRESS, np.asarray(saved[PROGRESS_KEY]).tolist()))
        for k in self.tokens:
            self.tokens[k] = int(totals[k])
        self.mbc_refreshes = int(totals["mbc_refreshes"])
        for k in self.seconds:
            self.seconds[k] = totals[f"{k}_seconds"]
        self._compile_before = totals["score_compile_seconds"]

    def _open_leg(self, start: int) -> None:
        """Starts this process's leg in legs.json (none when the run is already complete)."""
        self.legs = self.writer.read_legs()
        self._leg_open = start < self.total_steps
        if self._leg_open:
            self.legs.append({"leg": len(self.legs) + 1, "start_step": start, "end_step": start,
                              "wall_seconds": 0.0})
        self._leg_t0 = time.perf_counter()

    def _record_leg(self, step: int) -> None:
        """This leg's progress so far, written to legs.json (at every checkpoint, so a killed leg keeps it)."""
        if self._leg_open:
            self.legs[-1].update(end_step=step, wall_seconds=round(time.perf_counter() - self._leg_t0, 3))
            self.writer.write_legs(self.legs)

    def train(self, desc: str | None = None) -> dict:
        """Train to the last step (resuming from the latest checkpoint); `desc` labels the progress bar
        (default `train SAMPLER`). Returns the summary written to summary.json."""
        cfg = self.cfg
        checkpoints = Checkpoints(self.dir, cfg.keep_checkpoints, self.total_steps, ckpt.snapshot_dtype(cfg))
        state, restored = self._initial_state(checkpoints)
        start = int(state["step"])
        self.writer.rewind(start)
        self.health = [r for r in self.writer.read_health() if r["step"] < start]  # refreshes follow checkpoints
        checkpoints.rewind(start)  # param snapshots after the restored step, like the memorization snapshots
        at_checkpoint = _CheckpointHook(self, checkpoints, skip_save=start if restored is not None else None)
        interval = _LogInterval(self)
        bar = progress_bar(self.total_steps, desc or f"train {cfg.sampler}", unit="step", initial=start)
        self._open_leg(start)
        with self.writer.metrics(trackers.open_trackers(cfg, self.dir, start, resumed=restored is not None)) as emit:
            for step in range(start, self.total_steps + 1):
                at_checkpoint(step, state, emit, bar)
                if step == self.total_steps:
                    break
                idx, batch = self._draw(step, state["params"])
                state, m, seconds = self._step(step, state, idx, batch)
                interval.add(step, batch, m, seconds, emit, bar)
        bar.close()
        checkpoints.close(self.total_steps)
        self.seconds["checkpoint"] += checkpoints.seconds
        self.params = state["params"]
        self._record_leg(self.total_steps)
        return self._finish()

    def _draw(self, step: int, params) -> tuple[np.ndarray, Batch]:
        """(drawn record indices, their packed batch) of `step`, after the sampler's refresh (`refresh`)."""
        health = self.refresh(step, params)
        if health is not None and health["warning"]:
            self.log(health["warning"])
        idx = self.sampler.draw(step)
        return idx, self.train_batch(idx)

    def refresh(self, step: int, params) -> dict | None:
        """The sampler's refresh before drawing `step` (MBC re-scores every k steps, through `_mbc_score`).
        After a refresh: how concentrated the new weights are (`samplers.weight_health`, its heaviest records
        left out) as a record in mbc_health.jsonl; returned with `heaviest` and `warning` (`health_warning`:
        one line, or None). None when the sampler did not re-score. `mbc-jax plan --health` calls it at step 0."""
        refreshes = self.mbc_refreshes
        self.sampler.before_step(step, params, functools.partial(self._mbc_score, step))
        if self.mbc_refreshes == refreshes:
            return None
        h = weight_health(self.sampler.probabilities(), self.sampler.counts)
        record = {"step": step, **{k: v for k, v in h.items() if k != "heaviest"}}
        self.health = [r for r in self.health if r["step"] < step] + [record]
        self.writer.write_health(self.health)
        return {**record, "heaviest": h["heaviest"],
                "warning": health_warning(step, h, self.sampler, self.data.train)}

    def _step(self, step: int, state: dict, idx: np.ndarray, batch: Batch) -> tuple[dict, dict, float]:
        """One jitted train step on `batch`: (new state, metrics with the loss as a float, its seconds);
        the per-record losses go to the sampler when it reads them."""
        arrays = distributed.put_batch(batch, self.batch_sharding)  # each host feeds only the rows it owns
        t0 = time.perf_counter()
        state, m = self.program.step(state, arrays)
        m = {**m, "loss": float(m["loss"])}
        seconds = time.perf_counter() - t0
        self.seconds["train"] += seconds
        self._check_finite(step, m["loss"], idx)
        if self.sampler.uses_step_losses:  # the gather is a collective across hosts: only when read
            self.sampler.after_step(step, batch.record_index, distributed.gather(m["per_record"]))
        return state, m, seconds

    def _check_finite(self, step: int, loss: float, idx: np.ndarray) -> None:
        """Stops the run at a non-finite loss, naming the step and the batch's records (the last checkpoint stays)."""
        if not math.isfinite(loss):
            ids = [self.data.train[i].id for i in idx]
            raise TrainingDiverged(
                f"step {step}: the loss is {loss}; the batch held records {', '.join(ids)}. The last "
                f"checkpoint is kept; lower learning_rate or set grad_clip, then rerun to resume")

    def _finish(self) -> dict:
        """summary.json: the whole run, every leg once (totals restored with the checkpoints; the legs'
        wall-clock from legs.json)."""
        self.writer.write_sampling(self.data.train, self.sampler.counts, self.sampler.probabilities())
        summary = {"run": str(self.dir), "sampler": self.cfg.sampler, "steps": self.total_steps,
                   "epochs": self.total_steps / self.epoch_steps, "train_records": len(self.data.train),
                   "val_records": len(self.data.val),
                   "wall_seconds": sum(leg["wall_seconds"] for leg in self.legs), "legs": self.legs,
                   **{f"{k}_seconds": v for k, v in self.seconds.items()},
                   "tokens": dict(self.tokens), "mbc_refreshes": self.mbc_refreshes,
                   "score_compile_seconds": self._compile_before + self.scorer.compile_seconds,
                   "distinct_records_drawn": int((self.sampler.counts > 0).sum()),
                   **({"targets": self.data.targets.as_dict()} if self.data.targets else {}),
                   **({"mbc_weights": {k: v for k, v in weight_health(self.sampler.probabilities(),
                                                                      self.sampler.counts).items() if k != "heaviest"}}
                      if self.cfg.sampler == "mbc" else {}),
                   "final": self.writer.last_eval()}
        self.writer.write_summary(summary)
        return summary


def health_warning(step: int, health: dict, sampler: Any, records: list[Example]) -> str | None:
    """The one warning line of an MBC refresh whose weights' effective sample size (`health`, from
    `samplers.weight_health`) falls below `ESS_WARN_SHARE` of N, naming the heaviest records with their
    weight, perplexity and response length; None above it."""
    if health["ess_share"] >= ESS_WARN_SHARE:
        return None
    p = sampler.probabilities()
    named = ", ".join(f"{records[i].id} (p {p[i]:.2f}, perplexity {sampler.perplexity[i]:.4g}, "
                      f"{records[i].response_tokens} response tokens)" for i in health["heaviest"])
    return (f"warning: step {step}: MBC's weights are concentrated: effective sample size {health['ess']:.1f} of "
            f"{len(records)} records ({health['ess_share']:.1%} < {ESS_WARN_SHARE:.0%}); heaviest: {named}")


class _CheckpointHook:
    """At every checkpoint step: the memorization snapshot and eval record (unless the snapshot exists),
    metrics.jsonl stored, then the full train state (unless `skip_save`: the step just restored) and the
    param snapshot."""

    def __init__(self, trainer: Trainer, checkpoints: Checkpoints, skip_save: int | None):
        self.trainer, self.checkpoints, self.skip_save = trainer, checkpoints, skip_save
        self.steps = trainer._checkpoint_steps

    def __call__(self, step: int, state: dict, emit: Any, bar: Any) -> None:
        if step not in self.steps:
            return
        t = self.trainer
        if t.cfg.track_memorization and not t.writer.has_snapshot(step):
            ev = t.evaluate(step, state["params"])
            emit(ev)
            bar.write(_eval_line(ev))
        emit.flush()  # on an object store metrics.jsonl is stored whole: its lines so far, before the save
        if step != self.skip_save:
            self.checkpoints.save(step, state, t.checkpoint_state(self.checkpoints.seconds))
        self.checkpoints.save_params(step, state["params"])  # unless one is complete (before a kill)
        t._record_leg(step)


class _LogInterval:
    """Token counts, and the log record every `log_every` steps (and at the last): the loss, throughput
    and MFU over the steps since the previous record."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.peak = peak_flops_per_device(trainer.cfg.peak_tflops) * len(jax.devices())
        self.flops_per_token = train_flops_per_token(trainer.model.config, trainer.cfg.max_length)
        self._reset()

    def _reset(self) -> None:
        self.loss, self.n, self.real, self.seconds = 0.0, 0, 0, 0.0

    def add(self, step: int, batch: Batch, m: dict, seconds: float, emit: Any, bar: Any) -> None:
        """Counts step `step`'s tokens, loss and seconds; emits the log record when one is due."""
        t = self.trainer
        real = int((batch.segment_ids != 0).sum())
        t.tokens["trained_real"] += real
        t.tokens["trained_padded"] += int(batch.input_ids.size)
        self.loss, self.n, self.real, self.seconds = (self.loss + m["loss"], self.n + 1, self.real + real,
                                                      self.seconds + seconds)
        bar.update(1)
        if (step + 1) % t.cfg.log_every == 0 or step + 1 == t.total_steps:
            rec = self.record(step + 1, batch, m, real)
            emit(rec)
            bar.set_postfix(loss=f"{rec['loss_mean']:.3f}", lr=f"{rec['learning_rate']:.2e}")
            self._reset()

    def record(self, step: int, batch: Batch, m: dict, real: int) -> dict:
        """The metrics.jsonl record after `step` steps: this step's loss and the interval's means."""
        t = self.trainer
        tps = self.real / max(self.seconds, 1e-9)
        return {"step": step, "epoch": round(step / t.epoch_steps, 3), "loss": m["loss"],
                "loss_mean": self.loss / self.n, "learning_rate": float(m["learning_rate"]),
                "grad_norm": float(m["grad_norm"]), "tokens": int(batch.input_ids.size), "real_tokens": real,
                "tokens_per_s": tps, "mfu": tps * self.flops_per_token / self.peak,
                "step_seconds": self.seconds / self.n,
                "score_seconds": t.seconds["score"], "train_seconds": t.seconds["train"]}


def _eval_line(ev: dict) -> str:
    no_eos = ev.get("train_response_exact_match_no_eos")
    s = (f"step {ev['step']}: train exact match {ev['train_exact_match']:.3f} "
         f"(response {ev['train_response_exact_match']:.3f}"
         + ("" if no_eos is None else f", without EOS {no_eos:.3f}")
         + f"; per-record mean {ev['train_exact_match_macro']:.3f}), train ppl {ev['train_perplexity']:.2f}")
    if "val_perplexity" in ev:
        s += f", val ppl {ev['val_perplexity']:.2f}"
    return s
