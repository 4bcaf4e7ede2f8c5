"""train/loop.py pieces that need no Ray: the weighting's own optimizer (uncertainty's
Adam over its log-variances) through a checkpoint directory and back."""

from pathlib import Path

import pytest
import torch

from ecomtl.train.loop import load_weighting_optimizer, save_weighting_optimizer
from ecomtl.weighting import WEIGHTINGS


@pytest.fixture
def uncertainty(data_root):
    from ecomtl.config.load import load_config

    tiny = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"
    cfg = load_config(tiny, [f"data_root={data_root}", "weighting.kind=uncertainty"])

    def make(lr=0.01):
        w = WEIGHTINGS.get("uncertainty")(cfg)
        return w, torch.optim.Adam(w.parameters(), lr=lr)  # as TrainingRun._setup_model builds it

    return make


def steps(w, opt, n):
    for k in range(n):
        w.combine({"rating": torch.tensor(2.0 + k), "match": torch.tensor(0.5)}, k).backward()
        opt.step()
        opt.zero_grad()


def test_adam_moments_survive_a_checkpoint(uncertainty, tmp_path):
    w, opt = uncertainty()
    steps(w, opt, 3)
    save_weighting_optimizer(opt, tmp_path, rank=1)
    fresh, fresh_opt = uncertainty()
    fresh.load_state_dict(w.state_dict())  # what _resume does first (trainer_state.json)
    assert load_weighting_optimizer(fresh_opt, tmp_path, rank=1)
    saved, restored = opt.state[w.log_vars], fresh_opt.state[fresh.log_vars]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(saved[key], restored[key]), key
    # and the next step is the one the uninterrupted run takes
    steps(w, opt, 1)
    steps(fresh, fresh_opt, 1)
    assert torch.equal(w.log_vars, fresh.log_vars)


def test_restored_moments_keep_the_current_lr(uncertainty, tmp_path):
    w, opt = uncertainty(lr=0.01)
    steps(w, opt, 2)
    save_weighting_optimizer(opt, tmp_path, rank=0)
    _, fresh_opt = uncertainty(lr=0.05)  # e.g. optim.head_lr changed on resume
    load_weighting_optimizer(fresh_opt, tmp_path, rank=0)
    assert fresh_opt.param_groups[0]["lr"] == 0.05
    assert fresh_opt.state_dict()["state"][0]["step"].item() == 2


def test_without_a_saved_optimizer_the_moments_stay_fresh(uncertainty, tmp_path):
    _, opt = uncertainty()
    save_weighting_optimizer(None, tmp_path, rank=0)  # a weighting without parameters: nothing written
    assert not any(tmp_path.iterdir())
    assert not load_weighting_optimizer(opt, tmp_path, rank=0)  # an older checkpoint
    assert not load_weighting_optimizer(None, tmp_path, rank=0)
    assert opt.state_dict()["state"] == {}
