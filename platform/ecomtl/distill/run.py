"""The driver of ``ecomtl distill`` / ``jobs/distill.py``: the student config with
``distill.teacher`` set, trained like ``ecomtl train`` (Ray Train + DeepSpeed; the
teacher's outputs are attached to the prepared train rows before they are shipped), and
the teacher's validation scores to compare with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ecomtl.config.load import config_from_dict
from ecomtl.config.schema import ExperimentConfig
from ecomtl.train.run import TrainOutcome


@dataclass
class DistillOutcome:
    train: TrainOutcome  # the student's run and bundle
    teacher: Path
    teacher_metrics: dict  # task → validation metrics of the teacher


def with_teacher(cfg: ExperimentConfig, teacher: str | Path) -> ExperimentConfig:
    """``cfg`` with ``distill.teacher`` set (the section's defaults where it has none)."""
    data = cfg.model_dump(mode="json")
    data["distill"] = (data.get("distill") or {}) | {"teacher": str(Path(teacher).expanduser().resolve())}
    return config_from_dict(data)


def teacher_validation(teacher: Path, data_root: str) -> dict:
    """The teacher's per-task validation metrics: those its bundle was exported with
    (full validation split), or, where it has none, scored now."""
    metrics = json.loads((teacher / "metrics.json").read_text())
    if "validation" in metrics:
        return metrics["validation"]
    from ecomtl.evaluation import evaluate_bundle

    return evaluate_bundle(str(teacher), data_root=data_root, split="validation")["tasks"]


def distill_experiment(teacher: str | Path, cfg: ExperimentConfig, run_name: Optional[str] = None,
                       log=print) -> DistillOutcome:
    from ecomtl.train.run import train_experiment

    cfg = with_teacher(cfg, teacher)
    out = train_experiment(cfg, run_name=run_name, log=log)
    path = Path(cfg.distill.teacher)
    return DistillOutcome(out, path, teacher_validation(path, cfg.resolved_data_root()))
