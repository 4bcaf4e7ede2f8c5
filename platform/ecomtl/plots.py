"""PNG plots: training curves (per-task loss, validation scores)."""

from __future__ import annotations

from pathlib import Path


def plot_training(history: list[dict], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [h for h in history if h["kind"] == "train"]
    evals = [h for h in history if h["kind"] == "eval"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted({k for h in train for k in h if k.startswith("train_loss/")}):
        pts = [(h["step"], h[key]) for h in train if key in h]
        ax1.plot(*zip(*pts), label=key.split("/", 1)[1])
    ax1.set(xlabel="step", ylabel="training loss", yscale="log", title="per-task training loss")
    ax1.legend(fontsize=8)
    for key in sorted({k for h in evals for k in h if k.endswith("/score")}):
        ax2.plot([h["step"] for h in evals], [h[key] for h in evals], marker="o", label=key.split("/", 1)[0])
    if evals:
        ax2.plot([h["step"] for h in evals], [h["aggregate"] for h in evals], "k--", lw=2, label="aggregate")
    ax2.set(xlabel="step", ylabel="validation score", title="validation (task score, aggregate)")
    ax2.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
