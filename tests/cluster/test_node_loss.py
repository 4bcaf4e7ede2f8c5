"""A whole node lost mid-run: a second node joins the ``ray start --head`` cluster with
``ray start --address``, one of the two training workers lands on it (each worker asks
for 2 CPUs, the head has 2), and every process of that node is killed at once (SIGKILL,
as when a machine disappears) right after Ray Train registers the first checkpoint.

What Ray Train 2.60 does (measured, see the printed timeline): the worker's death counts
as one failure (``max_failures=1``); the controller then tries to start a new 2-worker
group, cannot place it on what is left, and keeps retrying (each attempt gives up after
``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``) instead of failing the job. The job waits;
when a node with room joins (here by hand, on a cloud the autoscaler of cluster.yaml),
the group starts there and resumes from the latest checkpoint by itself.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from local_cluster import (REPO, RECOVERY_EVAL, RECOVERY_STEPS, StreamedJob, runtime_env_json, train_command,
                           wait_for_committed_checkpoint)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# A short start timeout so that the failed restart is reported in seconds, not a minute.
START_TIMEOUT_S = 20


def test_node_lost_mid_run_waits_for_capacity_then_resumes(cluster, runs_dir, data_root):
    name = "node-loss"
    node = cluster.add_node(num_cpus=2)
    env = json.loads(runtime_env_json(data_root))
    env["env_vars"]["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(START_TIMEOUT_S)
    job = StreamedJob(cluster, ["--submission-id", "ecomtl-node-loss", "--working-dir", ".", "--runtime-env-json",
                                json.dumps(env), "--",
                                *train_command(runs_dir, name, ["distributed.cpus_per_worker=2"])], cwd=REPO)
    committed = wait_for_committed_checkpoint(runs_dir / name, job)
    node.kill()
    t_kill = time.time() - job.t0
    n_before = len(job.lines)

    # No node can take the lost worker: the job neither finishes nor fails; Ray Train
    # retries starting the worker group.
    time.sleep(3 * START_TIMEOUT_S)
    assert job.proc.poll() is None, "the job ended although no node could host its workers:\n" + job.text[-3000:]
    after = "\n".join(line for _, line in job.lines[n_before:])
    attempts = after.count("Attempting to start training worker group of size 2")
    assert attempts >= 2, after[-3000:]
    steps_before = [int(x) for x in re.findall(r"\[ecomtl\] step (\d+)/%d" % RECOVERY_STEPS,
                                               "\n".join(line for _, line in job.lines))]

    # Capacity comes back: the same job resumes from its checkpoint and finishes.
    cluster.add_node(num_cpus=2)
    t_added = time.time() - job.t0
    assert job.wait() == 0, job.text[-4000:]
    t_end = job.lines[-1][0]
    t_resumed, m = job.wait_for(r"resumed from checkpoint at step (\d+)")
    resumed = int(m.group(1))
    i = next(k for k, (_, line) in enumerate(job.lines) if "resumed from checkpoint" in line)
    later = [(t, int(x.group(1))) for t, line in job.lines[i:]
             if (x := re.search(r"\[ecomtl\] step (\d+)/%d" % RECOVERY_STEPS, line))]
    print(f"\n[node-loss] node killed at t={t_kill:.1f}s after step {max(steps_before)}; "
          f"{attempts} failed worker-group starts in the next {3 * START_TIMEOUT_S}s (job still running); "
          f"node added at t={t_added:.1f}s; resumed from step {resumed} at t={t_resumed:.1f}s; "
          f"step {later[0][1]} at t={later[0][0]:.1f}s; finished at t={t_end:.1f}s; "
          f"steps redone {max(steps_before) - resumed}")
    assert resumed % RECOVERY_EVAL == 0 and resumed >= committed
    assert later[0][1] == resumed + 1 and later[-1][1] == RECOVERY_STEPS
