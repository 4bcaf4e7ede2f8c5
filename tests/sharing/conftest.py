"""A toy two-task problem that no single shared encoding solves, shared by the MMoE and
PLE tests; and a sharing config on the shipped tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecomtl.model.multitask import Encoded

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"

HIDDEN = 16
TASKS = ["a", "b"]


def toy(n: int, seed: int):
    """Both heads read coordinate 0 of their encoding (a fixed readout, no head to
    learn): task a wants |x1| there, task b |x2|. Under hard sharing the two predictions
    are one number, at best (|x1|+|x2|)/2, so each task's MSE is at least
    Var(|x1|-|x2|)/4 = (1-2/pi)/2 ≈ 0.18; only task-specific encodings go below."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, HIDDEN, generator=g)
    return Encoded(x, None, torch.ones(n, 1)), {"a": x[:, 1].abs(), "b": x[:, 2].abs()}


def toy_mse(layer, enc, targets) -> dict[str, float]:
    with torch.no_grad():
        return {t: float(((layer(enc, t).pooled[:, 0] - y) ** 2).mean()) for t, y in targets.items()}


@pytest.fixture
def learns_two_tasks(ragged):
    """Train a ``kind`` layer on the toy (full batch, Adam) and check that each task gets
    below what any one shared encoding can reach, with the tasks' encodings apart."""
    from ecomtl.sharing import SHARING

    def check(kind: str, options: dict, steps: int = 200, lr: float = 1e-2) -> None:
        torch.manual_seed(0)
        layer = SHARING.get(kind)(HIDDEN, TASKS, options)
        enc, targets = toy(512, seed=1)
        opt = torch.optim.Adam(layer.parameters(), lr=lr)
        layer.train()
        for _ in range(steps):
            opt.zero_grad()
            sum(((layer(enc, t).pooled[:, 0] - y) ** 2).mean() for t, y in targets.items()).backward()
            opt.step()
        layer.eval()
        mse = toy_mse(layer, *toy(512, seed=2))
        assert mse["a"] < 0.08 and mse["b"] < 0.08, mse  # one shared encoding: ≥ 0.18 each
        with torch.no_grad():
            a, b = layer(ragged, "a").pooled[:, 0], layer(ragged, "b").pooled[:, 0]
        assert (a - b).abs().mean() > 0.1

    return check


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls on 2 shared cores: a second thread only adds contention (seen: the
    toy fit at 1 s alone, 60 s with two threads on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ragged() -> Encoded:
    """A sentence-and-token encoding (hidden 16) with ragged rows: row i has 5 - i real tokens."""
    n, width = 3, 5
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(width)[None, :] < (width - torch.arange(n))[:, None]).long()
    return Encoded(torch.randn(n, HIDDEN, generator=g), torch.randn(n, width, HIDDEN, generator=g), mask)


@pytest.fixture
def soft_cfg(tmp_path, data_root):
    """The shipped tiny config (four tasks, a tagging one among them) with a sharing kind."""
    from ecomtl.config.load import load_config

    def make(kind: str, options: str):
        return load_config(CONFIGS / "tiny.yaml", [f"output.storage_path={tmp_path / 'runs'}", f"data_root={data_root}",
                                                   f"model.sharing.kind={kind}", f"model.sharing.options={options}"])

    return make


@pytest.fixture
def sharing_error():
    """The config error for the tiny config with ``model.sharing.kind=kind`` and overrides."""
    from ecomtl.config.load import ConfigError, config_from_dict, read_yaml

    def err(kind: str, *overrides: str) -> str:
        with pytest.raises(ConfigError) as info:
            config_from_dict(read_yaml(CONFIGS / "tiny.yaml"), [f"model.sharing.kind={kind}", *overrides])
        return str(info.value)

    return err
