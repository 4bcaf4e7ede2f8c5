"""The teacher's outputs on the student's train rows, computed once on the driver.

    attach_teacher_outputs(cfg, data, tokenizer)   # before ray.put(data)

For every task the student distils (``alpha > 0``) the teacher bundle's head runs over
each train row of the task's source, in length-sorted batches, and its
``teacher_targets`` (logits, a value, per-token logits) land in
``PreparedSplit.teacher[task]``, aligned with the rows: ``collate`` hands them to the
student's head as ``batch["teacher"][task]``, so the Ray Train workers never load the
teacher. Refused before any work: a task the teacher lacks, another head type, another
label space (class i must mean the same class), and, for token-level heads, another
tokenizer (the targets are per sub-token). Sequence-level heads may use a teacher with
another tokenizer: the same rows are tokenised again with the teacher's.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np
import torch

from ecomtl.config.load import ConfigError
from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.collate import collate
from ecomtl.data.prepare import PreparedData, PreparedSplit
from ecomtl.tasks import TASK_HEADS


def attach_teacher_outputs(cfg: ExperimentConfig, data: PreparedData, tokenizer, root: Optional[str] = None) -> str:
    """Fill ``data.splits["train"][source].teacher``; returns a one-line summary."""
    from ecomtl.model.bundle import BundleError, load_bundle

    settings = cfg.distill
    if not settings or not settings.teacher:
        raise ConfigError("distill.teacher: no teacher bundle given (ecomtl distill TEACHER_BUNDLE CONFIG)")
    t0 = time.perf_counter()
    try:
        teacher = load_bundle(settings.teacher)
    except (BundleError, OSError) as err:
        raise ConfigError(f"distill.teacher: {err}") from None
    tasks = [t for t in cfg.tasks if settings.settings(t)[0] > 0]
    check_teacher(cfg, data.label_infos, teacher.spec, tasks)
    same = same_tokenizer(tokenizer, teacher.tokenizer)
    for t in tasks:
        if not same and TASK_HEADS.get(cfg.tasks[t].head).level == "token":
            raise ConfigError(
                f"distill.teacher: task {t!r} is distilled token by token, so the student must use the teacher's "
                f"tokenizer, and model.pretrained {cfg.model.pretrained!r} tokenises differently from "
                f"{teacher.path}/backbone; use a student on the teacher's tokenizer or set distill.tasks.{t}.alpha=0")
    autocast = _autocast_dtype()
    rows = 0
    for source, names in cfg.task_names_by_source().items():
        names = [t for t in names if t in tasks]
        if not names:
            continue
        split = data.splits["train"][source]
        view, pad_id = split, tokenizer.pad_token_id
        if not same:
            view = retokenized(cfg, source, names[0], data, teacher, root or cfg.resolved_data_root())
            pad_id = teacher.tokenizer.pad_token_id
        dtypes = {t: TASK_HEADS.get(cfg.tasks[t].head).label_dtype for t in view.labels}
        split.teacher = run_teacher(teacher.model, view, names, settings.batch_size, pad_id, dtypes, autocast)
        rows += len(split)
    secs = time.perf_counter() - t0
    return (f"distill: teacher {teacher.path} ({teacher.version}) on {rows} train rows for {', '.join(tasks)} "
            f"in {secs:.0f} s ({rows / max(secs, 1e-9):.0f} rows/s)"
            + ("" if same else "; sequence tasks re-tokenised with the teacher's tokenizer"))


def check_attached(cfg: ExperimentConfig, data: PreparedData) -> None:
    """On a worker: a run that distils got the teacher's outputs with its train rows (a
    driver that prepares data without ``attach_teacher_outputs``, e.g. a sweep, would
    otherwise train on the labels alone without a word)."""
    if cfg.distill is None or not any(cfg.distill.settings(t)[0] > 0 for t in cfg.tasks):
        return
    if not any(split.teacher for split in data.splits.get("train", {}).values()):
        raise ConfigError("distill: the train rows came without the teacher's outputs; distil with `ecomtl distill` "
                          "or `ecomtl train` (sweeps do not run a teacher)")


def check_teacher(cfg: ExperimentConfig, label_infos: dict, spec: dict, tasks: list[str]) -> None:
    """Each distilled task exists in the teacher with the same head type and label space."""
    theirs = spec["tasks"]
    for t in tasks:
        if t not in theirs:
            raise ConfigError(f"distill.tasks.{t}: the teacher has no task {t!r} (it has {', '.join(theirs)}); "
                              f"set distill.tasks.{t}.alpha=0 to train it on its labels alone")
        if theirs[t]["head"] != cfg.tasks[t].head:
            raise ConfigError(f"tasks.{t}.head: {cfg.tasks[t].head!r} here but {theirs[t]['head']!r} in the teacher")
        mine, other = label_infos[t].get("names"), theirs[t]["labels"].get("names")
        if mine != other:
            raise ConfigError(f"tasks.{t}.label: the label space differs from the teacher's (here {mine}, teacher "
                              f"{other}): output i must mean the same class in both")


def same_tokenizer(a, b) -> bool:
    """Same vocabulary, normaliser, pre-tokeniser and special tokens (fast tokenizers'
    full definition, minus the per-call truncation/padding settings)."""

    def definition(tok) -> dict:
        d = json.loads(tok.backend_tokenizer.to_str())
        d.pop("truncation", None)
        d.pop("padding", None)
        return d

    return definition(a) == definition(b)


@torch.inference_mode()
def run_teacher(model, split: PreparedSplit, tasks: list[str], batch_size: int, pad_id: int,
                label_dtypes: dict, autocast: Optional[torch.dtype] = None) -> dict[str, list]:
    """task → per-row targets of ``split`` (rows in their own order); ``label_dtypes``:
    of the split's labelled tasks, for ``collate``."""
    order = np.argsort(split.lengths(), kind="stable")  # length-sorted batches: little padding
    out: dict[str, list] = {t: [None] * len(split) for t in tasks}
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = collate(split, chunk, pad_id, label_dtypes)
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            outputs = model(batch, tasks)
        for t in tasks:
            try:
                targets = model.heads[t].teacher_targets(outputs[t].float(), batch)
            except NotImplementedError as err:
                raise ConfigError(f"distill.tasks.{t}: {err}; set distill.tasks.{t}.alpha=0 to train it on its "
                                  "labels alone") from None
            for r, target in zip(chunk, targets):
                out[t][r] = target
    model.train(was_training)
    return {t: _compact(v) for t, v in out.items()}


