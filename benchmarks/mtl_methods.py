"""MTL methods against negative transfer, at equal compute per head, several seeds.

    python benchmarks/mtl_methods.py [--config jobs/configs/demo.yaml] [--seeds 3]
        [--methods static/hard,uncertainty/hard,famo/hard,pcgrad/hard,static/mmoe,static/ple]
        [--steps N] [--tasks rating,match,...] [--out /tmp/ecomtl_mtl] [overrides ...]

Every method ``weighting/sharing`` trains the config's heads together; each head is also
trained alone for the steps its source got in the multi-task run (the sweep's
``single_task`` rule: equal compute per head). Each run is scored on the full
validation split. Prints per-head mean ± std over seeds, the delta of each method to
single-task, which methods have no head below single-task beyond the seeds' spread, and
the cost of a training step against static/hard (from training samples/s); writes ``mtl_methods.png`` (heads ×
methods, delta to single-task) and ``mtl_methods.json`` under ``--out``.

On 2 CPU cores a demo-sized run takes ~15 minutes: the full grid (6 methods + 6 heads
alone, 3 seeds) is hours; use ``--steps``, ``--methods`` and ``--tasks`` to cut it, or a
GPU. Every finished run is appended to ``runs.jsonl`` under ``--out`` at once, and a
second call with the same ``--out`` skips the runs already there: an interrupted grid
resumes where it stopped, and a finished one re-prints its table in seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.config.load import load_config  # noqa: E402
from ecomtl.report import table  # noqa: E402

SINGLE = "single-task"


def train_scores(cfg, name: str) -> tuple[dict[str, float], float]:
    """Full-validation score per head, and training samples/s (progress windows, which
    exclude evaluation): with the same sampling, its inverse ratio is the cost per step."""
    from ecomtl.train.run import train_experiment

    out = train_experiment(cfg, run_name=f"{name}-{int(time.time())}", log=lambda *_: None)
    rates = [h["samples_per_s"] for h in out.history if h["kind"] == "train"][1:] or \
        [h["samples_per_s"] for h in out.history if h["kind"] == "train"]  # the first window holds start-up
    return {t: m["score"] for t, m in out.metrics.items()}, statistics.mean(rates)


class RunLog:
    """Finished runs, one JSON line each, keyed by (method, seed, task-or-None). Each line
    carries the grid's ``settings`` (config, steps, tasks, overrides): a log written under
    other settings is refused, never mixed into this table."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.done = {}
        if path.exists():
            for line in path.read_text().splitlines():
                r = json.loads(line)
                if r.get("settings") != settings:
                    raise SystemExit(f"{path} holds runs of other settings ({r.get('settings')}, not {settings}): "
                                     "use another --out")
                self.done[(r["method"], r["seed"], r.get("task"))] = r

    def get_or_run(self, method: str, seed: int, task, run) -> dict:
        key = (method, seed, task)
        if key not in self.done:
            scores, rate = run()
            self.done[key] = {"method": method, "seed": seed, "task": task, "scores": scores, "samples_per_s": rate,
                              "settings": self.settings}
            with self.path.open("a") as f:
                f.write(json.dumps(self.done[key]) + "\n")
        return self.done[key]


def single_task_scores(cfg, seed: int, log: RunLog) -> dict[str, float]:
    from ecomtl.tune.trial import single_task_config

    sizes = None
    scores = {}
    for task in cfg.tasks:
        def run(task=task):
            nonlocal sizes
            sizes = sizes or _train_sizes(cfg)
            return train_scores(single_task_config(cfg, task, sizes), f"single-s{seed}-{task}")
        scores[task] = log.get_or_run(SINGLE, seed, task, run)["scores"][task]
    return scores


def keep_tasks(cfg, tasks: list[str]):
    """The config with only ``tasks`` (and the sources they read): e.g. the demo's six
    classic heads without its ranking head."""
    from ecomtl.config.schema import ExperimentConfig

    unknown = sorted(set(tasks) - set(cfg.tasks))
    if unknown:
        raise SystemExit(f"--tasks: {unknown} not in the config's tasks {sorted(cfg.tasks)}")
    data = cfg.model_dump(mode="json")
    data["tasks"] = {t: data["tasks"][t] for t in tasks}
    used = {data["tasks"][t]["source"] for t in tasks}
    data["sources"] = {s: v for s, v in data["sources"].items() if s in used}
    if data["sampling"].get("weights"):
        data["sampling"]["weights"] = {s: w for s, w in data["sampling"]["weights"].items() if s in used}
    return ExperimentConfig.model_validate(data)


def _train_sizes(cfg) -> dict[str, int]:
    """Rows per source as the sampler sees them (after the bad-row policy)."""
    from ecomtl.data.prepare import prepare_data
    from ecomtl.model.build import load_tokenizer

    data = prepare_data(cfg, load_tokenizer(cfg.model), splits=("train",))
    return {s: len(d) for s, d in data.splits["train"].items()}


