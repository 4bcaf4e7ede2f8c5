"""CAGrad: c = 0 is the mean gradient; a symmetric case solved by hand."""

import pytest
import torch


def test_c_zero_is_the_mean_gradient(make_weighting):
    w = make_weighting("cagrad", c=0.0)
    g = {"rating": [torch.tensor([1.0, 0.0]), torch.tensor([2.0])],
         "stars": [torch.tensor([-3.0, 1.0]), torch.tensor([0.0])],
         "match": [torch.tensor([0.5, 4.0]), torch.tensor([-1.0])]}
    out = w.combine_gradients(g, {})
    assert out[0].tolist() == pytest.approx([-0.5, 5 / 3], abs=1e-6)
    assert out[1].tolist() == pytest.approx([1 / 3], abs=1e-6)


def test_orthogonal_gradients(make_weighting):
    # g1 = (1, 0), g2 = (0, 1): by symmetry w = (1/2, 1/2), g_w = g0 = (1/2, 1/2),
    # |g0| = sqrt(1/2); d = g0 + c|g0|/|g_w| g_w = (1 + c) g0, divided by 1 + c^2:
    # c = 0.5 -> 0.75 / 1.25 (1, 1) = (0.6, 0.6)
    w = make_weighting("cagrad", c=0.5)
    (out,) = w.combine_gradients({"rating": [torch.tensor([1.0, 0.0])], "match": [torch.tensor([0.0, 1.0])]}, {})
    assert out.tolist() == pytest.approx([0.6, 0.6], abs=1e-4)


def test_bends_towards_the_weaker_task(make_weighting):
    # g1 = (4, 0) dominates g2 = (0, 1): the mean (2, 0.5) helps task 2 little; CAGrad's
    # direction must improve task 2 more than the mean does, relative to its length
    g = {"rating": [torch.tensor([4.0, 0.0])], "match": [torch.tensor([0.0, 1.0])]}
    (d,) = make_weighting("cagrad", c=0.8).combine_gradients(g, {})
    mean = torch.tensor([2.0, 0.5])
    assert d[1] / d.norm() > mean[1] / mean.norm()
    assert d[0] > 0  # still a descent direction for task 1


def test_refused_under_zero_3(make_cfg):
    with pytest.raises(ValueError, match="needs per-task gradients, which ZeRO stage 3 partitions"):
        make_cfg("cagrad", zero_stage=3)
