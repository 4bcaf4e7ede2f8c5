"""The one path from a config to what the trainer needs, for either data engine.

Each source's train split is opened once (``data.sources``); label maps and ``auto``
lengths are fit from it by the same functions for both engines; validation is always
prepared in memory (it is scored on the driver and in every evaluation). With
``memory`` the train rows are tokenised here; with ``ray_data`` they become lazy
datasets that the workers stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.prepare import PreparedData, fit_label_infos, prepare_data
from ecomtl.data.sources import open_split


@dataclass
class TrainingData:
    data: PreparedData  # label maps, lengths, validation (and train, in memory)
    datasets: Optional[dict] = None  # ray_data: streamed train datasets by name
    sizes: Optional[dict[str, int]] = None  # ray_data: raw train rows per source

    def summary(self) -> str:
        if self.sizes is None:
            return "train splits prepared in memory"
        return "train splits streamed with Ray Data: " + ", ".join(f"{s} {n} rows" for s, n in self.sizes.items())


def prepare_training_data(cfg: ExperimentConfig, tokenizer, root: str,
                          label_infos: Optional[dict] = None) -> TrainingData:
    """``label_infos``: fixed label spaces (a bundle's, ``training.init_from``) instead of
    fitting them on train."""
    if cfg.data.engine == "memory":
        return TrainingData(prepare_data(cfg, tokenizer, root=root, label_infos=label_infos))
    from ecomtl.data.streaming import build_train_datasets

    opened = {name: open_split(name, cfg, root, "train", engine=cfg.data.engine) for name in cfg.sources}
    label_infos = label_infos or fit_label_infos(cfg, root, opened=opened)
    datasets, max_lengths, sizes = build_train_datasets(cfg, tokenizer, label_infos, opened)
    data = prepare_data(cfg, tokenizer, splits=("validation",), label_infos=label_infos,
                        max_lengths=max_lengths, root=root)
    return TrainingData(data, datasets, sizes)