def _compact(targets: list) -> list | np.ndarray:
    """One float32 array when every row's target has one shape (cheap to ship), else a list."""
    arrays = [np.asarray(x, dtype=np.float32) for x in targets]
    if all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return arrays


def retokenized(cfg: ExperimentConfig, source: str, task: str, data: PreparedData, teacher,
                root: str) -> PreparedSplit:
    """The student's train rows of ``source`` (the same rows, in the same order: the same
    row policy selects them) tokenised with the teacher's tokenizer and lengths."""
    from ecomtl.data.prepare import select_rows, tokenize
    from ecomtl.data.sources import open_split

    raw = open_split(source, cfg, root, "train")
    selected = select_rows(source, cfg, raw.rows(), len(raw), data.label_infos)
    inputs, pairs = selected[0], selected[1]
    length = teacher.max_lengths[teacher.spec["tasks"][task]["source"]]  # ``task``: one the teacher has
    enc = tokenize(teacher.tokenizer, cfg.sources[source], inputs, pairs, length)
    ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    types = [np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
    if len(ids) != len(data.splits["train"][source]):
        raise RuntimeError(f"sources.{source}: re-tokenised {len(ids)} rows, the student has "
                           f"{len(data.splits['train'][source])}")
    return PreparedSplit(ids, types, {})


def _autocast_dtype() -> Optional[torch.dtype]:
    """bf16 where the CPU runs it natively (as ``evaluate_bundle``): the soft targets do
    not need more than bf16's precision."""
    from ecomtl.train.deepspeed_config import cpu_supports_bf16

    return torch.bfloat16 if cpu_supports_bf16() else None
