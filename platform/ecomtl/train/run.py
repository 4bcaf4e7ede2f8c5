"""The driver side of ``ecomtl train`` / ``jobs/train.py``: prepare data once, fit the
TorchTrainer, pick the best checkpoint, score it on the whole validation split and
export it as a bundle."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

from ecomtl.config.schema import ExperimentConfig
from ecomtl.evaluation import AGGREGATE


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: str
    bundle: Path
    metrics: dict  # full validation metrics of the exported bundle
    selection: dict  # metrics of the periodic evaluation it was chosen on
    history: list[dict]
    plot: Optional[Path]
    data_report: dict
    wall_s: float
    steps_done: int
    gates: dict  # soft sharing: task → {expert: mean gate weight}; empty for hard sharing


def default_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"


def bundle_destination(cfg: ExperimentConfig, run_dir: str) -> Path:
    from ecomtl.train.trainer import local_dir

    if cfg.output.bundle_dir:
        return Path(cfg.output.bundle_dir).expanduser().resolve()
    local = local_dir(run_dir)
    if local is None:  # remote storage: the bundle is a local directory next to the CWD
        return Path("bundles", os.path.basename(run_dir)).resolve()
    return Path(local, "bundle")


def best_checkpoint(result):
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if AGGREGATE in m]
    if not scored:
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint (error: {result.error})")
        return result.checkpoint, result.metrics or {}
    return max(scored, key=lambda cm: cm[1][AGGREGATE])


def train_experiment(cfg: ExperimentConfig, run_name: Optional[str] = None, log=print,
                     callbacks=None) -> TrainOutcome:
    """Reusing ``run_name`` resumes that run from its latest checkpoint."""
    import ray

    from ecomtl.data.pipeline import prepare_training_data
    from ecomtl.evaluation import evaluate_bundle
    from ecomtl.lifecycle.init_from import init_label_infos, tokenizer_location
    from ecomtl.model.bundle import copy_bundle
    from ecomtl.model.build import load_tokenizer
    from ecomtl.plots import plot_training
    from ecomtl.ray_env import init_ray
    from ecomtl.report import data_report_table
    from ecomtl.train.loop import BUNDLE_DIR, STATE_FILE
    from ecomtl.train.trainer import build_trainer, storage_path

    t0 = time.perf_counter()
    run_name = run_name or default_run_name(cfg)
    root = cfg.resolved_data_root()
    cfg = cfg.model_copy(update={"data_root": root})
    init_ray()
    log(f"[ecomtl] run {run_name}: data from {root}")
    label_infos = init_label_infos(cfg, root)  # training.init_from: the bundle's label spaces
    prepared = prepare_training_data(cfg, load_tokenizer(cfg.model, tokenizer_location(cfg)), root, label_infos)
    data = prepared.data
    if cfg.distill is not None:  # the teacher runs once, here: workers get its outputs with the rows
        from ecomtl.distill.teacher import attach_teacher_outputs

        log(f"[ecomtl] {attach_teacher_outputs(cfg, data, load_tokenizer(cfg.model), root)}")
    log(f"[ecomtl] {prepared.summary()}")
    log(data_report_table(data.report()))
    trainer = build_trainer(cfg, ray.put(data), run_name, callbacks=callbacks, datasets=prepared.datasets,
                            train_sizes=prepared.sizes)
    result = trainer.fit()
    if result.error:
        raise result.error
    checkpoint, selection = best_checkpoint(result)
    run_dir = f"{storage_path(cfg)}/{run_name}"
    with checkpoint.as_directory() as d:
        full = evaluate_bundle(os.path.join(d, BUNDLE_DIR), data_root=root, split="validation")
        metrics = {"validation": full["tasks"], AGGREGATE: full[AGGREGATE], "selection": selection,
                   "checkpoint_step": selection.get("step")} | ({"gates": full["gates"]} if "gates" in full else {})
        bundle = copy_bundle(os.path.join(d, BUNDLE_DIR), bundle_destination(cfg, run_dir), metrics=metrics)
    history = []
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            state = json.loads(Path(d, STATE_FILE).read_text())
            history = state["history"]
    plot = None
    from ecomtl.train.trainer import local_dir

    if history and local_dir(run_dir) is not None:
        plot = plot_training(history, Path(local_dir(run_dir), "training.png"), title=run_name)
    return TrainOutcome(run_name, run_dir, bundle, full["tasks"], selection, history, plot,
                        data.report(), time.perf_counter() - t0, int(selection.get("step", 0)),
                        full.get("gates", {}))
