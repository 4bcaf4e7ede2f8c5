"""Nash-MTL against its closed forms: G G^T alpha = 1 / alpha solved by hand."""

import math

import pytest
import torch


def grads(**vectors):
    return {n: [torch.tensor(v)] for n, v in vectors.items()}


def test_orthogonal_gradients(make_weighting):
    # g1 = (2, 0), g2 = (0, 0.5): G G^T = diag(4, 0.25), so alpha_t^2 |g_t|^2 = 1:
    # alpha = (1/2, 2) and d = g1/2 + 2 g2 = (1, 1) (|d|^2 = T = 2; no clip)
    w = make_weighting("nashmtl", max_norm=0.0)
    (d,) = w.combine_gradients(grads(rating=[2.0, 0.0], match=[0.0, 0.5]), {})
    assert d.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert w.alpha.tolist() == pytest.approx([0.5, 1.0, 1.0, 2.0], abs=1e-5)  # stars, attributes absent: untouched
    assert w.failures.item() == 0


def test_max_norm_clips_the_combined_gradient(make_weighting):
    # the same d = (1, 1) has norm sqrt 2 > 1 (the default max_norm): scaled to unit norm
    w = make_weighting("nashmtl")
    (d,) = w.combine_gradients(grads(rating=[2.0, 0.0], match=[0.0, 0.5]), {})
    assert d.tolist() == pytest.approx([1 / math.sqrt(2)] * 2, abs=1e-5)
    assert w.alpha[[0, 3]].tolist() == pytest.approx([0.5, 2.0], abs=1e-5)  # alpha itself is not clipped


def test_identical_gradients(make_weighting):
    # three copies of g, |g| = n = 5: every entry of G G^T is n^2, alpha_t = a by symmetry,
    # n^2 T a = 1/a -> a = 1 / (n sqrt T); d = T a g = sqrt(3) g / 5
    w = make_weighting("nashmtl", max_norm=0.0)
    (d,) = w.combine_gradients(grads(rating=[3.0, 4.0], stars=[3.0, 4.0], match=[3.0, 4.0]), {})
    a = 1 / (5 * math.sqrt(3))
    assert w.alpha[[0, 1, 3]].tolist() == pytest.approx([a] * 3, rel=1e-5)
    assert d.tolist() == pytest.approx([math.sqrt(3) * 0.6, math.sqrt(3) * 0.8], rel=1e-5)


def test_general_case_satisfies_the_bargaining_condition(make_weighting):
    # no closed form: check g_t . d = 1 / alpha_t for each task, and |d|^2 = T
    w = make_weighting("nashmtl", max_norm=0.0)
    g = {"rating": [torch.tensor([1.0, 0.0, 0.0])], "stars": [torch.tensor([1.0, 1.0, 0.0])],
         "attributes": [torch.tensor([0.0, 3.0, 1.0])], "match": [torch.tensor([-0.5, 0.2, 2.0])]}
    (d,) = w.combine_gradients(g, {})
    for i, (name, (gt,)) in enumerate(g.items()):
        assert (gt @ d).item() == pytest.approx(1 / w.alpha[i].item(), rel=1e-4), name
    assert (d @ d).item() == pytest.approx(4.0, rel=1e-4)


def test_opposite_gradients_fall_back_to_equal_weights(make_weighting):
    # g2 = -g1: no direction helps both, no alpha solves it; the plain sum (0) and a count
    w = make_weighting("nashmtl")
    (d,) = w.combine_gradients(grads(rating=[1.0, 2.0], match=[-1.0, -2.0]), {})
    assert d.tolist() == [0.0, 0.0]
    assert w.alpha[[0, 3]].tolist() == [1.0, 1.0] and w.failures.item() == 1


