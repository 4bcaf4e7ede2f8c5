"""Distillation end to end: the teacher's targets land on the right rows, what cannot be
distilled is refused before any work, and a tiny teacher trains a smaller student on
Ray Train + DeepSpeed (2 workers, ZeRO-2) from its soft targets alone (alpha 1: the
student never sees a label), which then scores the fixed set far above where it started."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecomtl.config.load import ConfigError, config_from_dict
from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.distill.run import distill_experiment, with_teacher
from ecomtl.distill.teacher import attach_teacher_outputs, check_attached, check_teacher, same_tokenizer
from ecomtl.evaluation import evaluate_bundle
from ecomtl.model.build import build_model, load_tokenizer
from ecomtl.model.bundle import load_bundle, save_bundle

STUDENT = ["name=student", "model.num_layers=1",  # the first of the tiny BERT's 2 layers: a smaller student
           "distill.alpha=1.0", "distill.temperature=2.0"]


@pytest.fixture
def student_cfg(fixed_set_data):
    def make(data_root, teacher, *extra):
        return with_teacher(config_from_dict(fixed_set_data(data_root), [*STUDENT, *extra]), teacher)

    return make


def test_teacher_targets_are_the_teachers_outputs_on_each_row(teacher_bundle, data_root, student_cfg):
    cfg = student_cfg(data_root, teacher_bundle)
    tok = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tok, splits=("train",))
    summary = attach_teacher_outputs(cfg, data, tok)
    assert "on 32 train rows for rating, stars, attributes" in summary
    teacher = load_bundle(teacher_bundle)
    dtypes = {t: teacher.model.heads[t].label_dtype for t in cfg.tasks}
    for source, tasks in cfg.task_names_by_source().items():
        split = data.splits["train"][source]
        for r in (0, 7, 15):  # one row alone, no padding: what the length-sorted batches must have stored
            batch = collate(split, [r], tok.pad_token_id, dtypes)
            with torch.no_grad():
                alone = teacher.model(batch, tasks)
            for t in tasks:
                stored = np.asarray(split.teacher[t][r])
                expected = np.asarray(teacher.model.heads[t].teacher_targets(alone[t].float(), batch)[0])
                assert stored.shape == expected.shape, (t, r)
                np.testing.assert_allclose(stored, expected, atol=0.1)  # bf16 teacher where the CPU has it
    assert data.splits["train"]["queries"].teacher["attributes"][3].shape[0] == len(
        data.splits["train"]["queries"].input_ids[3])  # per sub-token, the row's own length


def test_what_cannot_be_distilled_is_refused_naming_the_field(teacher_bundle, data_root, tmp_path, student_cfg,
                                                               fixed_set_data, decoder_tokenizer_dir):
    teacher = load_bundle(teacher_bundle)
    cfg = student_cfg(data_root, teacher_bundle)
    infos = teacher.label_infos
    swapped = infos | {"rating": infos["rating"] | {"names": list(reversed(infos["rating"]["names"]))}}
    with pytest.raises(ConfigError, match=r"tasks.rating.label: the label space differs from the teacher's"):
        check_teacher(cfg, swapped, teacher.spec, list(cfg.tasks))
    more = fixed_set_data(data_root)
    more["tasks"]["rating2"] = more["tasks"]["rating"]
    with pytest.raises(ConfigError, match=r"distill.tasks.rating2: the teacher has no task 'rating2'"):
        check_teacher(config_from_dict(more), infos | {"rating2": infos["rating"]}, teacher.spec, ["rating2"])
    with pytest.raises(ConfigError, match=r"tasks.stars.head: 'classification' here but 'regression'"):
        wrong = fixed_set_data(data_root)
        wrong["tasks"]["stars"]["head"] = "classification"
        check_teacher(config_from_dict(wrong), infos | {"stars": infos["rating"]}, teacher.spec, ["stars"])

    # a teacher on another tokenizer: token-level targets cannot line up with the student's sub-tokens
    other = config_from_dict(fixed_set_data(data_root), ["name=other", f"model.pretrained={decoder_tokenizer_dir}"])
    other_tok = load_tokenizer(other.model)
    assert not same_tokenizer(other_tok, teacher.tokenizer) and same_tokenizer(
        load_tokenizer(cfg.model), teacher.tokenizer)
    other_bundle = save_bundle(tmp_path / "other", build_model(other, infos, other_tok), other_tok, other, infos,
                               teacher.max_lengths, {})
    cfg = student_cfg(data_root, other_bundle)
    data = prepare_data(cfg, load_tokenizer(cfg.model), splits=("train",))
    with pytest.raises(ConfigError, match=r"distill.teacher: task 'attributes' is distilled token by token"):
        attach_teacher_outputs(cfg, data, load_tokenizer(cfg.model))
    # a worker handed rows without the teacher's outputs (a driver that never ran it) refuses to train
    with pytest.raises(ConfigError, match="the train rows came without the teacher's outputs"):
        check_attached(cfg, data)
    check_attached(config_from_dict(fixed_set_data(data_root), ["distill.alpha=0.0"]), data)  # labels only: fine


@pytest.mark.integration
def test_tiny_teacher_trains_a_smaller_student_on_ray(teacher_bundle, ray_local, tmp_path, data_root,
                                                       student_cfg):
    cfg = student_cfg(data_root, teacher_bundle, f"output.storage_path={tmp_path}", "distributed.num_workers=2",
                      "distributed.zero_stage=2", "training.steps=40", "training.eval_every=20",
                      "training.log_every=5", "optim.lr=3e-3", "optim.head_lr=1e-2", "optim.grad_clip=5.0",
                      "optim.warmup_ratio=0.0", "training.eval_max_rows=32")
    out = distill_experiment(teacher_bundle, cfg, run_name="distill-zero2", log=lambda *_: None)

    def on_fixed_set(bundle):
        tasks = evaluate_bundle(str(bundle), data_root=data_root, split="train")["tasks"]
        return {"rating": tasks["rating"]["accuracy"], "stars": tasks["stars"]["r2"],
                "attributes": tasks["attributes"]["token_accuracy"]}

    teacher = on_fixed_set(teacher_bundle)
    torch.manual_seed(cfg.training.seed)  # the student as it started (same seed, same shape)
    tok = load_tokenizer(cfg.model)
    infos = load_bundle(out.train.bundle).label_infos
    start = on_fixed_set(save_bundle(tmp_path / "start", build_model(cfg, infos, tok), tok, cfg, infos,
                                     load_bundle(out.train.bundle).max_lengths, {}))
    student = on_fixed_set(out.train.bundle)
    print({"teacher": teacher, "student at start": start, "distilled student": student})
    assert min(teacher.values()) > 0.9, teacher  # the teacher knows the fixed set
    for task in ("rating", "attributes"):  # accuracies: from the teacher's targets alone
        assert student[task] > start[task] + 0.25 and student[task] > 0.8, (task, start, student)
    assert student["stars"] > 0.5 > start["stars"], (start, student)

    bundle = load_bundle(out.train.bundle)  # an ordinary bundle, one encoder layer
    assert len(bundle.model.backbone.model.encoder.layer) == 1
    assert bundle.config.distill.teacher == str(teacher_bundle) and set(out.teacher_metrics) == set(cfg.tasks)
    train = [h for h in out.train.history if h["kind"] == "train"]
    assert train[-1]["train_loss/rating"] < 0.5 * train[0]["train_loss/rating"]  # the soft loss, falling
