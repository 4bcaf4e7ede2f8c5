"""Each head's distillation loss and the alpha mix, against values worked out by hand;
the soft targets' trip from teacher head to batch; the schema section."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ecomtl.config.load import ConfigError, load_config
from ecomtl.config.schema import DistillConfig
from ecomtl.data.collate import stack_rows
from ecomtl.distill.loss import mix_losses
from ecomtl.tasks import IGNORE, TASK_HEADS

LN3 = math.log(3.0)
# T = 2, teacher logits [2 ln 3, 0] → softmax(t/T) = [3/4, 1/4]; student logits [0, 0] → [1/2, 1/2]:
# KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.304099 - 0.173287 = 0.130812; times T² = 4 → 0.523248
KL_ROW = 0.523248


def classification_head():
    return TASK_HEADS.get("classification")(4, {"names": ["0", "1"], "counts": [1, 1]})


def test_classification_soft_loss_is_t2_kl_over_every_row():
    head = classification_head()
    student = torch.tensor([[0.0, 0.0], [2 * LN3, 0.0]])
    teacher = torch.tensor([[2 * LN3, 0.0], [2 * LN3, 0.0]])  # row 2: student = teacher → KL 0
    labels = torch.tensor([0, IGNORE])  # an unlabelled row still learns from the teacher
    assert head.distill_loss(student, teacher, labels, 2.0).item() == pytest.approx(KL_ROW / 2, abs=1e-5)
    # T = 1: softmax(t) = [9/10, 1/10]: KL = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.529008 - 0.160944 = 0.368064
    assert head.distill_loss(student[:1], teacher[:1], labels[:1], 1.0).item() == pytest.approx(0.368064, abs=1e-5)


def test_mix_weights_soft_by_alpha_and_hard_by_one_minus_alpha():
    head = classification_head()
    student = torch.tensor([[0.0, 0.0], [2 * LN3, 0.0]])
    batch = {"labels": {"c": torch.tensor([0, 1])}, "teacher": {"c": torch.tensor([[2 * LN3, 0.0], [2 * LN3, 0.0]])}}
    hard = {"c": head.loss(student, batch["labels"]["c"]), "other": torch.tensor(7.0)}
    # hard: row 1 CE = ln 2 = 0.693147; row 2 CE = -log(1 / (9 + 1)) = ln 10 = 2.302585 → mean 1.497866
    assert hard["c"].item() == pytest.approx(1.497866, abs=1e-5)
    settings = DistillConfig(alpha=0.5, temperature=2.0, tasks={"c": {"alpha": 0.25}})
    assert settings.settings("c") == (0.25, 2.0) and settings.settings("other") == (0.5, 2.0)
    mixed = mix_losses(SimpleNamespace(heads={"c": head}), {"c": student}, batch, hard, settings)
    # 0.25 · 0.261624 + 0.75 · 1.497866 = 0.065406 + 1.123400
    assert mixed["c"].item() == pytest.approx(1.188806, abs=1e-5)
    assert mixed["other"].item() == 7.0  # no teacher targets: the hard loss as it was


def test_tagging_soft_loss_reads_labelled_first_sub_tokens_only():
    head = TASK_HEADS.get("tagging")(4, {"names": ["O", "B-x"], "types": ["x"]})
    student = torch.tensor([[[0.0, 0.0], [9.0, -9.0], [0.0, 0.0]]])
    teacher = torch.tensor([[[2 * LN3, 0.0], [-9.0, 9.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE, 1]])  # position 1 (a later sub-token) disagrees wildly: ignored
    assert head.distill_loss(student, teacher, labels, 2.0).item() == pytest.approx(KL_ROW / 2, abs=1e-5)
    assert head.distill_loss(student, teacher, torch.full((1, 3), IGNORE), 2.0).item() == 0.0  # not NaN


def test_regression_soft_loss_is_mse_to_the_teacher_in_the_students_units():
    head = TASK_HEADS.get("regression")(4, {"mean": 3.0, "std": 2.0})
    teacher_head = TASK_HEADS.get("regression")(4, {"mean": 1.0, "std": 1.0})
    # the teacher's standardised outputs [4, 2] are 5 and 3 stars in label units
    raw = teacher_head.teacher_targets(torch.tensor([4.0, 2.0]), {})
    assert [float(x) for x in raw] == [5.0, 3.0]
    # the student standardises them with its own mean 3, std 2 → [1, 0]; student outputs [0, 0]: MSE 0.5
    loss = head.distill_loss(torch.zeros(2), torch.tensor([5.0, 3.0]), torch.tensor([float("nan"), 0.0]), 2.0)
    assert loss.item() == pytest.approx(0.5)


def test_token_targets_drop_padding_and_are_padded_back_per_batch():
    head = TASK_HEADS.get("tagging")(4, {"names": ["O", "B-x"], "types": ["x"]})
    logits = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    rows = head.teacher_targets(logits, {"attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])})
    assert [r.shape for r in rows] == [(3, 2), (1, 2)]
    batch = stack_rows([rows[1], rows[0]])  # a batch of width 3: the short row padded with zeros
    assert batch.shape == (2, 3, 2) and batch[0, 0].tolist() == [6.0, 7.0] and batch[0, 1:].abs().sum() == 0
    assert stack_rows([np.float32(1.5), np.float32(2.0)]).tolist() == [1.5, 2.0]  # one value per row


def test_schema_distill_section(data_root):
    from pathlib import Path

    tiny = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"
    cfg = load_config(tiny, ["distill.teacher=/some/bundle", "distill.tasks={match: {alpha: 0.0}}"])
    assert cfg.distill.settings("match") == (0.0, 2.0) and cfg.distill.settings("rating") == (0.5, 2.0)
    with pytest.raises(ConfigError, match=r"distill.tasks: unknown task\(s\) \['nope'\]"):
        load_config(tiny, ["distill.tasks={nope: {alpha: 1.0}}"])
    with pytest.raises(ConfigError, match="distill.alpha"):
        load_config(tiny, ["distill.alpha=1.5"])
    with pytest.raises(ConfigError, match="data.engine 'ray_data' streams them"):
        load_config(tiny, ["distill.alpha=1.0", "data.engine=ray_data"])


def test_outputs_that_are_not_class_logits_need_the_heads_own_hook():
    # a score per row (ranking) or vocabulary logits per token (generation): refused, not stored as if classes
    head = classification_head()
    with pytest.raises(NotImplementedError, match=r"outputs \(3,\), not \[rows, classes\]"):
        head.teacher_targets(torch.zeros(3), {})
    with pytest.raises(NotImplementedError, match=r"outputs \(2, 4, 9\)"):
        head.teacher_targets(torch.zeros(2, 4, 9), {})
