"""Uncertainty weighting against its closed form: exp(-s) L + s, optimum s = log L."""

import math

import pytest
import torch


def test_value_and_gradient_at_init(make_weighting):
    w = make_weighting("uncertainty")
    losses = {"rating": torch.tensor(2.0, requires_grad=True), "match": torch.tensor(0.5, requires_grad=True)}
    total = w.combine(losses, 0)
    assert total.item() == pytest.approx(2.5)  # s = 0: weights 1, no offset
    total.backward()
    (s,) = w.parameters()
    # d/ds (exp(-s) L + s) = 1 - L at s = 0; tasks absent this step get no gradient
    assert s.grad.tolist() == pytest.approx([1 - 2.0, 0.0, 0.0, 1 - 0.5])
    assert losses["rating"].grad.item() == pytest.approx(1.0)


def test_closed_form_optimum(make_weighting):
    w = make_weighting("uncertainty", init_log_var=math.log(3.0))
    total = w.combine({"stars": torch.tensor(3.0)}, 0)
    assert total.item() == pytest.approx(1 + math.log(3.0))  # exp(-log 3) * 3 + log 3
    total.backward()
    assert w.parameters()[0].grad[1].item() == pytest.approx(0.0, abs=1e-6)


def test_training_the_log_variance_reaches_log_loss(make_weighting):
    w = make_weighting("uncertainty")
    opt = torch.optim.SGD(w.parameters(), lr=0.2)
    for _ in range(300):
        opt.zero_grad()
        w.combine({"attributes": torch.tensor(4.0)}, 0).backward()
        opt.step()
    assert w.log_vars[2].item() == pytest.approx(math.log(4.0), abs=1e-3)


def test_state_survives_resume(make_weighting):
    w = make_weighting("uncertainty")
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.1, -0.2, 0.3, 0.4]))
    fresh = make_weighting("uncertainty")
    fresh.load_state_dict(w.state_dict())
    assert fresh.log_vars.tolist() == pytest.approx([0.1, -0.2, 0.3, 0.4])
    assert fresh.parameters()[0] is fresh.log_vars  # loading keeps the tensor an optimizer holds


def test_options_typed(make_cfg):
    with pytest.raises(ValueError, match="weighting.options"):
        make_cfg("uncertainty", init_log_var="high")