def test_a_zero_gradient_does_not_stop_the_others_bargaining(make_weighting):
    w = make_weighting("nashmtl", max_norm=0.0)
    (d,) = w.combine_gradients(grads(rating=[2.0, 0.0], stars=[0.0, 0.0], match=[0.0, 0.5]), {})
    assert d.tolist() == pytest.approx([1.0, 1.0], abs=1e-5) and w.failures.item() == 0


def test_update_weights_every_reuses_alpha(make_weighting):
    w = make_weighting("nashmtl", max_norm=0.0, update_weights_every=2)
    w.combine_gradients(grads(rating=[2.0, 0.0], match=[0.0, 0.5]), {})  # solves: alpha = (1/2, 2)
    (d,) = w.combine_gradients(grads(rating=[4.0, 0.0], match=[0.0, 1.0]), {})  # reuses it
    assert d.tolist() == pytest.approx([2.0, 2.0], abs=1e-5)
    (d,) = w.combine_gradients(grads(rating=[4.0, 0.0], match=[0.0, 1.0]), {})  # solves again: (1/4, 1)
    assert d.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert w.calls.item() == 3


def test_state_round_trip(make_weighting):
    w = make_weighting("nashmtl", update_weights_every=2, max_norm=0.0)
    w.combine_gradients(grads(rating=[2.0, 0.0], match=[0.0, 0.5]), {})
    w.combine_gradients(grads(rating=[1.0, 2.0], match=[-1.0, -2.0]), {})  # reused: no failure counted
    w.combine_gradients(grads(rating=[1.0, 2.0], match=[-1.0, -2.0]), {})  # solved: fails
    state = w.state_dict()
    assert state == {"alpha": [1.0, 1.0, 1.0, 1.0], "calls": [3.0], "failures": [1.0]}
    w.combine_gradients(grads(rating=[2.0, 0.0], match=[0.0, 0.5]), {})  # reuses the fallback's alpha = 1
    fresh = make_weighting("nashmtl", update_weights_every=2, max_norm=0.0)
    fresh.load_state_dict(w.state_dict())
    assert fresh.state_dict() == w.state_dict()
    # resumed at call 4: solves (alpha = (1/2, 2)), then reuses it on different gradients
    fresh.combine_gradients(grads(rating=[2.0, 0.0], match=[0.0, 0.5]), {})
    (d,) = fresh.combine_gradients(grads(rating=[4.0, 0.0], match=[0.0, 1.0]), {})
    assert d.tolist() == pytest.approx([2.0, 2.0], abs=1e-5)


def test_backward_loss_gives_shared_the_combined_gradient(make_weighting):
    w = make_weighting("nashmtl", max_norm=0.0)
    shared = torch.zeros(2, requires_grad=True)
    head = torch.tensor(3.0, requires_grad=True)
    losses = {"rating": shared @ torch.tensor([2.0, 0.0]) + head ** 2, "match": shared @ torch.tensor([0.0, 0.5])}
    w.backward_loss(losses, [shared]).backward()
    assert shared.grad.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert head.grad.item() == pytest.approx(6.0)  # the head's own loss, unweighted


@pytest.mark.parametrize("options", [{"max_norm": -1.0}, {"update_weights_every": 0}, {"optim_niter": 0},
                                     {"optim_niter": "many"}, {"solver": "ecos"}])
def test_options_typed_and_validated(make_cfg, options):
    with pytest.raises(ValueError, match="weighting.options"):
        make_cfg("nashmtl", **options)


def test_option_defaults_are_the_official_codes(make_weighting):
    o = make_weighting("nashmtl").options
    assert (o.max_norm, o.update_weights_every, o.optim_niter) == (1.0, 1, 20)


@pytest.mark.parametrize("stage", [2, 3])
def test_refused_under_zero_2_and_3(make_cfg, stage):
    with pytest.raises(ValueError, match=f"needs per-task gradients, which ZeRO stage {stage} partitions"):
        make_cfg("nashmtl", zero_stage=stage)
    make_cfg("nashmtl", zero_stage=1)  # accepted
