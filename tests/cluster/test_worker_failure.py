"""Kill one Ray Train worker process (by pid) in the middle of a real run on a
``ray start --head`` cluster. With ``distributed.max_failures=1`` Ray Train restarts the
worker group from the latest checkpoint; the step counter continues from it; the final
metrics match the uninterrupted reference run of the same seed (test_job_submission).

The kill waits for a checkpoint Ray Train has registered, not for a ``step_N`` folder:
a worker killed while the group is still reporting step N makes Ray Train (rightly)
restart from the checkpoint before it, from scratch if there is none."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import psutil
import pytest

from local_cluster import (REPO, RECOVERY_EVAL, RECOVERY_STEPS, StreamedJob, bundle_metrics, runtime_env_json,
                           train_command, wait_for_committed_checkpoint)

# ~85 s (a reference run, then a run whose worker is SIGKILLed); run with -m slow
pytestmark = [pytest.mark.integration, pytest.mark.slow]
STEP_LINE = r"\[ecomtl\] step (\d+)/%d" % RECOVERY_STEPS


def test_killed_worker_resumes_from_checkpoint(cluster, runs_dir, data_root, reference_run):
    name = "killed-worker"
    job = StreamedJob(cluster, ["--submission-id", "ecomtl-kill-worker", "--working-dir", ".", "--runtime-env-json",
                                runtime_env_json(data_root), "--", *train_command(runs_dir, name)], cwd=REPO)
    _, m = job.wait_for(r"pid=(\d+)\) world_rank=1")
    victim = int(m.group(1))
    # Kill as soon as Ray Train has registered a checkpoint (watched on storage: worker
    # logs reach the driver seconds late).
    committed = wait_for_committed_checkpoint(runs_dir / name, job)
    proc = psutil.Process(victim)
    assert "RayTrainWorker" in " ".join(proc.cmdline()), proc.cmdline()  # never kill anything else
    os.kill(victim, signal.SIGKILL)
    t_kill = time.time() - job.t0
    print(f"[recovery] SIGKILL pid {victim} at t={t_kill:.1f}s, latest committed checkpoint step {committed}",
          flush=True)

    rc = job.wait()
    log = runs_dir.parent / f"{runs_dir.name}-{name}.log"  # outlives runs_dir, for a post-mortem
    log.write_text("\n".join(f"{t:7.2f} {line}" for t, line in job.lines))
    print(f"[recovery] job log: {log}", flush=True)
    assert rc == 0, job.text[-5000:]
    lines = job.lines
    t_resumed, m = job.wait_for(r"resumed from checkpoint at step (\d+)")
    resumed_step = int(m.group(1))
    i_resumed = next(i for i, (t, line) in enumerate(lines) if "resumed from checkpoint" in line)
    before = [int(re.search(STEP_LINE, ln).group(1)) for _, ln in lines[:i_resumed] if re.search(STEP_LINE, ln)]
    after = [(t, int(re.search(STEP_LINE, ln).group(1))) for t, ln in lines[i_resumed:] if re.search(STEP_LINE, ln)]
    t_end = lines[-1][0]

    assert sum("Started training worker group of size 2" in ln for _, ln in lines) == 2
    assert resumed_step % RECOVERY_EVAL == 0 and committed <= resumed_step <= max(before)
    # The counter continues from the checkpoint, it does not restart at 1.
    assert after[0][1] == resumed_step + 1 and after[-1][1] == RECOVERY_STEPS

    # Each evaluation is recorded once in the final trainer state (no replayed history).
    final_ckpt = runs_dir / name / f"step_{RECOVERY_STEPS:07d}"
    history = json.loads((final_ckpt / "trainer_state.json").read_text())["history"]
    evals = [h["step"] for h in history if h["kind"] == "eval"]
    assert evals == list(range(RECOVERY_EVAL, RECOVERY_STEPS + 1, RECOVERY_EVAL))

    ref_name, _, ref_wall = reference_run
    ref = bundle_metrics(runs_dir, ref_name)
    got = bundle_metrics(runs_dir, name)
    print(f"\n[recovery] kill worker pid {victim} at t={t_kill:.1f}s after {max(before)} steps; "
          f"resumed from step {resumed_step} at t={t_resumed:.1f}s (step {after[0][1]} at t={after[0][0]:.1f}s); "
          f"finished at t={t_end:.1f}s. Steps redone: {max(before) - resumed_step}; "
          f"restart gap {after[0][0] - t_kill:.1f}s; job wall {t_end:.1f}s vs {ref_wall:.1f}s uninterrupted "
          f"(failure cost {t_end - ref_wall:.1f}s). aggregate {got['aggregate']:.4f} vs reference "
          f"{ref['aggregate']:.4f}; checkpoint step {got['checkpoint_step']} vs {ref['checkpoint_step']}")
    assert abs(got["aggregate"] - ref["aggregate"]) <= 0.02
    for task, m in ref["validation"].items():
        assert abs(got["validation"][task]["score"] - m["score"]) <= 0.03, task
