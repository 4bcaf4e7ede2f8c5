"""``data.engine: ray_data``: train splits as Ray Data datasets, streamed to the workers.

Driver side: each source's train file is opened with the ``ray_data`` engine of
``data.sources`` (a local path, a shared filesystem or a cloud URI); label maps and
``auto`` lengths come from the same functions as in memory (``prepare.fit_label_infos``,
``prepare.resolve_max_length``), then the same row policy and tokenisation
(``prepare.select_rows``, ``prepare.encode_rows``) run in parallel Ray tasks with
``map_batches``. Nothing is
materialised: TorchTrainer gets one dataset per source and gives every worker a disjoint
streaming shard of each (``ray.train.get_dataset_shard``).

Worker side: ``StreamedBatches`` hands out the next batch of a source's shard. Shards
are split without dropping rows (see ``ExactSplit``), so near the end of an epoch one
rank can run out a batch before another; that rank then runs a zero-weight copy of its
last batch (same modules on every rank, as ZeRO needs) until all ranks are done, and
they start the next epoch together. Every row is trained on exactly once per epoch.
"""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np

from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.prepare import PreparedSplit, encode_rows, resolve_max_length, select_rows
from ecomtl.data.sources import DataError, RawSplit, plain_values

DATASET_PREFIX = "train_"  # no "/": Ray Data names log files after datasets
LABEL_PREFIX = "label/"


def dataset_name(source: str) -> str:
    return DATASET_PREFIX + source


@functools.lru_cache(maxsize=4)
def _config(cfg_json: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate_json(cfg_json)


@functools.lru_cache(maxsize=4)
def _tokenizer(model_json: str):
    from ecomtl.config.schema import ModelConfig
    from ecomtl.model.build import load_tokenizer

    return load_tokenizer(ModelConfig.model_validate_json(model_json))


class Tokenize:
    """``map_batches`` function: raw rows → tokenised rows (bad rows dropped by the same
    policy as the in-memory path). A plain picklable callable run as Ray tasks; the
    tokenizer is loaded once per worker process (``_tokenizer`` cache)."""

    def __init__(self, name: str, cfg: ExperimentConfig, label_infos: dict, max_length: int):
        self.name, self.cfg_json = name, cfg.model_dump_json()
        self.tasks = cfg.task_names_by_source()[name]
        self.label_infos = {t: label_infos[t] for t in self.tasks}
        self.max_length = max_length

    def __call__(self, batch: dict) -> dict:
        cfg = _config(self.cfg_json)
        src = cfg.sources[self.name]
        n = len(next(iter(batch.values())))
        rows = {k: plain_values(v) for k, v in batch.items()}
        inputs, pairs, labels, _, _, _ = select_rows(self.name, cfg, rows, n, self.label_infos)
        tok = _tokenizer(cfg.model.model_dump_json())
        if not inputs:  # every row of this batch skipped: an empty batch, same columns
            return self._empty(cfg, tok, src)
        out: dict = {}
        ids, types, labels, _ = encode_rows(tok, src, inputs, pairs, labels, self.max_length)
        out["input_ids"] = _ragged(ids)
        if types is not None:
            out["token_type_ids"] = _ragged(types)
        for t, values in labels.items():
            out[LABEL_PREFIX + t] = _ragged(values) if values and isinstance(values[0], np.ndarray) else np.asarray(values)
        return out

    def _empty(self, cfg: ExperimentConfig, tok, src) -> dict:
        from ecomtl.tasks import TASK_HEADS

        probe = tok(["a"], is_split_into_words=True) if src.tokens else tok("a")
        out = {"input_ids": _ragged([])} | ({"token_type_ids": _ragged([])} if "token_type_ids" in probe else {})
        for t in self.tasks:
            head = TASK_HEADS.get(cfg.tasks[t].head)
            out[LABEL_PREFIX + t] = (_ragged([]) if src.tokens else
                                     np.zeros(0, dtype=np.float64 if head.label_dtype.is_floating_point else np.int64))
        return out


def _ragged(arrays: list) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def build_train_datasets(cfg: ExperimentConfig, tokenizer, label_infos: dict,
                         opened: dict[str, RawSplit], max_lengths: Optional[dict[str, int]] = None
                         ) -> tuple[dict, dict[str, int], dict[str, int]]:
    """One lazily executed, tokenised dataset per source from its opened ``ray_data``
    train split: (datasets by ``dataset_name(source)``, max_lengths, raw row counts for
    the source sampler)."""
    max_lengths = dict(max_lengths or {})
    datasets, sizes = {}, {}
    for name in cfg.sources:
        raw = opened[name]
        if name not in max_lengths:
            max_lengths[name] = resolve_max_length(tokenizer, cfg, raw, label_infos)
        sizes[name] = len(raw)
        tokenized = raw.dataset.map_batches(Tokenize(name, cfg, label_infos, max_lengths[name]),
                                            batch_size=cfg.data.tokenize_batch_size, batch_format="numpy")
        # Small blocks (one training batch each, streamed): shards then split evenly
        # across workers even when a whole file arrives as one block.
        rows = cfg.sources[name].batch_size or cfg.training.batch_size
        datasets[dataset_name(name)] = tokenized.repartition(target_num_rows_per_block=rows)
    return datasets, max_lengths, sizes


def exact_split_config():
    """A ``ray.train.DataConfig`` that splits every dataset without dropping rows.
    Ray Train's default (``streaming_split(equal=True)``) drops up to world-1 rows an
    epoch to keep shards equal; ``StreamedBatches`` copes with unequal shards instead."""
    from ray.train import DataConfig

    class ExactSplit(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                if ds.name is None:
                    ds.set_name(name)
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                for i, it in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)):
                    out[i][name] = it
            return out

    return ExactSplit()


