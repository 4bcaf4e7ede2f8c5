"""The README's ZeRO support matrix, cell by cell: 2 gloo processes, a real DeepSpeed
engine per (stage, weighting). Each Y cell must take the same first step as plain
data-parallel SGD and leave both ranks with equal parameters and weighting state; each
N cell must be refused by the schema."""

import pytest

LOSS_LEVEL = ["static", "uncertainty", "dwa", "famo"]
GRADIENT = ["pcgrad", "cagrad", "gradnorm", "nashmtl"]
# (stage, kind, gradient accumulation steps); a few cells again with accumulation, where
# DeepSpeed scales the loss and steps only at the boundary
CELLS = ([(s, k, 1) for s in (0, 1, 2, 3) for k in LOSS_LEVEL] + [(s, k, 1) for s in (0, 1) for k in GRADIENT]
         + [(1, "static", 2), (1, "pcgrad", 2), (1, "gradnorm", 2), (3, "static", 2), (3, "uncertainty", 2)])


@pytest.fixture(scope="module")
def ranks(two_ranks, make_cfg):
    options = {"dwa": {"window": 1}}  # so that the third step already uses a loss ratio
    cfgs = {k: make_cfg(k, **options.get(k, {})) for k in LOSS_LEVEL + GRADIENT}
    return two_ranks("_zero_worker", CELLS, cfgs)


@pytest.mark.parametrize("stage,kind,gas", CELLS, ids=[f"zero{s}-{k}-gas{g}" for s, k, g in CELLS])
def test_supported_cell(ranks, stage, kind, gas):
    r0, r1 = (r[f"{stage}/{kind}/{gas}"] for r in ranks)
    for r in (r0, r1):
        assert r["first_step_error"] < 1e-5, "the DeepSpeed step differs from data-parallel SGD"
    assert r0["params"] == pytest.approx(r1["params"], abs=1e-6)
    assert r0["state"] == r1["state"]
    if kind != "static":  # the weighting did change the training, or this proves nothing
        static = ranks[0][f"{stage}/static/{gas}"]["params"]
        assert max(abs(a - b) for a, b in zip(r0["params"], static)) > 1e-4


@pytest.mark.parametrize("kind", GRADIENT)
@pytest.mark.parametrize("stage", [2, 3])
def test_unsupported_cell_refused(make_cfg, stage, kind):
    with pytest.raises(ValueError, match=f"needs per-task gradients, which ZeRO stage {stage} partitions"):
        make_cfg(kind, zero_stage=stage)
