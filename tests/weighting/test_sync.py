"""Cross-rank state: 2 real processes (gloo, CPU) drive each stateful weighting with
different losses; after ``sync`` both hold the same state, the average of theirs."""

import pytest

STATEFUL = ["uncertainty", "dwa", "famo", "gradnorm", "nashmtl"]


@pytest.fixture(scope="module")
def ranks(two_ranks, make_cfg):
    options = {"dwa": {"window": 2}}
    cfgs = {k: make_cfg(k, **options.get(k, {})) for k in [*STATEFUL, "pcgrad"]}
    return two_ranks("_gloo_worker", cfgs)


def mean(a, b):
    if isinstance(a, list):
        return [mean(x, y) for x, y in zip(a, b)]
    return (a + b) / 2


@pytest.mark.parametrize("kind", STATEFUL)
def test_state_agrees_after_sync(ranks, kind):
    r0, r1 = ranks[0][kind], ranks[1][kind]
    assert r0["before"] != r1["before"], "the ranks were meant to diverge before sync"
    assert r0["after"] == r1["after"]
    for name, value in r0["after"].items():
        assert value == pytest.approx(mean(r0["before"][name], r1["before"][name]), abs=1e-6)


def test_backward_loss_combines_rank_averaged_gradients(ranks):
    # averaged task gradients g1 = (2, 0), g2 = (-2, 1): g1 . g2 = -4 < 0, so
    # g1' = g1 + 4/5 g2 = (0.4, 0.8), g2' = g2 + g1 = (0, 1); their sum (0.4, 1.8).
    # (PCGrad of each rank's own gradients, then averaged, would give (0.4, 1.7).)
    for r in ranks:
        assert r["pcgrad_grad"] == pytest.approx([0.4, 1.8], abs=1e-6)
