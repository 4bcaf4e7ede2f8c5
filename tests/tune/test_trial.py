"""A single-task run's config and data: one head, its own source, the steps that source
got in the multi-task run, and batches that carry that head's label only."""

import torch

from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.model.build import load_tokenizer
from ecomtl.tune.trial import single_task_config, source_steps, source_subset


def test_single_task_config_keeps_one_head_at_its_sources_share_of_steps(tiny_cfg):
    sizes = {"reviews": 400, "queries": 400, "offers": 400}
    cfg = tiny_cfg.model_copy(update={"training": tiny_cfg.training.model_copy(update={"steps": 12})})
    # round robin over three sources: four of the twelve steps each
    assert source_steps(cfg, sizes) == {"reviews": 4, "queries": 4, "offers": 4}
    single = single_task_config(cfg, "stars", sizes)
    assert list(single.tasks) == ["stars"] and list(single.sources) == ["reviews"]
    assert single.tasks["stars"].weight == 1.0
    assert single.training.steps == 4 and 1 <= single.training.eval_every <= 4


def test_source_subset_batches_carry_only_the_single_heads_label(tiny_cfg):
    data = prepare_data(tiny_cfg, load_tokenizer(tiny_cfg.model))
    sizes = {s: len(d) for s, d in data.splits["train"].items()}
    single = single_task_config(tiny_cfg, "rating", sizes)
    sub = source_subset(data, "reviews", ["rating"])
    assert list(sub.label_infos) == ["rating"]
    assert all(list(by_src) == ["reviews"] for by_src in sub.splits.values())
    assert list(data.splits["train"]["reviews"].labels) == ["rating", "stars"]  # the original is untouched

    # the loop collates with one label dtype per head of its config: nothing else may come
    batch = collate(sub.splits["train"]["reviews"], range(4), 0, {t: torch.long for t in single.tasks})
    assert list(batch["labels"]) == list(single.tasks)
