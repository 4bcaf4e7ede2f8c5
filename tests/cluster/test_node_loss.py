"""A whole node lost mid-run: a second node joins the ``ray start --head`` cluster with
``ray start --address``, one of the two training workers lands on it (each worker asks
for 2 CPUs, the head has 2), and every process of that node is killed at once (SIGKILL,
as when a machine disappears) right after the first checkpoint.

What Ray Train does then (measured, see the printed timeline): it counts the failure,
tries to restart the 2-worker group, cannot place the second worker on what is left
(no autoscaler here), and once the worker-group start timeout has passed the job fails
with a clear message. Started again with the same run name once a node is back, it
resumes from the checkpoint and finishes. With an autoscaler (cluster.yaml) the
restart instead waits for a replacement node.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from local_cluster import REPO, RECOVERY_EVAL, RECOVERY_STEPS, StreamedJob, runtime_env_json, train_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# A short start timeout so that the failed restart is reported in seconds, not a minute.
START_TIMEOUT_S = 20


def _submit(cluster, runs_dir, data_root, name: str, sid: str) -> StreamedJob:
    env = json.loads(runtime_env_json(data_root))
    env["env_vars"]["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(START_TIMEOUT_S)
    return StreamedJob(cluster, ["--submission-id", sid, "--working-dir", ".", "--runtime-env-json", json.dumps(env),
                                 "--", *train_command(runs_dir, name, ["distributed.cpus_per_worker=2"])], cwd=REPO)


def test_node_lost_mid_run_fails_clearly_then_resumes(cluster, runs_dir, data_root):
    name = "node-loss"
    node = cluster.add_node(num_cpus=2)
    job = _submit(cluster, runs_dir, data_root, name, "ecomtl-node-loss")
    first = runs_dir / name / f"step_{RECOVERY_EVAL:07d}" / "trainer_state.json"
    while not first.exists():
        assert job.proc.poll() is None and time.time() - job.t0 < 600, job.text[-3000:]
        time.sleep(0.02)
    node.kill()
    t_kill = time.time() - job.t0
    rc = job.wait()
    t_end = time.time() - job.t0
    text = job.text
    print(f"\n[node-loss] node killed at t={t_kill:.1f}s; job exited {rc} at t={t_end:.1f}s")
    print("\n".join(line for line in text.splitlines()
                    if re.search(r"(?i)error|fail|died|timeout|resum|Job '", line))[-3000:])
    assert rc != 0, "expected the run to fail when a worker's node is gone and no node can replace it"
    assert "failed" in cluster.ray("job", "status", "ecomtl-node-loss", check=False).stdout.lower()
    done = [int(m.group(1)) for m in re.finditer(r"\[ecomtl\] step (\d+)/%d" % RECOVERY_STEPS, text)]

    # A node comes back; the same command (same run name) resumes from the checkpoint.
    cluster.add_node(num_cpus=2)
    again = _submit(cluster, runs_dir, data_root, name, "ecomtl-node-loss-resubmitted")
    assert again.wait() == 0, again.text[-4000:]
    t_resumed, m = again.wait_for(r"resumed from checkpoint at step (\d+)")
    resumed = int(m.group(1))
    steps = [int(m.group(1)) for m in re.finditer(r"\[ecomtl\] step (\d+)/%d" % RECOVERY_STEPS, again.text)]
    print(f"[node-loss] before the loss: steps up to {max(done)}; resubmitted job resumed from step {resumed} "
          f"at t={t_resumed:.1f}s, first step {steps[0]}, finished step {steps[-1]} in {again.lines[-1][0]:.1f}s")
    assert resumed >= RECOVERY_EVAL and resumed % RECOVERY_EVAL == 0
    assert steps[0] == resumed + 1 and steps[-1] == RECOVERY_STEPS
