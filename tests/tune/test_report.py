"""Which trials the sweep scores on the whole validation split before naming the best."""

from ecomtl.evaluation import AGGREGATE
from ecomtl.tune.report import CHECKPOINT, finalists


def row(tid, agg, status="completed", kind="mtl"):
    return {"trial_id": tid, AGGREGATE: agg, "status": status, "kind": kind, CHECKPOINT: f"/ckpt/{tid}"}


def test_finalists_are_the_sampled_best_the_next_completed_and_the_default():
    rows = [row("default", 0.50, kind="default"), row("a", 0.61, status="stopped early"), row("b", 0.60),
            row("c", 0.58), row("d", 0.55), row("e", None, status="error")]
    assert [r["trial_id"] for r in finalists(rows, top=3)] == ["a", "b", "c", "default"]
    assert [r["trial_id"] for r in finalists(rows, top=1)] == ["a", "default"]
    # the default among the top ones is not scored twice
    assert [r["trial_id"] for r in finalists(rows[:1] + rows[2:4], top=3)] == ["b", "c", "default"]


def test_single_task_runs_keep_the_metric_and_count_alone():
    from pathlib import Path

    from ecomtl.config.load import load_config
    from ecomtl.tune.trial import single_task_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml",
                      ["tasks.match.metric=pos_f1", "tasks.match.score_weight=0"])
    sizes = {s: 100 for s in cfg.sources}
    alone = single_task_config(cfg, "match", sizes)
    # the delta to single-task compares the same metric; alone, a weight of 0 would select on nothing
    assert list(alone.tasks) == ["match"] and alone.tasks["match"].metric == "pos_f1"
    assert alone.tasks["match"].score_weight == 1.0


def test_multi_objective_sweep_leaves_out_tasks_not_selected_on():
    from pathlib import Path

    from ecomtl.config.load import load_config
    from ecomtl.tune.space import TuneSection, objectives

    cfg = load_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml",
                      ["tasks.stars.score_weight=0"])
    section = TuneSection.model_validate({"mode": "multi", "space": {"optim.lr": {"dist": "choice", "values": [1e-4]}}})
    assert objectives(cfg, section) == (["rating/score", "attributes/score", "match/score"], ["max"] * 3)
