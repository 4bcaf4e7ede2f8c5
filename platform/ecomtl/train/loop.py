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

from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.collate import collate
from ecomtl.data.prepare import PreparedData
from ecomtl.data.sampling import ShardedBatches, build_sampler
from ecomtl.evaluation import AGGREGATE, eval_rows, flatten, predict_pairs, task_metrics
from ecomtl.model.bundle import write_bundle_files
from ecomtl.model.encoder import load_encoder, load_tokenizer
from ecomtl.model.multitask import MultiTaskModel
from ecomtl.train.deepspeed_config import deepspeed_config, use_bf16
from ecomtl.train.optim import build_optimizer, build_scheduler
from ecomtl.train.progress import Progress
from ecomtl.weighting import WEIGHTINGS

STATE_FILE = "trainer_state.json"
# Ray Train sends worker logs to the driver; print() would be echoed twice there.
log = logging.getLogger("ecomtl.train")
DS_DIR, DS_TAG, BUNDLE_DIR = "deepspeed", "state", "bundle"


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch.distributed as dist

    cfg = ExperimentConfig.model_validate(config["experiment"])
    data: PreparedData = config["data"]
    if not isinstance(data, PreparedData):  # an ObjectRef from the driver
        import ray

        data = ray.get(data)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    on_gpu = torch.cuda.is_available() and cfg.distributed.use_gpu is not False
    if not on_gpu:
        torch.set_num_threads(cfg.distributed.cpus_per_worker)
    torch.manual_seed(cfg.training.seed)

    tokenizer = load_tokenizer(cfg.model)
    specs = {t: {"head": task.head, "labels": data.label_infos[t], "options": {"class_balance": task.class_balance}}
             for t, task in cfg.tasks.items()}
    model = MultiTaskModel(load_encoder(cfg.model, len(tokenizer)), specs, cfg.model.pooling, cfg.model.dropout)
    optimizer = build_optimizer(model, cfg, on_gpu)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=build_scheduler(optimizer, cfg),
        config=deepspeed_config(cfg, on_gpu),
    )
    device = engine.device
    autocast = torch.bfloat16 if use_bf16(cfg, on_gpu) else None
    weighting = WEIGHTINGS.get(cfg.weighting.kind)(cfg)

    by_source = cfg.task_names_by_source()
    streamed = cfg.data.engine == "ray_data"
    sizes = config["train_sizes"] if streamed else {s: len(d) for s, d in data.splits["train"].items()}
    sampler = build_sampler(cfg.sampling.kind, sizes, cfg.training.seed, cfg.sampling.temperature,
                            cfg.sampling.weights)
    label_dtypes = {t: model.heads[t].label_dtype for t in cfg.tasks}
    pad_id = tokenizer.pad_token_id

    state = {"step": 0, "micro": 0, "source_batches": {s: 0 for s in cfg.sources}, "best": -math.inf,
             "bad_evals": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(os.path.join(d, DS_DIR), tag=DS_TAG)
            state = json.loads(Path(d, STATE_FILE).read_text())
            weighting.load_state_dict(state.get("weighting", {}))
        if rank == 0:
            log.info("[ecomtl] resumed from checkpoint at step %d", state["step"])
    next_batch = _batch_source(cfg, data, config, state, rank, world, device, pad_id, label_dtypes)

    def evaluate() -> dict:
        pairs = {}
        for source, tasks in by_source.items():
            val = data.splits["validation"][source]
            rows = eval_rows(val, cfg.training.eval_max_rows, seed=cfg.training.seed)
            per_rank = math.ceil(len(rows) / world)
            eval_bs = cfg.training.batch_size * 2
            local = predict_pairs(engine.module, val, tasks, rows[rank::world], eval_bs, pad_id, device,
                                  n_batches=math.ceil(per_rank / eval_bs), autocast_dtype=autocast)
            if world > 1:
                gathered = [None] * world
                dist.all_gather_object(gathered, local)
                local = {t: [p for part in gathered for p in part[t]] for t in tasks}
            pairs.update(local)
        return task_metrics(pairs, specs)

    def save_and_report(metrics: dict, timing: dict) -> None:
        # wall-clock marks (``timing/``, reported but not kept in the bundle): a sweep
        # measures its per-trial overhead outside the training steps from them
        timing = timing | {"timing/report_start": time.time()}
        flat = flatten(metrics) | {"step": state["step"]}
        state["history"].append({"kind": "eval", **flat})
        tmp = Path(tempfile.mkdtemp(prefix=f"ecomtl-ckpt-r{rank}-"))
        try:
            engine.save_checkpoint(str(tmp / DS_DIR), tag=DS_TAG)
            state["weighting"] = weighting.state_dict()
            if cfg.distributed.zero_stage == 3:
                with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
                    _write_rank0(tmp, rank, engine.module, tokenizer, cfg, data, flat, state)
            else:
                _write_rank0(tmp, rank, engine.module, tokenizer, cfg, data, flat, state)
            ray.train.report(flat | timing, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=f"step_{state['step']:07d}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    progress = Progress(cfg.training.steps, state["step"], world, engine.module.encoder, on_gpu)
    accum = cfg.training.grad_accum
    engine.train()
    stopped_early = False
    loop_start, train_s = time.time(), 0.0
    while state["step"] < cfg.training.steps and not stopped_early:
        t_step = time.perf_counter()
        step_losses: dict[str, float] = {}
        for _ in range(accum):
            source = sampler.source_at(state["micro"])
            state["micro"] += 1
            batch, real = next_batch(source)
            state["source_batches"][source] += 1
            tasks = by_source[source]
            with torch.autocast(device_type=device.type, dtype=autocast, enabled=autocast is not None):
                logits = engine(
                    batch["input_ids"].to(device), batch["attention_mask"].to(device), tasks,
                    token_type_ids=batch["token_type_ids"].to(device) if "token_type_ids" in batch else None,
                )
                losses = {t: model.heads[t].loss(logits[t], batch["labels"][t].to(device)) for t in tasks}
                loss = weighting.combine(losses, state["step"])
                if not real:  # this rank's stream is spent for the epoch; others' are not
                    loss = loss * 0.0
            engine.backward(loss)
            engine.step()
            step_losses.update({t: v.item() for t, v in losses.items()})
            progress.add({t: v for t, v in step_losses.items() if t in tasks}, len(batch["input_ids"]) if real else 0,
                         batch["input_ids"].shape[1], int(batch["attention_mask"].sum()))
        state["step"] += 1
        train_s += time.perf_counter() - t_step
        step = state["step"]
        if step % cfg.training.log_every == 0 or step == cfg.training.steps:
            text, record = progress.line(step, scheduler.get_last_lr()[0])
            state["history"].append({"kind": "train", **record})
            if rank == 0:
                log.info("[ecomtl] %s", text)
        if step % cfg.training.eval_every == 0 or step == cfg.training.steps:
            t_eval = time.perf_counter()
            metrics = evaluate()
            score = sum(m["score"] for m in metrics.values()) / len(metrics)
            if score > state["best"] + 1e-6:
                state["best"], state["bad_evals"] = score, 0
            else:
                state["bad_evals"] += 1
            patience = cfg.training.early_stopping_patience
            stopped_early = bool(patience and state["bad_evals"] >= patience and step < cfg.training.steps)
            state["stopped_early"] = stopped_early
            if rank == 0:
                summary = " ".join(f"{t} {m['score']:.3f}" for t, m in metrics.items())
                log.info(f"[ecomtl] eval step {step} | {AGGREGATE} {score:.4f} (best {state['best']:.4f}) | {summary}"
                         + (" | early stop" if stopped_early else ""))
            save_and_report(metrics, {"timing/loop_start": loop_start, "timing/train_s": train_s,
                                      "timing/eval_s": time.perf_counter() - t_eval})


def batch_size(cfg: ExperimentConfig, source: str) -> int:
    """Micro-batch per worker for one source (``sources.<s>.batch_size`` or the default)."""
    return cfg.sources[source].batch_size or cfg.training.batch_size


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
    batches = {
        s: ShardedBatches(len(d), batch_size(cfg, s), rank, world, cfg.training.seed + i, lengths=d.lengths())
        for i, (s, d) in enumerate(train.items())
    }

    def next_batch(source):
        rows = batches[source].batch(state["source_batches"][source])
        return collate(train[source], rows, pad_id, label_dtypes), True

    return next_batch


def _write_rank0(tmp: Path, rank: int, model, tokenizer, cfg, data: PreparedData, flat: dict, state: dict) -> None:
    if rank != 0:
        return
    bundle = tmp / BUNDLE_DIR
    bundle.mkdir()
    write_bundle_files(bundle, model, tokenizer, cfg, data.label_infos, data.max_lengths, flat)
    Path(tmp, STATE_FILE).write_text(json.dumps(state, default=float))
