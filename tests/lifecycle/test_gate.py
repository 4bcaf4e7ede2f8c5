"""The gate: head-by-head comparison, its table and exit codes; on real bundles scored on
real data (a bundle against itself passes; a bundle with a broken head is refused)."""

from __future__ import annotations

import json

import pytest

from ecomtl.cli import main
from ecomtl.config.load import ConfigError
from ecomtl.lifecycle.gate import MISSING, NEW, PASS, REFUSE, Scores, compare, parse_tolerances, scores_from_metrics


def scores(label, **tasks):
    return Scores(label, {t: {"score": s, "metric": "macro_f1"} for t, s in tasks.items()})


def test_compare_verdicts_and_tolerances():
    ref = scores("ref", rating=0.50, match=0.60, category=0.70)
    same = compare(ref, ref)
    assert same.passed and [r.verdict for r in same.rows] == [PASS] * 3
    cand = scores("cand", rating=0.495, match=0.55, category=0.80, extra=0.1)
    assert not compare(cand, ref).passed  # tolerance 0: any loss refuses
    result = compare(cand, ref, 0.01)  # rating within 0.01, match loses 0.05
    verdicts = {r.task: r.verdict for r in result.rows}
    assert verdicts == {"rating": PASS, "match": REFUSE, "category": PASS, "extra": NEW}
    assert [r.task for r in result.refused] == ["match"]
    assert compare(cand, ref, 0.01, {"match": 0.06}).passed  # a per-head override
    table = result.table()
    assert "head" in table and "REFUSE (loses 0.0500 > 0.01)" in table and "gate: REFUSED — match" in table
    # a head the candidate lacks is refused; different metrics are not comparable
    assert {r.task: r.verdict for r in compare(scores("c", rating=0.9), ref).rows}["match"] == MISSING
    other = Scores("c", {"rating": {"score": 0.9, "metric": "accuracy"}})
    assert compare(other, scores("r", rating=0.5)).refused[0].why.startswith("scored on accuracy")


def test_tolerance_parsing_and_errors():
    assert parse_tolerances(["0.02", "match=0.05"]) == (0.02, {"match": 0.05})
    assert parse_tolerances(None) == (0.0, {})
    for bad in (["x"], ["-0.1"], ["match=nan"]):
        with pytest.raises(ConfigError, match="--tolerance"):
            parse_tolerances(bad)
    with pytest.raises(ConfigError, match="no head named nope"):
        compare(scores("c", a=1.0), scores("r", a=1.0), 0.0, {"nope": 0.1})


def test_every_metrics_json_shape_reads():
    body = {"rating": {"n": 3, "macro_f1": 0.4, "score": 0.4}}
    for shape in (body, {"tasks": body, "aggregate": 0.4}, {"validation": body, "selection": {"step": 3}}):
        assert scores_from_metrics("x", shape).tasks == {"rating": {"score": 0.4, "metric": None}}
    with pytest.raises(ConfigError, match="no per-task scores"):
        scores_from_metrics("x", {"aggregate": 0.3})


def broken_copy(src, dst):
    """The bundle with rating's head forced to always answer its rarest class."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from ecomtl.model.bundle import write_manifest

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    counts = json.loads((dst / "tasks.json").read_text())["tasks"]["rating"]["labels"]["counts"]
    weights["heads.rating.out.weight"].zero_()
    weights["heads.rating.out.bias"] = torch.full_like(weights["heads.rating.out.bias"], -10.0)
    weights["heads.rating.out.bias"][counts.index(min(counts))] = 10.0
    save_file(weights, str(dst / "model.safetensors"))
    write_manifest(dst)
    return dst


def test_gate_command_on_real_bundles(source_bundle, tmp_path, data_root, capsys):
    args = ["--data-root", data_root, "--max-rows", "96"]
    assert main(["gate", str(source_bundle), "--against", str(source_bundle), *args,
                 "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "gate: PASS — 4 head(s) within tolerance" in out and "+0.0000" in out
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is True

    worse = broken_copy(source_bundle, tmp_path / "worse")
    assert main(["gate", str(worse), "--against", str(source_bundle), *args]) == 1
    out = capsys.readouterr().out
    rating = next(line for line in out.splitlines() if line.startswith("rating"))
    assert "REFUSE" in rating, out
    assert all("REFUSE" not in line for line in out.splitlines() if line.startswith(("stars", "match", "attributes")))
    # against a metrics JSON (the baseline's shape): a generous tolerance lets the same bundle pass
    ref = json.loads((tmp_path / "v.json").read_text())
    baseline = {r["task"]: {"score": r["reference"] + 0.02} for r in ref["rows"]}
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    assert main(["gate", str(source_bundle), "--against", str(tmp_path / "baseline.json"), *args]) == 1
    assert main(["gate", str(source_bundle), "--against", str(tmp_path / "baseline.json"), *args,
                 "--tolerance", "0.03"]) == 0
    assert main(["gate", str(tmp_path / "nowhere"), "--against", str(source_bundle)]) == 2  # usage error
