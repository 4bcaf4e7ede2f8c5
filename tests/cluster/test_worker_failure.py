"""Kill one Ray Train worker process (by pid) in the middle of a real run on a
``ray start --head`` cluster. With ``distributed.max_failures=1`` Ray Train restarts the
worker group from the latest checkpoint; the step counter continues from it; the final
metrics match the uninterrupted reference run of the same seed (test_job_submission)."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import psutil
import pytest

from local_cluster import (REPO, RECOVERY_EVAL, RECOVERY_STEPS, StreamedJob, bundle_metrics, runtime_env_json,
                           train_command)

# Kept out of CI because it FAILS today: the SIGKILLed rank-1 worker does not make Ray
# Train restart the group; the job runs to its last step (seen with 30 and 120 steps).
# Issue 5 stays open until this passes.
pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEP_LINE = r"\[ecomtl\] step (\d+)/%d" % RECOVERY_STEPS


def test_killed_worker_resumes_from_checkpoint(cluster, runs_dir, data_root, reference_run):
    name = "killed-worker"
    job = StreamedJob(cluster, ["--submission-id", "ecomtl-kill-worker", "--working-dir", ".", "--runtime-env-json",
                                runtime_env_json(data_root), "--", *train_command(runs_dir, name)], cwd=REPO)
    _, m = job.wait_for(r"pid=(\d+)\) world_rank=1")
    victim = int(m.group(1))
    # Kill as soon as the first checkpoint is on storage: watched on disk, since worker
    # logs reach the driver with a delay of up to seconds (longer than the run).
    first = runs_dir / name / f"step_{RECOVERY_EVAL:07d}" / "trainer_state.json"
    deadline = time.time() + 600
    while not first.exists():
        assert time.time() < deadline and job.proc.poll() is None, job.text[-3000:]
        time.sleep(0.02)
    proc = psutil.Process(victim)
    assert "RayTrainWorker" in " ".join(proc.cmdline()), proc.cmdline()  # never kill anything else
    os.kill(victim, signal.SIGKILL)
    t_kill = time.time() - job.t0

    rc = job.wait()
    assert rc == 0, job.text[-5000:]
    lines = job.lines
    t_resumed, m = job.wait_for(r"resumed from checkpoint at step (\d+)")
    resumed_step = int(m.group(1))
    i_resumed = next(i for i, (t, line) in enumerate(lines) if "resumed from checkpoint" in line)
    before = [int(re.search(STEP_LINE, ln).group(1)) for _, ln in lines[:i_resumed] if re.search(STEP_LINE, ln)]
    after = [(t, int(re.search(STEP_LINE, ln).group(1))) for t, ln in lines[i_resumed:] if re.search(STEP_LINE, ln)]
    t_end = lines[-1][0]

    assert sum("Started training worker group of size 2" in ln for _, ln in lines) == 2
    assert resumed_step % RECOVERY_EVAL == 0 and resumed_step <= max(before)
    # The counter continues from the checkpoint, it does not restart at 1.
    assert after[0][1] == resumed_step + 1 and after[-1][1] == RECOVERY_STEPS

    # Each evaluation is recorded once in the final trainer state (no replayed history).
    final_ckpt = runs_dir / name / f"step_{RECOVERY_STEPS:07d}"
    history = json.loads((final_ckpt / "trainer_state.json").read_text())["history"]
    evals = [h["step"] for h in history if h["kind"] == "eval"]
    assert evals == list(range(RECOVERY_EVAL, RECOVERY_STEPS + 1, RECOVERY_EVAL))

    ref = bundle_metrics(runs_dir, reference_run[0])
    got = bundle_metrics(runs_dir, name)
    print(f"\n[recovery] kill worker pid {victim} at t={t_kill:.1f}s after {max(before)} steps; "
          f"resumed from step {resumed_step} at t={t_resumed:.1f}s (step {after[0][1]} at t={after[0][0]:.1f}s); "
          f"finished at t={t_end:.1f}s. Steps redone: {max(before) - resumed_step}; "
          f"restart gap {after[0][0] - t_kill:.1f}s. aggregate {got['aggregate']:.4f} vs reference "
          f"{ref['aggregate']:.4f}; checkpoint step {got['checkpoint_step']} vs {ref['checkpoint_step']}")
    assert abs(got["aggregate"] - ref["aggregate"]) <= 0.02
    for task, m in ref["validation"].items():
        assert abs(got["validation"][task]["score"] - m["score"]) <= 0.03, task