def to_split(batch: dict, tasks: list[str]) -> PreparedSplit:
    """A streamed numpy batch in the in-memory layout, so ``collate`` serves both paths."""
    ids = list(batch["input_ids"])
    types = list(batch["token_type_ids"]) if "token_type_ids" in batch else None
    labels = {}
    for t in tasks:
        col = batch[LABEL_PREFIX + t]
        # ragged columns come back as object arrays, or 2-D when all rows are one length
        labels[t] = list(col) if (col.dtype == object or col.ndim > 1) else col.tolist()
    return PreparedSplit(ids, types, labels)


class StreamedBatches:
    """Next batch of each source's shard on this rank, epoch after epoch, in lockstep
    with the other ranks (one tiny all-reduce per step)."""

    def __init__(self, batch_sizes: dict[str, int], seed: int, shuffle_buffer: int, device,
                 position: Optional[dict] = None):
        """``batch_sizes``: source → rows per batch on this worker."""
        import ray.train

        sources = list(batch_sizes)
        self.shards = {s: ray.train.get_dataset_shard(dataset_name(s)) for s in sources}
        self.bs, self.seed, self.buffer, self.device = batch_sizes, seed, shuffle_buffer, device
        # per source: epoch and batches consumed in it (saved in checkpoints)
        self.position = {s: dict(epoch=0, batch=0) for s in sources} | (position or {})
        self._iters: dict = {}
        self._last: dict = {}

    def _open(self, source: str):
        pos = self.position[source]
        it = iter(self.shards[source].iter_batches(
            batch_size=self.bs[source], batch_format="numpy", drop_last=False,
            local_shuffle_buffer_size=self.buffer or None,
            local_shuffle_seed=(self.seed * 100003 + pos["epoch"]) if self.buffer else None,
        ))
        # A resumed run skips what this epoch already trained on (same order only when
        # the stream is deterministic; otherwise the interrupted epoch is approximate).
        for _ in range(pos["batch"]):
            next(it, None)
        self._iters[source] = it

    def _any(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized() or dist.get_world_size() == 1:
            return flag
        t = torch.tensor([1 if flag else 0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def next(self, source: str) -> tuple[dict, bool]:
        """(numpy batch, real): ``real`` False means this rank's shard is spent for the
        epoch while another rank's is not; train on the batch with zero weight."""
        for _ in range(2):
            if source not in self._iters:
                self._open(source)
            batch = next(self._iters[source], None)
            if self._any(batch is not None):
                if batch is None:
                    if source not in self._last:
                        raise DataError(f"source {source!r}: fewer training rows than workers")
                    return self._last[source], False
                self.position[source]["batch"] += 1
                self._last[source] = batch
                return batch, True
            # every rank is done with this source: a new epoch for all of them
            self.position[source] = dict(epoch=self.position[source]["epoch"] + 1, batch=0)
            del self._iters[source]
        raise DataError(f"source {source!r}: its training stream is empty")
