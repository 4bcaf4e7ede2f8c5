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
