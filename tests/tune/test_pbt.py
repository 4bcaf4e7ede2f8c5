"""Population Based Training (tune/pbt.py): what the schema refuses, and a real PBT sweep
with Ray's scheduler on the tiny model where the worse member clones the better one."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ecomtl.config.load import ConfigError
from ecomtl.evaluation import AGGREGATE
from ecomtl.tune.pbt import read_exploits
from ecomtl.tune.space import load_sweep_config
from ecomtl.tune.sweep import run_sweep

REPO = Path(__file__).resolve().parents[2]
TINY_SWEEP = REPO / "jobs" / "configs" / "tiny_sweep.yaml"
WEIGHTS_ONLY = "tune.space={weights: {dist: loguniform, low: 0.25, high: 4.0}}"


def pbt_cfg(*overrides):
    return load_sweep_config(TINY_SWEEP, ["training.steps=6", "training.eval_every=3", *overrides])


@pytest.mark.parametrize("overrides, says", [
    (["tune.pbt={perturbation_interval: 3}", WEIGHTS_ONLY], "set tune.asha: null"),
    (["tune.asha=null", "tune.pbt={perturbation_interval: 3}"], "tune.space.optim.lr: PBT changes values"),
    (["tune.asha=null", "tune.pbt={perturbation_interval: 2}", WEIGHTS_ONLY], "multiple of training.eval_every"),
    (["tune.asha=null", "tune.pbt={perturbation_interval: 6}", WEIGHTS_ONLY], "must be below training.steps"),
    (["tune.asha=null", "tune.mode=multi", "tune.pbt={perturbation_interval: 3}", WEIGHTS_ONLY], "mode: single"),
    (["tune.asha=null", "tune.pbt={perturbation_interval: 3, quantile_fraction: 0.9}", WEIGHTS_ONLY],
     "quantile_fraction"),
    (["tune.asha=null", "tune.pbt={perturbation_interval: 3}", "tune.space={weights: {dist: simplex}}"],
     "tune.space.weights: PBT perturbs"),
    (["tune.asha=null", "tune.pbt={perturbation_interval: 3}", "training.early_stopping_patience=2", WEIGHTS_ONLY],
     "training.early_stopping_patience: under PBT"),
])
def test_pbt_config_is_refused_naming_the_field(overrides, says):
    with pytest.raises(ConfigError, match=says.replace(".", r"\.")):
        pbt_cfg(*overrides)


def test_pbt_accepts_weights_and_sampling():
    _, section = pbt_cfg("tune.asha=null", "tune.pbt={perturbation_interval: 3}",
                         "tune.space={weights: {dist: loguniform, low: 0.25, high: 4.0}, "
                         "sampling.temperature: {dist: uniform, low: 1.0, high: 3.0}}")
    assert section.pbt.perturbation_interval == 3 and section.pbt.synch


def test_pbt_explores_within_the_space():
    """Ray multiplies a Domain's value by 0.8/1.2 (a string cannot take that) and never
    clips: choices become lists, numbers are put back within their bounds."""
    from ecomtl.tune.pbt import ClipToSpace, mutations
    from ecomtl.tune.space import apply_params, param_space

    cfg, section = pbt_cfg("tune.asha=null", "tune.pbt={perturbation_interval: 3}",
                           "tune.space={weights: {dist: loguniform, low: 0.25, high: 4.0}, "
                           "sampling.temperature: {dist: uniform, low: 1.0, high: 3.0}, "
                           "sampling.kind: {dist: choice, values: [temperature, proportional]}, "
                           "sampling.sources_per_step: {dist: int, low: 1, high: 2}}")
    space = param_space(cfg, section)
    assert mutations(space)["sampling.kind"] == ["temperature", "proportional"]
    clip = ClipToSpace(space)
    explored = clip({"sampling.temperature": 1.0 * 0.8, "tasks.rating.weight": 4.0 * 1.2, "tasks.stars.weight": 0.5,
                     "sampling.sources_per_step": 3, "sampling.kind": "proportional"})
    assert explored["sampling.temperature"] == 1.0 and explored["tasks.rating.weight"] == 4.0
    assert explored["tasks.stars.weight"] == 0.5 and explored["sampling.sources_per_step"] == 2
    assert apply_params(cfg, explored).sampling.temperature == 1.0  # 0.8 would fail the schema (>= 1)


@pytest.mark.integration
def test_pbt_sweep_clones_the_better_member_and_trains_on(ray_local, tmp_path, data_root):
    # two members, bottom half clones top half at step 3: exactly one exploit, synchronous
    # (none at step 6, the last: Ray's own PBT would perturb there too)
    cfg, section = pbt_cfg(f"output.storage_path={tmp_path}", f"data_root={data_root}", "tune.asha=null",
                           "tune.pbt={perturbation_interval: 3, quantile_fraction: 0.5}", WEIGHTS_ONLY,
                           "tune.num_samples=2", "tune.max_concurrent=2", "tune.final_eval=false")
    printed = []
    out = run_sweep(cfg, section, log=printed.append)

    table = pd.read_csv(out.files["table"])
    assert len(table) == 2 and (table["status"] == "completed").all() and (table["steps_done"] == 6).all(), table
    moves = read_exploits(out.sweep_dir)
    assert len(moves) == 1 and moves[0]["step"] == 3, moves
    recipient, donor = moves[0]["trial_id"], moves[0]["cloned"]
    assert f"{recipient} <- {donor}" in "\n".join(printed)
    # the recipient's last segment started from the donor's state: its history up to step 3
    # is the donor's evaluation, not its own
    runs = Path(out.sweep_dir, "train_runs")

    def last_checkpoint(trial, upto):
        (run,) = sorted(runs.glob(f"{trial}-to{upto:07d}-*"))
        return sorted(run.glob("step_*"))[-1]

    def history(trial, upto, kind="eval"):
        state = json.loads((last_checkpoint(trial, upto) / "trainer_state.json").read_text())
        return [h for h in state["history"] if h["kind"] == kind]

    donor_at_3 = history(donor, 3)[-1]
    recipient_final = history(recipient, 6)
    assert recipient_final[0]["step"] == 3 and recipient_final[0][AGGREGATE] == donor_at_3[AGGREGATE]
    assert recipient_final[-1]["step"] == 6
    # and it trains on with explored (perturbed or resampled) weights, not the donor's: the
    # config its Train workers ran with holds the table's (explored) weights...
    by_id = table.set_index("trial_id")
    weights = [c for c in table.columns if c.startswith("w/")]
    assert (by_id.loc[recipient, weights] != by_id.loc[donor, weights]).any()
    ran_with = yaml.safe_load((last_checkpoint(recipient, 6) / "bundle" / "config.yaml").read_text())
    assert {f"w/{t}": spec["weight"] for t, spec in ran_with["tasks"].items()} == pytest.approx(
        by_id.loc[recipient, weights].to_dict())
    # ...and from the same model, optimizer state and batches, those weights trained otherwise
    # than the donor's own continuation (train losses averaged over steps 4-6; the cloned
    # Adam moments make this hold even for weights all scaled alike)
    donor_losses, recipient_losses = history(donor, 6, "train")[-1], history(recipient, 6, "train")[-1]
    assert [h["step"] for h in history(recipient, 6, "train")] == [h["step"] for h in history(donor, 6, "train")]
    losses = [k for k in donor_losses if k.startswith("train_loss/")]
    assert any(donor_losses[k] != recipient_losses[k] for k in losses), (donor_losses, recipient_losses)