def summarise(results: dict[str, list[dict[str, float]]], tasks: list[str]) -> tuple[list, dict]:
    stats = {m: {t: (statistics.mean(r[t] for r in runs), statistics.pstdev(r[t] for r in runs)) for t in tasks}
             for m, runs in results.items()}
    rows = []
    for m, per_task in stats.items():
        rows.append([m] + [f"{mu:.4f} ± {sd:.4f}" for mu, sd in per_task.values()])
    return rows, stats


def holds_up(stats: dict, method: str, tasks: list[str]) -> bool:
    """No head below its single-task mean by more than the two spreads together."""
    return all(stats[method][t][0] >= stats[SINGLE][t][0] - (stats[method][t][1] + stats[SINGLE][t][1])
               for t in tasks)


def plot(stats: dict, tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = [m for m in stats if m != SINGLE]
    delta = np.array([[stats[m][t][0] - stats[SINGLE][t][0] for m in methods] for t in tasks])
    lim = max(1e-3, float(np.abs(delta).max()))
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 0.6 * len(tasks) + 1.5))
    im = ax.imshow(delta, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")  # fill the figure, not square cells
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i in range(len(tasks)):
        for j in range(len(methods)):
            ax.text(j, i, f"{delta[i, j]:+.3f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, label="score − single-task (mean over seeds)")
    ax.set_title("MTL methods vs each head alone (equal compute per head)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_against_static(rates: dict[str, list[float]], method: str) -> tuple[float, float]:
    """A method's cost per step against static/hard and against static weights on its own
    sharing layer (which isolates what the weighting adds); nan where that run is absent."""
    rate = statistics.mean(rates[method])
    ref = lambda m: statistics.mean(rates[m]) if m in rates else float("nan")  # noqa: E731
    return ref("static/hard") / rate, ref("static/" + method.split("/")[1]) / rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--methods", default="static/hard,uncertainty/hard,famo/hard,pcgrad/hard,static/mmoe,static/ple")
    p.add_argument("--steps", type=int)
    p.add_argument("--tasks", help="comma-separated subset of the config's tasks (default: all)")
    p.add_argument("--out", default="/tmp/ecomtl_mtl")
    p.add_argument("--costs-only", action="store_true", help="no single-task runs: the scores and the cost per "
                   "step of the methods only (re-measuring costs after a change to the step)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_overrides = [f"output.storage_path={out_dir / 'runs'}", *args.overrides]
    if args.steps:
        base_overrides.append(f"training.steps={args.steps}")
    methods = [m.split("/") for m in args.methods.split(",")]
    log = RunLog(out_dir / "runs.jsonl", {"config": str(Path(args.config).resolve()), "steps": args.steps,
                                          "tasks": args.tasks, "overrides": args.overrides})

    def config(*overrides):
        cfg = load_config(args.config, base_overrides + list(overrides))
        return keep_tasks(cfg, args.tasks.split(",")) if args.tasks else cfg
    results: dict[str, list[dict[str, float]]] = {}
    rates: dict[str, list[float]] = {}
    tasks: list[str] = []
    for seed in range(args.seeds):
        for weighting, sharing in methods:
            name = f"{weighting}/{sharing}"
            cfg = config(f"training.seed={seed}", f"weighting.kind={weighting}", f"model.sharing.kind={sharing}")
            tasks = list(cfg.tasks)
            done = log.get_or_run(name, seed, None, lambda cfg=cfg: train_scores(cfg, f"{weighting}-{sharing}-s{seed}"))
            results.setdefault(name, []).append(done["scores"])
            rates.setdefault(name, []).append(done["samples_per_s"])
            print(f"[mtl] seed {seed} {name}: " + " ".join(f"{t} {v:.4f}" for t, v in done["scores"].items()),
                  flush=True)
        if args.costs_only:
            continue
        # each head alone on the plain model (encoder + its head), whatever sharing the config names
        cfg = config(f"training.seed={seed}", "model.sharing.kind=hard")
        tasks = list(cfg.tasks)
        results.setdefault(SINGLE, []).append(single_task_scores(cfg, seed, log))
        print(f"[mtl] seed {seed} {SINGLE}: " + " ".join(f"{t} {v:.4f}" for t, v in results[SINGLE][-1].items()),
              flush=True)
    rows, stats = summarise(results, tasks)
    print(f"\nfull validation split, mean ± std over {args.seeds} seed(s)")
    print(table(rows, ["method"] + tasks))
    if SINGLE in stats:
        deltas = [[m] + [f"{stats[m][t][0] - stats[SINGLE][t][0]:+.4f}" for t in tasks] +
                  ["yes" if holds_up(stats, m, tasks) else "no"] for m in stats if m != SINGLE]
        print("\ndelta to single-task (mean)")
        print(table(deltas, ["method"] + tasks + ["no head below single-task beyond spread"]))
    print("\ncost per step (training samples/s; same sampling, so the inverse ratio is the cost)")
    print(table([[m, statistics.mean(rates[m]), *cost_against_static(rates, m)] for m in rates],
                ["method", "samples/s", "cost x static/hard", "cost x static, same sharing"]))
    if SINGLE in stats:
        plot(stats, tasks, out_dir / "mtl_methods.png")
        print(f"\nplot: {out_dir / 'mtl_methods.png'}")
    (out_dir / "mtl_methods.json").write_text(json.dumps({"results": results, "samples_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
