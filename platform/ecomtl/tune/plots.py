"""PNG plots of a sweep: the aggregate by trial, and the Pareto front across tasks."""

from __future__ import annotations

from pathlib import Path

from ecomtl.evaluation import AGGREGATE

STATUS_COLORS = {"completed": "tab:blue", "stopped early": "tab:orange", "error": "tab:red"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def plot_aggregate(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """One bar per trial, in the order Tune created them; colour = how it ended."""
    plt = _plt()
    scored = [r for r in rows if r.get(AGGREGATE) is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(scored) + 2), 4))
    ax.bar(range(len(scored)), [r[AGGREGATE] for r in scored],
           color=[STATUS_COLORS.get(r["status"], "grey") for r in scored],
           edgecolor=["black" if r["kind"] == "default" else "none" for r in scored], linewidth=2)
    ax.set_xticks(range(len(scored)), [r["trial_id"][-5:] + ("*" if r["kind"] == "default" else "") for r in scored],
                  rotation=60, fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATUS_COLORS.values()]
    ax.legend(handles, list(STATUS_COLORS), fontsize=8)
    ax.set(ylabel=f"best validation {AGGREGATE}", xlabel="trial (* = default config)", title=title)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_pareto(rows: list[dict], tasks: list[str], path: str | Path, title: str = "") -> Path:
    """Per-task scores, one line per trial (parallel coordinates): the front in colour,
    dominated trials in grey. With two tasks, a plain scatter."""
    plt = _plt()
    compared = [r for r in rows if "pareto" in r]
    metrics = [f"{t}/score" for t in tasks]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks) + 2), 4.5))
    if len(tasks) == 2:
        for r in compared:
            ax.scatter(r[metrics[0]], r[metrics[1]], c="tab:red" if r["pareto"] else "grey", s=40)
            ax.annotate(r["trial_id"][-5:], (r[metrics[0]], r[metrics[1]]), fontsize=7)
        ax.set(xlabel=metrics[0], ylabel=metrics[1])
    else:
        for r in sorted(compared, key=lambda r: r["pareto"]):
            ax.plot(range(len(metrics)), [r[m] for m in metrics], marker="o",
                    color=None if r["pareto"] else "lightgrey", lw=2 if r["pareto"] else 1,
                    label=r["trial_id"][-5:] if r["pareto"] else None, zorder=2 if r["pareto"] else 1)
        ax.set_xticks(range(len(metrics)), tasks)
        ax.set(ylabel="validation score")
        ax.legend(fontsize=7, title="front")
    ax.set_title(title)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_multi_vs_single(rows: list[dict], single_rows: list[dict], tasks: list[str], path: str | Path,
                         title: str = "") -> Path:
    """Per head: its single-task score at equal compute next to the multi-task trials that
    ran their whole budget (the default config and the best one): bars above the grey
    one mean sharing the encoder helped that head."""
    plt = _plt()
    single = {r["single_task"]: r.get(f"{r['single_task']}/score") for r in single_rows}
    compared = [r for r in rows if any(r.get(f"{t}/delta_vs_single") is not None for t in tasks)]
    compared = sorted(compared, key=lambda r: (r["kind"] != "default", -(r.get(AGGREGATE) or 0)))[:3]
    series = [("single task", "lightgrey", [single.get(t) for t in tasks])]
    series += [(f"multi-task {r['trial_id'][-5:]}" + (" (default)" if r["kind"] == "default" else ""), None,
                [r.get(f"{t}/score") for t in tasks]) for r in compared]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(tasks) + 2), 4))
    for i, (label, color, values) in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(tasks))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=label, color=color)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel="validation score (best evaluation)", title=title)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out
