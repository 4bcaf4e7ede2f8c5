"""The per-worker training loop that Ray Train runs on every worker.

    TorchTrainer(train_loop_per_worker, train_loop_config={"experiment": ..., "data": ref})

Each micro-step draws one source with a seed shared by all ranks (ZeRO needs the same
modules called on every rank), encodes the rank's shard of a batch once, runs every head
of that source, weights the losses and lets DeepSpeed do backward/step (accumulation,
clipping, ZeRO partitioning). Every ``eval_every`` steps: evaluate on every rank's share
of validation, all-gather, checkpoint (DeepSpeed shards from every rank + a complete
bundle from rank 0), ``ray.train.report``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ecomtl.backbones.base import SourceDropout, training_attention
from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.collate import collate
from ecomtl.data.prepare import PreparedData
from ecomtl.data.sampling import GroupedBatches, ShardedBatches, sampler_from_config
from ecomtl.distill.loss import mix_losses
from ecomtl.distill.teacher import check_attached
from ecomtl.evaluation import (AGGREGATE, aggregate, eval_rows, flatten, predict_pairs, score_weights, task_metrics,
                               task_specs)
from ecomtl.lifecycle.init_from import start_from, tokenizer_location
from ecomtl.model.bundle import write_bundle_files
from ecomtl.model.build import build_model, load_tokenizer
from ecomtl.model.multitask import to_device
from ecomtl.train.deepspeed_config import deepspeed_config, use_bf16
from ecomtl.train.optim import build_optimizer, build_scheduler
from ecomtl.train.progress import Progress
from ecomtl.tasks import TASK_HEADS
from ecomtl.weighting import WEIGHTINGS

STATE_FILE = "trainer_state.json"
# the weighting's own optimizer (uncertainty's Adam moments), one torch file per rank
WEIGHTING_OPTIM_DIR = "weighting_optimizer"
# Ray Train sends worker logs to the driver; print() would be echoed twice there.
log = logging.getLogger("ecomtl.train")
DS_DIR, DS_TAG, BUNDLE_DIR = "deepspeed", "state", "bundle"


def train_loop_per_worker(config: dict) -> None:
    TrainingRun(config).run()


class TrainingRun:
    """One worker's share of a run, in the order it happens: ``__init__`` sets up
    (config, data, model, engine, sampler, resume), ``run`` alternates ``train_step`` and,
    every ``eval_every`` steps, ``evaluate`` + ``save_and_report``."""

    def __init__(self, config: dict):
        import ray.train

        self.cfg = cfg = ExperimentConfig.model_validate(config["experiment"])
        self.data = self._data(config)
        check_attached(cfg, self.data)  # distillation: the teacher's outputs came with the rows
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.on_gpu = torch.cuda.is_available() and cfg.distributed.use_gpu is not False
        if not self.on_gpu:
            torch.set_num_threads(cfg.distributed.cpus_per_worker)
        torch.manual_seed(cfg.training.seed)
        self._setup_model()
        self.by_source = cfg.task_names_by_source()
        self.specs = task_specs(cfg, self.data.label_infos)  # each head's selection metric
        self.score_weights = score_weights(cfg)
        streamed = cfg.data.engine == "ray_data"
        sizes = config["train_sizes"] if streamed else {s: len(d) for s, d in self.data.splits["train"].items()}
        self.sampler = sampler_from_config(cfg, sizes)
        self.sources_per_step = cfg.sampling.per_step(len(sizes))
        self.label_dtypes = {t: self.model.heads[t].label_dtype for t in cfg.tasks}
        self.pad_id = self.tokenizer.pad_token_id
        self.state = {"step": 0, "micro": 0, "source_batches": {s: 0 for s in cfg.sources}, "best": -math.inf,
                      "bad_evals": 0, "history": []}
        self._resume(config.get("resume_from"))
        self.next_batch = _batch_source(cfg, self.data, config, self.state, self.rank, self.world, self.device,
                                        self.pad_id, self.label_dtypes)
        self.progress = Progress(cfg.training.steps, self.state["step"], self.world, self.model.backbone, self.on_gpu)
        # PBT trains in segments (tune/pbt.py): this run ends there, the schedule does not
        self.stop_at = min(config.get("stop_at") or cfg.training.steps, cfg.training.steps)

    # -- setup ----------------------------------------------------------------------------
    @staticmethod
    def _data(config: dict) -> PreparedData:
        data = config["data"]
        if not isinstance(data, PreparedData):  # an ObjectRef from the driver
            import ray

            data = ray.get(data)
        return data

    def _setup_model(self) -> None:
        import deepspeed

        cfg = self.cfg
        self.tokenizer = load_tokenizer(cfg.model, tokenizer_location(cfg))
        self.model = build_model(cfg, self.data.label_infos, self.tokenizer)
        self.model.backbone.set_attention(training_attention(cfg.model.attention, self.on_gpu))
        # training.init_from: the bundle's tensors, on every rank before DeepSpeed partitions them
        self.l2sp = start_from(self.model, cfg, (lambda m: log.info(m)) if self.rank == 0 else None)
        optimizer = build_optimizer(self.model, cfg, self.on_gpu)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=build_scheduler(optimizer, cfg),
            config=deepspeed_config(cfg, self.on_gpu),
        )
        self.device = self.engine.device
        if self.world == 1 and cfg.distributed.zero_stage == 0:
            # One rank has nothing to all-reduce, but DeepSpeed would still copy every
            # gradient into flat buffers and back after each backward: measured +77 ms of
            # a 726 ms MiniLM step (benchmarks/train_throughput.py, "in-process" row).
            self.engine.enable_backward_allreduce = False
        self.autocast = torch.bfloat16 if use_bf16(cfg, self.on_gpu) else None
        self.source_dropout = SourceDropout(self.model.backbone_dropouts,
                                            {s: src.backbone_dropout for s, src in cfg.sources.items()})
        self.weighting = WEIGHTINGS.get(cfg.weighting.kind)(cfg)
        # Gradient-level weightings combine per-task gradients of what the tasks share.
        self.shared_params = [p for name, p in self.model.named_parameters()
                              if p.requires_grad and not name.startswith("heads.")]
        # Learnable weighting tensors (uncertainty's log-variances) step outside DeepSpeed:
        # a few scalars, the same on every rank after ``sync``, at any ZeRO stage.
        own = self.weighting.parameters()
        self.weighting_optimizer = torch.optim.Adam(own, lr=cfg.optim.head_lr or cfg.optim.lr * 10) if own else None

    def _resume(self, start=None) -> None:
        """From the run's own latest checkpoint (a restarted worker group), else from
        ``start``: a Train checkpoint's path or URI that another run wrote (PBT's segments)."""
        import ray.train

        checkpoint = ray.train.get_checkpoint() or (ray.train.Checkpoint(start) if start else None)
        if not checkpoint:
            return
        with checkpoint.as_directory() as d:
            self.engine.load_checkpoint(os.path.join(d, DS_DIR), tag=DS_TAG)
            self.state = json.loads(Path(d, STATE_FILE).read_text())
            self.weighting.load_state_dict(self.state.get("weighting", {}))
            load_weighting_optimizer(self.weighting_optimizer, d, self.rank)
            self.sampler.load_state_dict(self.state.get("sampler", {}))
        if self.rank == 0:
            log.info("[ecomtl] resumed from checkpoint at step %d", self.state["step"])

    # -- one optimizer step ------------------------------------------------------------------
    def train_step(self) -> None:
        """``grad_accum`` micro-steps, each on ``sampling.sources_per_step`` sources (the
        same on every rank): one forward per source, their losses weighted together, one
        backward."""
        state = self.state
        for _ in range(self.cfg.training.grad_accum):
            sources = self.sampler.sources_at(state["micro"], self.sources_per_step)
            state["micro"] += 1
            losses, outputs, self.last_batches = {}, {}, []
            with self._autocast():
                for source in sources:
                    batch, real = self.next_batch(source)
                    state["source_batches"][source] += 1
                    self.source_dropout.before(source)
                    tasks = self.by_source[source]
                    # counted on the host before the copy: reading them off a GPU would sync
                    mask = batch["attention_mask"]
                    rows, width, tokens = (len(mask), mask.shape[1], int(mask.sum())) if real else (0, mask.shape[1], 0)
                    batch = to_device(batch, self.device)
                    out = self.engine(batch, tasks)
                    part = self.model.losses(out, batch)
                    if "teacher" in batch:  # distillation: each head's soft loss mixed with its hard one
                        part = mix_losses(self.model, out, batch, part, self.cfg.distill)
                    if not real:  # this rank's stream is spent for the epoch; others' are not
                        part = {t: v * 0.0 for t, v in part.items()}
                    self.progress.add({t: v.detach() for t, v in part.items()}, rows, width, tokens)
                    losses.update(part)
                    outputs.update(out)
                    self.last_batches.append((batch, tasks))
                loss = self._weighted(losses, outputs)
                if self.l2sp is not None:  # training.l2sp: toward the init_from weights
                    loss = loss + self.l2sp.penalty()
            self.engine.backward(loss)
            self.engine.step()
        self._after_step()
        state["step"] += 1

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def _weighted(self, losses: dict, outputs: dict) -> torch.Tensor:
        w = self.weighting
        if w.owns_backward:  # its surrogate's gradient is the combined per-task gradient
            return w.backward_loss(losses, self.shared_params, outputs=outputs)
        return w.combine(losses, self.state["step"])

    def _after_step(self) -> None:
        """Once per optimizer step: the weighting's own optimizer, its post-step update
        (FAMO: the updated model's losses on the last micro-step's batches), then the same
        state on every rank."""
        w = self.weighting
        if self.weighting_optimizer is not None:
            self.weighting_optimizer.step()
            self.weighting_optimizer.zero_grad()
        if w.updates_after_step:
            after = {}
            with torch.no_grad(), self._autocast():
                for batch, tasks in self.last_batches:
                    after.update(self.model.losses(self.engine(batch, tasks), batch))
            w.update({t: v.detach() for t, v in after.items()})
        w.sync()

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Every rank scores its share of validation; pairs are all-gathered, so every
        rank (and rank 0's report to Tune) sees the metrics of the whole sample."""
        import torch.distributed as dist

        cfg, pairs = self.cfg, {}
        for source, tasks in self.by_source.items():
            val = self.data.splits["validation"][source]
            rows = eval_rows(val, cfg.training.eval_max_rows, seed=cfg.training.seed)
            per_rank = math.ceil(len(rows) / self.world)
            eval_bs = cfg.training.batch_size * 2
            local = predict_pairs(self.engine.module, val, tasks, rows[self.rank::self.world], eval_bs, self.pad_id,
                                  self.device, n_batches=math.ceil(per_rank / eval_bs), autocast_dtype=self.autocast)
            if self.world > 1:
                gathered = [None] * self.world
                dist.all_gather_object(gathered, local)
                local = {t: [p for part in gathered for p in part[t]] for t in tasks}
            pairs.update(local)
        return task_metrics(pairs, self.specs)

    def track_best(self, metrics: dict) -> tuple[float, bool]:
        """The aggregate score, and whether early stopping ends the run now."""
        state, step = self.state, self.state["step"]
        score = aggregate(metrics, self.score_weights)
        if score > state["best"] + 1e-6:
            state["best"], state["bad_evals"] = score, 0
        else:
            state["bad_evals"] += 1
        patience = self.cfg.training.early_stopping_patience
        stop = bool(patience and state["bad_evals"] >= patience and step < self.cfg.training.steps)
        state["stopped_early"] = stop
        if self.rank == 0:
            summary = " ".join(f"{t} {m['score']:.3f}" for t, m in metrics.items())
            log.info(f"[ecomtl] eval step {step} | {AGGREGATE} {score:.4f} (best {state['best']:.4f}) | {summary}"
                     + (" | early stop" if stop else ""))
        return score, stop

    def source_scores(self, metrics: dict) -> dict[str, float]:
        """Each source's mean selection score over its tasks that count in the aggregate
        (what a metric-driven sampler steers by)."""
        out = {}
        for source, tasks in self.by_source.items():
            counted = [t for t in tasks if self.score_weights.get(t, 1.0) > 0] or tasks
            out[source] = sum(metrics[t]["score"] for t in counted) / len(counted)
        return out

    # -- checkpoint ------------------------------------------------------------------------
    def save_and_report(self, metrics: dict, timing: dict) -> None:
        """DeepSpeed shards from every rank + a complete bundle from rank 0, one report.
        ``timing/`` marks are reported but not kept in the bundle: a sweep measures its
        per-trial overhead outside the training steps from them."""
        import deepspeed
        import ray.train

        state = self.state
        timing = timing | {"timing/report_start": time.time()}
        flat = flatten(metrics, self.score_weights) | {"step": state["step"]}
        state["history"].append({"kind": "eval", **flat})
        tmp = Path(tempfile.mkdtemp(prefix=f"ecomtl-ckpt-r{self.rank}-"))
        try:
            self.engine.save_checkpoint(str(tmp / DS_DIR), tag=DS_TAG)
            save_weighting_optimizer(self.weighting_optimizer, tmp, self.rank)
            state["weighting"] = self.weighting.state_dict()
            state["sampler"] = self.sampler.state_dict()
            if self.cfg.distributed.zero_stage == 3:
                with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
                    self._write_rank0(tmp, flat)
            else:
                self._write_rank0(tmp, flat)
            ray.train.report(flat | timing, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"step_{state['step']:07d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_rank0(self, tmp: Path, flat: dict) -> None:
        if self.rank != 0:
            return
        bundle = tmp / BUNDLE_DIR
        bundle.mkdir()
        write_bundle_files(bundle, self.engine.module, self.tokenizer, self.cfg, self.data.label_infos,
                           self.data.max_lengths, flat)
        Path(tmp, STATE_FILE).write_text(json.dumps(self.state, default=float))

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        cfg, state = self.cfg, self.state
        self.engine.train()
        loop_start, train_s = time.time(), 0.0
        while state["step"] < self.stop_at:
            t_step = time.perf_counter()
            self.train_step()
            train_s += time.perf_counter() - t_step
            step = state["step"]
            last = step == self.stop_at
            if step % cfg.training.log_every == 0 or last:
                text, record = self.progress.line(step, self.scheduler.get_last_lr()[0])
                state["history"].append({"kind": "train", **record})
                if self.rank == 0:
                    log.info("[ecomtl] %s", text)
            if step % cfg.training.eval_every == 0 or last:
                t_eval = time.perf_counter()
                metrics = self.evaluate()
                _, stop = self.track_best(metrics)
                self.sampler.observe(self.source_scores(metrics), state["micro"])
                self.save_and_report(metrics, {"timing/loop_start": loop_start, "timing/train_s": train_s,
                                               "timing/eval_s": time.perf_counter() - t_eval})
                self.progress.restart_window()
                if stop:
                    break


def _weighting_optimizer_file(checkpoint_dir, rank: int) -> Path:
    return Path(checkpoint_dir, WEIGHTING_OPTIM_DIR, f"rank{rank:05d}.pt")


def save_weighting_optimizer(optimizer, checkpoint_dir, rank: int) -> None:
    """The weighting's own optimizer state (uncertainty's Adam moments and step count)
    into a training checkpoint. Per rank, like DeepSpeed's shards: each rank steps it with
    its own shard's gradient before ``sync`` averages the tensors, so the moments differ."""
    if optimizer is None:
        return
    path = _weighting_optimizer_file(checkpoint_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(optimizer.state_dict(), path)


def load_weighting_optimizer(optimizer, checkpoint_dir, rank: int) -> bool:
    """Restore what ``save_weighting_optimizer`` wrote for this rank; False (fresh
    moments) where there is none: a checkpoint from before they were saved, or a rank the
    saving run did not have. Only the state is taken: lr and betas stay the current
    config's (a resumed or PBT-mutated ``optim.head_lr`` applies)."""
    path = _weighting_optimizer_file(checkpoint_dir, rank)
    if optimizer is None or not path.is_file():
        return False
    saved = torch.load(path, map_location="cpu", weights_only=True)
    for group, current in zip(saved["param_groups"], optimizer.param_groups):
        group.update({k: v for k, v in current.items() if k != "params"})
    optimizer.load_state_dict(saved)
    return True


def batch_size(cfg: ExperimentConfig, source: str) -> int:
    """Micro-batch per worker for one source (``sources.<s>.batch_size`` or the default)."""
    return cfg.sources[source].batch_size or cfg.training.batch_size


def row_batches(cfg: ExperimentConfig, source: str, split, rank: int, world: int, seed: int):
    """Which rows batch k of ``source`` gives this rank: length-bucketed shards, or for a
    grouped source whole groups (``groups_per_batch`` per rank, capped at
    ``max_group_size`` rows keeping what its heads mark to keep)."""
    src = cfg.sources[source]
    if split.groups is None:
        return ShardedBatches(len(split), batch_size(cfg, source), rank, world, seed, lengths=split.lengths())
    keep = None
    for t in cfg.task_names_by_source()[source]:
        marked = TASK_HEADS.get(cfg.tasks[t].head).keep_in_group(split.labels[t])
        if marked is not None:
            keep = marked if keep is None else keep | marked
    return GroupedBatches(split.groups, src.groups_per_batch, rank, world, seed, src.max_group_size, keep)


def _batch_source(cfg, data: PreparedData, config: dict, state: dict, rank: int, world: int, device, pad_id,
                  label_dtypes):
    """``next_batch(source) -> (collated batch, real)`` for either data engine. The
    in-memory one is a pure function of the saved counters; the streamed one keeps its
    per-source epoch/batch position in ``state["stream"]`` (saved with checkpoints)."""
    by_source = cfg.task_names_by_source()
    if cfg.data.engine == "ray_data":
        from ecomtl.data.streaming import StreamedBatches, to_split

        stream = StreamedBatches({s: batch_size(cfg, s) for s in cfg.sources}, cfg.training.seed,
                                 cfg.data.shuffle_buffer, device, position=state.get("stream"))
        state["stream"] = stream.position

        def next_batch(source):
            raw, real = stream.next(source)
            split = to_split(raw, by_source[source])
            state["stream"] = stream.position
            return collate(split, range(len(split)), pad_id, label_dtypes), real

        return next_batch

    train = data.splits["train"]
    batches = {s: row_batches(cfg, s, d, rank, world, cfg.training.seed + i) for i, (s, d) in enumerate(train.items())}

    def next_batch(source):
        rows = batches[source].batch(state["source_batches"][source])
        return collate(train[source], rows, pad_id, label_dtypes), True

    return next_batch
