"""Builds the Ray Train ``TorchTrainer`` for an experiment."""

from __future__ import annotations

import os
from typing import Optional

from ecomtl.config.schema import ExperimentConfig
from ecomtl.evaluation import AGGREGATE
from ecomtl.train.loop import train_loop_per_worker


def storage_path(cfg: ExperimentConfig) -> str:
    """Where Ray Train writes checkpoints: a local or shared-filesystem directory
    (expanded to an absolute path, which must be the same on every node), or a URI that
    pyarrow resolves to a filesystem (``s3://bucket/prefix``, ``gs://...``,
    ``abfs://...``, ``hdfs://...``, ``file:///abs/path``), passed on unchanged."""
    path = cfg.output.storage_path
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def local_dir(path: str) -> Optional[str]:
    """The local directory behind a storage path (plain path or ``file://`` URI), or
    None for remote storage."""
    if "://" not in path:
        return path
    if path.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(path).path)
    return None


def resolve_use_gpu(cfg: ExperimentConfig) -> bool:
    if cfg.distributed.use_gpu == "auto":
        from ecomtl.ray_env import cluster_has_gpus

        return cluster_has_gpus()
    return bool(cfg.distributed.use_gpu)


def build_trainer(cfg: ExperimentConfig, data_ref, run_name: str, callbacks=None, datasets=None,
                  train_sizes=None, stop_at=None, resume_from=None):
    """``datasets`` (``data.engine: ray_data``): the streamed train datasets by name, and
    ``train_sizes`` their row counts (for the source sampler). ``stop_at``: end this run
    at that step (with an evaluation and checkpoint there) while the schedule still runs
    to ``training.steps``; ``resume_from``: the path or URI of a Train checkpoint to start
    from when the run has none of its own (both for PBT's segments, ``tune/pbt.py``).
    Train V2 refuses ``TorchTrainer(resume_from_checkpoint=...)``: the loop takes it from
    its config instead, after ``ray.train.get_checkpoint()``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ecomtl.data.streaming import exact_split_config

    use_gpu = resolve_use_gpu(cfg)
    d = cfg.distributed
    resources = {"CPU": d.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json") | {"distributed": d.model_dump() | {"use_gpu": use_gpu}},
                           "data": data_ref, "train_sizes": train_sizes, "stop_at": stop_at,
                           "resume_from": resume_from},
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets=datasets or None,
        dataset_config=exact_split_config() if datasets else None,
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path(cfg),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.training.keep_checkpoints,
                checkpoint_score_attribute=AGGREGATE,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=d.max_failures),
            callbacks=callbacks or [],
        ),
    )
