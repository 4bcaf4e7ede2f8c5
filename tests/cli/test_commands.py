"""The user's commands end to end, as subprocesses: `jobs/train.py` (= `ecomtl train`)
on a real local Ray, and `ecomtl evaluate` on a split that lives elsewhere."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def run(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO / "platform"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("runs")
    p = run(["jobs/train.py", "jobs/configs/tiny.yaml", f"output.storage_path={out}", "training.steps=6",
             "training.eval_every=3", "--resume", "cli-run"])
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout, out


@pytest.mark.integration
def test_train_job_prints_table_and_bundle(trained_bundle):
    stdout, out = trained_bundle
    assert re.search(r"^attributes\s+\d+", stdout, re.M), stdout  # the per-task table
    assert "skipped rows" in stdout and "missing_text" in stdout  # the data report
    bundle = re.search(r"^bundle: (.+)$", stdout, re.M).group(1)
    assert Path(bundle) == out / "cli-run" / "bundle" and (Path(bundle) / "model.safetensors").exists()
    assert (out / "cli-run" / "training.png").stat().st_size > 10_000


@pytest.mark.integration
def test_evaluate_on_a_split_elsewhere(trained_bundle, data_root, tmp_path):
    _, out = trained_bundle
    # a 'test' split under another root, same layout: 40 validation rows per source
    for folder, name in [("clothing_reviews", "validation.csv"), ("queryner", "validation.jsonl"), ("abt_buy", "validation.jsonl")]:
        (tmp_path / folder).mkdir()
        src = Path(data_root, folder, name)
        if name.endswith(".csv"):
            pd.read_csv(src).head(40).to_csv(tmp_path / folder / "test.csv", index=False)
        else:
            lines = src.read_text().splitlines()[:40]
            (tmp_path / folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    p = run(["-m", "ecomtl.cli", "evaluate", str(out / "cli-run" / "bundle"), "--data-root", str(tmp_path), "--split", "test"])
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout)
    assert result["split"] == "test" and result["data_root"] == str(tmp_path)
    assert result["tasks"]["attributes"]["n"] == 40 and "f1" in result["tasks"]["attributes"]
    assert result["data_report"]["reviews"]["rows_read"] == 40
    assert 0 <= result["aggregate"] <= 1


def test_bad_override_fails_fast_naming_the_field():
    p = run(["-m", "ecomtl.cli", "train", "jobs/configs/tiny.yaml", "training.batch_size=0"])
    assert p.returncode == 2 and "training.batch_size" in p.stderr and "Traceback" not in p.stderr
