"""Dynamic padding: a batch is padded to its own longest row, not to max_length."""

from __future__ import annotations

import numpy as np
import torch

from ecomtl.data.prepare import PreparedSplit


def collate(split: PreparedSplit, rows, pad_id: int, label_dtypes: dict[str, torch.dtype]) -> dict:
    rows = list(rows)
    width = max(len(split.input_ids[r]) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64) if split.token_type_ids is not None else None
    for i, r in enumerate(rows):
        n = len(split.input_ids[r])
        ids[i, :n] = split.input_ids[r]
        mask[i, :n] = 1
        if types is not None:
            types[i, :n] = split.token_type_ids[r]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
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
    return batch
