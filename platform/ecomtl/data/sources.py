"""Reading one split of one source, with either data engine.

Everything downstream (label maps, ``auto`` lengths, the bad-row policy, tokenisation)
is written once against ``RawSplit``; the engines differ only in how rows are read:

- ``memory``: Hugging Face ``datasets`` on the driver (the whole split in memory);
- ``ray_data``: a lazy Ray Data dataset (local path, shared filesystem or cloud URI),
  never materialised on the driver; only label columns and a row sample are pulled.

Both check the same things and fail with the same messages (source, split, column)."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ecomtl.config.schema import ExperimentConfig, SourceConfig


class DataError(ValueError):
    """A dataset that cannot be read as configured; the message names source and column."""


def source_path(src: SourceConfig, root: str, split: str) -> str:
    return src.path.format(root=root, split=split)


def input_columns(src: SourceConfig) -> list[str]:
    return (list(src.text or []) + list(src.text_pair or []) + ([src.tokens] if src.tokens else [])
            + ([src.group] if src.group and src.group not in (src.text or []) + (src.text_pair or []) else []))


def plain_values(values) -> list:
    """A column as plain Python values (lists for list cells, None for NaN handled by
    ``is_missing`` downstream), whatever the engine handed over (numpy from Ray Data)."""
    out = []
    for v in values:
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, np.generic):
            v = v.item()
        out.append(v)
    return out


class RawSplit:
    """One split of one source as read, before any row policy."""

    engine: str

    def __init__(self, name: str, cfg: ExperimentConfig, root: str, split: str):
        self.name, self.src, self.split = name, cfg.sources[name], split
        self.path = source_path(self.src, root, split)
        if "://" not in self.path and not os.path.exists(self.path):
            raise DataError(f"sources.{name}: no file for split {split!r} at {self.path}")

    def _check_columns(self) -> None:
        missing = [c for c in input_columns(self.src) if c not in self.columns]
        if missing:
            raise DataError(f"sources.{self.name}: column(s) {missing} not in {self.path}; columns: {self.columns}")

    def _limit(self) -> bool:
        return bool(self.src.max_rows) and self.split == "train"

    columns: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def column(self, column: str, task: str) -> list:
        """Every value of a label column (``task`` names the field in the error)."""
        if column not in self.columns:
            raise DataError(f"tasks.{task}.label: column {column!r} not in source {self.name!r}; "
                            f"columns: {self.columns}")
        return self._column(column)

    def _column(self, column: str) -> list:
        raise NotImplementedError

    def sample(self, n: int) -> dict[str, list]:
        """Up to ``n`` rows (column → values) to size ``auto`` lengths on."""
        raise NotImplementedError


class MemorySplit(RawSplit):
    engine = "memory"

    def __init__(self, name, cfg, root, split):
        import datasets

        super().__init__(name, cfg, root, split)
        datasets.disable_progress_bars()
        ds = datasets.load_dataset(self.src.format, data_files=self.path, split="train")
        self.columns = ds.column_names
        self._check_columns()
        if self._limit() and len(ds) > self.src.max_rows:
            ds = ds.select(range(self.src.max_rows))
        self.dataset = ds

    def __len__(self):
        return len(self.dataset)

    def _column(self, column):
        return self.dataset[column]

    def rows(self) -> dict[str, list]:
        return self.dataset.to_dict()

    def sample(self, n):
        idx = np.random.default_rng(0).choice(len(self), size=min(n, len(self)), replace=False)
        return self.dataset.select(np.sort(idx)).to_dict()


class RayDataSplit(RawSplit):
    engine = "ray_data"

    def __init__(self, name, cfg, root, split):
        import ray.data

        super().__init__(name, cfg, root, split)
        readers = {"csv": ray.data.read_csv, "parquet": ray.data.read_parquet,
                   "json": lambda p: ray.data.read_json(p, lines=p.endswith(".jsonl"))}
        ds = readers[self.src.format](self.path)
        self.columns = ds.columns()
        self._check_columns()
        self.dataset = ds.limit(self.src.max_rows) if self._limit() else ds
        self._count = None

    def __len__(self):
        if self._count is None:
            self._count = self.dataset.count()
        return self._count

    def _column(self, column):
        values = []
        for batch in self.dataset.select_columns([column]).iter_batches(batch_size=65536, batch_format="numpy"):
            values.extend(plain_values(batch[column]))
        return values

    def sample(self, n):
        # The first rows of the stream: shuffling would read the whole dataset.
        return {k: plain_values(v) for k, v in self.dataset.take_batch(n, batch_format="numpy").items()}


ENGINES: dict[str, Callable[..., RawSplit]] = {"memory": MemorySplit, "ray_data": RayDataSplit}


def open_split(name: str, cfg: ExperimentConfig, root: str, split: str, engine: str = "memory") -> RawSplit:
    return ENGINES[engine](name, cfg, root, split)
