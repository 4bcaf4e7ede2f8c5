"""Dynamic padding: a batch is padded to its own longest row, not to max_length. The
same ``pad_rows`` serves training batches and served requests, so both feed the model
identical tensors."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ecomtl.data.prepare import PreparedSplit


def pad_rows(input_ids: Sequence[Sequence[int]], pad_id: int,
             token_type_ids: Optional[Sequence[Sequence[int]]] = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` (and ``token_type_ids``)."""
    width = max(len(x) for x in input_ids)
    ids = np.full((len(input_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), width), dtype=np.int64)
    types = np.zeros((len(input_ids), width), dtype=np.int64) if token_type_ids is not None else None
    for i, row in enumerate(input_ids):
        n = len(row)
        ids[i, :n] = row
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = token_type_ids[i]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def collate(split: PreparedSplit, rows, pad_id: int, label_dtypes: dict[str, torch.dtype]) -> dict:
    rows = list(rows)
    types = None if split.token_type_ids is None else [split.token_type_ids[r] for r in rows]
    batch = pad_rows([split.input_ids[r] for r in rows], pad_id, types)
    width = batch["input_ids"].shape[1]
    labels = {}
    for task, values in split.labels.items():
        first = values[rows[0]]
        if isinstance(first, np.ndarray):  # token-level labels
            arr = np.full((len(rows), width), -100, dtype=np.int64)
            for i, r in enumerate(rows):
                arr[i, : len(values[r])] = values[r]
            labels[task] = torch.from_numpy(arr)
        else:
            labels[task] = torch.tensor([values[r] for r in rows], dtype=label_dtypes[task])
    batch["labels"] = labels
    if split.groups is not None:  # ranking heads compare the rows of each group
        batch["group"] = torch.from_numpy(split.groups[np.asarray(rows)])
    if split.teacher:  # distillation: the teacher's targets for these rows
        batch["teacher"] = {t: stack_rows([values[r] for r in rows]) for t, values in split.teacher.items()}
    return batch


def stack_rows(rows: list) -> torch.Tensor:
    """Per-row arrays as one tensor; rows of unequal length (per-token targets) are
    right-padded along their first axis (0.0, or -100 for integer rows)."""
    arrays = [np.asarray(r) for r in rows]
    longest = max((len(a) for a in arrays if a.ndim), default=0)
    if all(a.shape == arrays[0].shape for a in arrays):
        return torch.from_numpy(np.stack(arrays))
    integer = np.issubdtype(arrays[0].dtype, np.integer)
    out = np.full((len(arrays), longest, *arrays[0].shape[1:]), -100 if integer else 0.0,
                  dtype=np.int64 if integer else np.float32)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return torch.from_numpy(out)
