"""What every weighting inherits: the registry, resume edge cases, sync without ranks."""

import pytest
import torch

from ecomtl.weighting import WEIGHTINGS


def test_every_weighting_is_registered_with_a_paper_and_typed_options():
    assert WEIGHTINGS.names() == ["cagrad", "dwa", "famo", "gradnorm", "nashmtl", "pcgrad", "static", "uncertainty"]
    for row in WEIGHTINGS.describe():
        assert row["description"], row["name"]


def test_static_has_no_state_or_parameters(make_weighting):
    w = make_weighting("static")
    assert w.state_dict() == {} and w.parameters() == []
    assert w.combine({"rating": torch.tensor(2.0), "match": torch.tensor(1.0)}, 0).item() == 3.0


def test_resume_from_a_checkpoint_without_weighting_state_keeps_the_fresh_one(make_weighting):
    w = make_weighting("famo")
    w.load_state_dict({})
    assert w.logits.tolist() == [0.0] * 4


def test_another_kinds_state_is_refused(make_weighting):
    with pytest.raises(KeyError, match="exp_avg"):
        make_weighting("famo").load_state_dict(make_weighting("uncertainty").state_dict() | {"logits": [0.0] * 4})


def test_sync_without_torch_distributed_is_a_no_op(make_weighting):
    w = make_weighting("gradnorm")
    w.weights[0] = 1.5
    w.sync()
    assert w.weights[0].item() == 1.5


@pytest.mark.parametrize("kind", ["pcgrad", "gradnorm", "cagrad", "nashmtl"])
def test_a_lone_task_step_matches_its_combined_gradient(make_weighting, kind):
    """A step that carries one task skips the per-task backward where the method knows
    the factor: the gradient must be what combining that one gradient would give."""
    w = make_weighting(kind)
    if kind == "gradnorm":
        w.weights[w.tasks.index("rating")] = 0.7  # a weight left by earlier multi-task steps
    shared = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    loss = {"rating": (shared ** 2).sum() * 0.3 + shared[0]}
    (g,) = torch.autograd.grad(loss["rating"], [shared], retain_graph=True)
    expected = w.combine_gradients({"rating": [g]}, {"rating": loss["rating"].detach()})[0]
    fresh = make_weighting(kind)
    if kind == "gradnorm":
        fresh.weights[fresh.tasks.index("rating")] = 0.7
    fresh.backward_loss(loss, [shared]).backward()
    assert shared.grad == pytest.approx(expected, rel=1e-4)
    assert (fresh.single_task_scale("rating", loss["rating"]) is None) == (kind == "nashmtl")
    if kind == "gradnorm":  # the lone step still records the task's first loss, L(0)
        assert fresh.initial_losses.tolist() == pytest.approx(w.initial_losses.tolist())
