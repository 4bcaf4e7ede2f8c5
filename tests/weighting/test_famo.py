"""FAMO's loss and its logit update against hand computations (two tasks present)."""

import math

import pytest
import torch


def losses(**values):
    return {n: torch.tensor(v, requires_grad=True) for n, v in values.items()}


def test_loss_weights_balance_log_losses(make_weighting):
    w = make_weighting("famo")
    step = losses(rating=2.0, match=1.0)
    total = w.combine(step, 0)
    # z = (1/2, 1/2); c = z/L summed = 1/4 + 1/2 = 3/4; loss = (1/2 ln 2 + 1/2 ln 1) / c
    assert total.item() == pytest.approx(0.5 * math.log(2) / 0.75, rel=1e-6)
    total.backward()
    # gradient z_t / (c L_t): 1/3 for rating (larger loss, smaller weight), 2/3 for match
    assert step["rating"].grad.item() == pytest.approx(1 / 3, rel=1e-6)
    assert step["match"].grad.item() == pytest.approx(2 / 3, rel=1e-6)


def test_update_two_adam_steps(make_weighting):
    w = make_weighting("famo", lr=0.025, gamma=0.01)
    w.combine(losses(rating=2.0, match=1.0), 0)
    w.update({"rating": torch.tensor(1.0), "match": torch.tensor(1.0)})
    # delta = (ln 2, 0); d = z (delta - z.delta) = (+ln2/4, -ln2/4); Adam's first step is
    # lr * sign(d): rating's loss fell most, so its logit goes down
    assert w.logits.tolist() == pytest.approx([-0.025, 0.0, 0.0, 0.025], abs=1e-6)  # fp32 bias corrections
    w.combine(losses(rating=1.0, match=1.0), 1)
    w.update({"rating": torch.tensor(1.0), "match": torch.tensor(0.5)})
    # z = softmax(-0.025, 0.025) = (0.487503, 0.512497); delta = (0, ln 2);
    # d = (-0.173179, 0.173179) + gamma * logits -> g = (-0.173429, 0.173429);
    # m = 0.9 * 0.1 * g1 + 0.1 * g, v = 0.999 * 0.001 * g1^2 + 0.001 * g^2, bias-corrected:
    # logits -0.025 + 0.025 * 0.0091947 / 0.173358 = -0.023674 (and the mirror for match)
    assert w.logits.tolist() == pytest.approx([-0.023674, 0.0, 0.0, 0.023674], abs=1e-6)
    assert w.adam_step.tolist() == [2.0, 0.0, 0.0, 2.0]


def test_update_needs_a_combine_first(make_weighting):
    w = make_weighting("famo")
    w.update({"rating": torch.tensor(1.0)})  # nothing combined: nothing to compare with
    assert w.logits.abs().sum().item() == 0.0


def test_state_survives_resume(make_weighting):
    w = make_weighting("famo")
    for before, after in [(2.0, 1.0), (1.0, 0.8), (0.8, 0.7)]:
        w.combine(losses(rating=before, stars=1.0), 0)
        w.update({"rating": torch.tensor(after), "stars": torch.tensor(0.9)})
    fresh = make_weighting("famo")
    fresh.load_state_dict(w.state_dict())
    for x in (w, fresh):  # the next update from the restored Adam moments matches too
        x.combine(losses(rating=0.7, stars=0.9), 3)
        x.update({"rating": torch.tensor(0.6), "stars": torch.tensor(0.85)})
    assert fresh.state_dict() == w.state_dict()
    assert w.logits[0] != 0
