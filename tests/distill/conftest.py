"""A tiny teacher that knows a fixed set: 16 real reviews (rating, stars) and 16 real
queries (attributes), memorised by a tiny random BERT in-process, saved as an ordinary
bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecomtl.config.load import config_from_dict, read_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def fixed_set(data_root: str) -> dict:
    """tiny.yaml on 16 train rows of reviews and of queries (two sources, three head types)."""
    data = read_yaml(CONFIGS / "tiny.yaml")
    data["sources"] = {k: v | {"max_rows": 16} for k, v in data["sources"].items() if k in ("reviews", "queries")}
    data["tasks"] = {k: v for k, v in data["tasks"].items() if v["source"] in data["sources"]}
    data["data_root"] = data_root
    return data


@pytest.fixture
def fixed_set_data():
    """``fixed_set`` as a fixture: a fresh config dict per call."""
    return fixed_set


@pytest.fixture(scope="session")
def teacher_bundle(tmp_path_factory, data_root) -> Path:
    from ecomtl.data.collate import collate
    from ecomtl.data.prepare import prepare_data
    from ecomtl.model.build import build_model, load_tokenizer
    from ecomtl.model.bundle import save_bundle

    cfg = config_from_dict(fixed_set(data_root), ["name=teacher"])
    tok = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tok, splits=("train",))
    torch.manual_seed(0)
    model = build_model(cfg, data.label_infos, tok)
    dtypes = {t: model.heads[t].label_dtype for t in cfg.tasks}
    batches = {s: collate(d, range(len(d)), tok.pad_token_id, dtypes) for s, d in data.splits["train"].items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    by_source = cfg.task_names_by_source()
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only contend (1 s alone, 50 s with 2 on a busy box)
    try:
        for _ in range(50):  # full-batch Adam on 32 rows: memorised (every loss < 0.01)
            opt.zero_grad()
            loss = sum(sum(model.losses(model(b, by_source[s]), b).values()) for s, b in batches.items())
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return save_bundle(tmp_path_factory.mktemp("teacher") / "bundle", model.eval(), tok, cfg, data.label_infos,
                       data.max_lengths, {"fixed_set": True})
