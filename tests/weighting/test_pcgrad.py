"""PCGrad on hand-made gradients: conflicting ones are projected onto each other's normal plane."""

import pytest
import torch


def grads(**vectors):
    return {n: [torch.tensor(v)] for n, v in vectors.items()}


def test_two_conflicting_gradients(make_weighting):
    w = make_weighting("pcgrad")
    # g1 . g2 = -1 < 0: g1' = g1 + 1/2 g2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1); sum (0.5, 1.5)
    (out,) = w.combine_gradients(grads(rating=[1.0, 0.0], match=[-1.0, 1.0]), {})
    assert out.tolist() == pytest.approx([0.5, 1.5])


def test_agreeing_gradients_are_untouched(make_weighting):
    w = make_weighting("pcgrad", reduction="mean")
    (out,) = w.combine_gradients(grads(rating=[1.0, 2.0], stars=[3.0, 1.0]), {})
    assert out.tolist() == pytest.approx([2.0, 1.5])


def test_projection_removes_the_conflict(make_weighting):
    w = make_weighting("pcgrad")
    g = grads(rating=[1.0, 0.0, 0.0], match=[-1.0, 1.0, 0.0])
    # a single task's projected gradient: sum minus the other task's (orthogonal) projection
    (out,) = w.combine_gradients(g, {})
    g2_projected = torch.tensor([0.0, 1.0, 0.0])  # g2 + g1, orthogonal to g1
    g1_projected = out - g2_projected
    assert (g1_projected @ torch.tensor([-1.0, 1.0, 0.0])).item() == pytest.approx(0.0)


def test_shapes_and_dtypes_follow_the_parameters(make_weighting):
    w = make_weighting("pcgrad")
    g = {"rating": [torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(4)],
         "match": [-torch.ones(2, 3, dtype=torch.bfloat16), torch.zeros(4)]}
    out = w.combine_gradients(g, {})
    assert [o.shape for o in out] == [(2, 3), (4,)] and out[0].dtype == torch.bfloat16


def test_refused_under_zero_2(make_cfg):
    with pytest.raises(ValueError, match="needs per-task gradients, which ZeRO stage 2 partitions"):
        make_cfg("pcgrad", zero_stage=2)
    make_cfg("pcgrad", zero_stage=1)  # accepted


def test_backward_loss_gives_shared_the_combined_gradient_and_heads_their_own(make_weighting):
    w = make_weighting("pcgrad")
    shared = torch.zeros(2, requires_grad=True)
    heads = {"rating": torch.tensor(3.0, requires_grad=True), "match": torch.tensor(-2.0, requires_grad=True)}
    losses = {"rating": shared @ torch.tensor([1.0, 0.0]) + heads["rating"] ** 2,
              "match": shared @ torch.tensor([-1.0, 1.0]) + heads["match"] ** 2}
    w.backward_loss(losses, [shared]).backward()
    assert shared.grad.tolist() == pytest.approx([0.5, 1.5])  # the conflicting pair above
    assert heads["rating"].grad.item() == pytest.approx(6.0)  # d h^2 / dh = 2h, untouched
    assert heads["match"].grad.item() == pytest.approx(-4.0)


def test_combine_refuses_to_train_on_the_plain_sum(make_weighting):
    with pytest.raises(NotImplementedError, match="backward_loss"):
        make_weighting("pcgrad").combine({"rating": torch.tensor(1.0)}, 0)
