"""``output.storage_path``: a local directory or a URI that pyarrow resolves; here a
``file://`` URI, the same code path as ``s3://``/``gs://`` (Ray Train's pyarrow
filesystem), on a real local Ray."""

import json
from pathlib import Path

import pytest

from ecomtl.train.trainer import local_dir, storage_path
from ecomtl.train.run import train_experiment


def test_storage_path_forms(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for given, expected in [("~/runs", str(tmp_path / "runs")), ("s3://bucket/ecomtl", "s3://bucket/ecomtl"),
                            ("file:///mnt/shared/ecomtl", "file:///mnt/shared/ecomtl")]:
        cfg = tiny_cfg.model_copy(deep=True)
        cfg.output.storage_path = given
        assert storage_path(cfg) == expected
    assert local_dir("file:///mnt/shared/my%20runs") == "/mnt/shared/my runs"
    assert local_dir("/mnt/x") == "/mnt/x" and local_dir("gs://b/x") is None


@pytest.mark.integration
def test_checkpoints_and_bundle_under_a_file_uri(ray_local, tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.output.storage_path = f"file://{tmp_path}/uri-runs"
    cfg.training.steps, cfg.training.eval_every = 4, 2
    out = train_experiment(cfg, run_name="uri", log=lambda *_: None)
    run = Path(tmp_path, "uri-runs", "uri")
    assert out.run_dir == f"file://{tmp_path}/uri-runs/uri"
    state = json.loads((run / "step_0000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and (run / "step_0000002" / "deepspeed").is_dir()
    assert out.bundle == run / "bundle" and (run / "bundle" / "model.safetensors").is_file()
