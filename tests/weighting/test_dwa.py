"""DWA against a hand computation: weights K softmax(r / T) from window-mean loss ratios."""

import pytest
import torch


def feed(w, step, **losses):
    return w.combine({n: torch.tensor(v) for n, v in losses.items()}, step)


def test_weights_from_window_ratios(make_weighting):
    w = make_weighting("dwa", window=2, temperature=2.0)
    # window 0 (steps 0-1): rating mean 3, match 1; no history yet, so every weight is 1
    assert feed(w, 0, rating=2.0, match=1.0).item() == pytest.approx(3.0)
    feed(w, 1, rating=4.0)
    # window 1 (steps 2-3): one finished window is not enough for a ratio, weights stay 1
    assert feed(w, 2, rating=1.5, match=1.0).item() == pytest.approx(2.5)
    # window 2: r = 1.5/3 = 0.5 for rating, 1/1 for match, 1 for the tasks never seen;
    # weights 4 e^(r/2) / (e^0.25 + 3 e^0.5) = 0.824389 (rating), 1.058537 (the others)
    assert w.weights().tolist() == pytest.approx([1.0] * 4)
    total = feed(w, 4, rating=1.0, match=2.0)
    assert w.weights().tolist() == pytest.approx([0.824389, 1.058537, 1.058537, 1.058537], abs=1e-6)
    assert total.item() == pytest.approx(0.824389 * 1.0 + 1.058537 * 2.0, abs=1e-5)
    assert w.weights().sum().item() == pytest.approx(4.0)


def test_gradient_is_the_weight_not_through_it(make_weighting):
    w = make_weighting("dwa", window=1)
    for step, value in enumerate([4.0, 1.0]):  # rating halves twice over: r = 0.25
        feed(w, step, rating=value, match=1.0)
    loss = torch.tensor(1.0, requires_grad=True)
    w.combine({"rating": loss}, 2).backward()
    expected = 4 * torch.softmax(torch.tensor([0.25, 1, 1, 1]) / 2, 0)[0].item()
    assert loss.grad.item() == pytest.approx(expected)


def test_state_survives_resume(make_weighting):
    w = make_weighting("dwa", window=2)
    for step, value in enumerate([2.0, 4.0, 1.5, 1.0, 0.5]):
        feed(w, step, rating=value, stars=1.0)
    fresh = make_weighting("dwa", window=2)
    fresh.load_state_dict(w.state_dict())
    assert fresh.weights().tolist() == pytest.approx(w.weights().tolist())
    # the half-filled window resumes too: both roll the same way at the next window
    assert feed(fresh, 6, rating=1.0).item() == pytest.approx(feed(w, 6, rating=1.0).item())
    assert fresh.state_dict() == w.state_dict()


def test_temperature_must_be_positive(make_cfg):
    with pytest.raises(ValueError, match="weighting.options.temperature"):
        make_cfg("dwa", temperature=0)


def test_default_window_is_a_twentieth_of_the_run(make_weighting):
    # a fixed 100-step window would leave every weight at 1 in a 200-step run
    w = make_weighting("dwa")
    assert w.window == max(1, w.cfg.training.steps // 20)
    for step in range(3 * w.window):  # rating's loss halves each window, match's stays
        feed(w, step, rating=2.0 ** -(step // w.window), match=1.0)
    feed(w, 3 * w.window, rating=0.125, match=1.0)
    weights = dict(zip(w.tasks, w.weights().tolist()))
    assert weights["rating"] < weights["match"]
