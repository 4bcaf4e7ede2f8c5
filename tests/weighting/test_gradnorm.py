"""GradNorm's combined gradient and weight update against a hand computation."""

import pytest
import torch


def test_one_update_by_hand(make_weighting):
    w = make_weighting("gradnorm", alpha=1.5, lr=0.025)
    g = {"rating": [torch.tensor([3.0, 4.0])], "match": [torch.tensor([1.0, 0.0])]}
    first = {"rating": torch.tensor(1.0), "match": torch.tensor(1.0)}
    (out,) = w.combine_gradients(g, first)  # first sight: L(0) = (1, 1), rates equal
    assert out.tolist() == pytest.approx([4.0, 4.0])  # weights 1 before the update
    # G = (5, 1), Gbar = 3, r = (1, 1): targets 3, so w -= 0.025 * sign(G - 3) * |g|:
    # (1 - 0.125, 1 + 0.025) = (0.875, 1.025), renormalised to sum 2: / 0.95
    assert w.weights.tolist() == pytest.approx([0.875 / 0.95, 1.0, 1.0, 1.025 / 0.95], abs=1e-6)

    w.weights[[0, 3]] = 1.0
    # second step, L = (0.5, 1): Ltilde = (0.5, 1), r = (2/3, 4/3), targets 3 r^1.5 =
    # (1.633, 4.619): rating's G = 5 is above, match's G = 1 below -> same signs as before
    (out,) = w.combine_gradients(g, {"rating": torch.tensor(0.5), "match": torch.tensor(1.0)})
    assert out.tolist() == pytest.approx([4.0, 4.0])
    assert w.weights.tolist() == pytest.approx([0.875 / 0.95, 1.0, 1.0, 1.025 / 0.95], abs=1e-6)


def test_slow_task_gains_weight_even_with_equal_norms(make_weighting):
    w = make_weighting("gradnorm", alpha=1.0, lr=0.1)
    g = {"rating": [torch.tensor([1.0, 0.0])], "match": [torch.tensor([0.0, 1.0])]}
    w.combine_gradients(g, {"rating": torch.tensor(2.0), "match": torch.tensor(2.0)})
    assert w.weights.tolist() == pytest.approx([1.0] * 4)  # G equal to targets: sign 0
    # rating halved, match did not: r = (2/3, 4/3), targets (2/3, 4/3) vs G = (1, 1)
    w.combine_gradients(g, {"rating": torch.tensor(1.0), "match": torch.tensor(2.0)})
    assert w.weights[[0, 3]].tolist() == pytest.approx([0.9, 1.1])


def test_state_survives_resume(make_weighting):
    w = make_weighting("gradnorm")
    g = {"rating": [torch.tensor([3.0, 4.0])], "stars": [torch.tensor([1.0, 0.0])]}
    for loss in (1.0, 0.7, 0.5):
        w.combine_gradients(g, {"rating": torch.tensor(loss), "stars": torch.tensor(1.0)})
    fresh = make_weighting("gradnorm")
    fresh.load_state_dict(w.state_dict())
    nxt = {"rating": torch.tensor(0.4), "stars": torch.tensor(0.9)}
    assert fresh.combine_gradients(g, nxt)[0].tolist() == pytest.approx(w.combine_gradients(g, nxt)[0].tolist())
    assert fresh.state_dict() == w.state_dict()
    assert fresh.initial_losses.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
