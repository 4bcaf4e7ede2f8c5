"""Plain-text tables of per-task metrics and data reports."""

from __future__ import annotations

MAIN_METRICS = ("accuracy", "macro_f1", "pos_f1", "f1", "precision", "recall", "rmse", "r2", "ndcg@10", "mrr",
                "exact_match", "rouge_l")


def table(rows: list[list], header: list[str]) -> str:
    cells = [[f"{c:.4f}" if isinstance(c, float) else str(c) for c in row] for row in [header] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def metrics_table(metrics: dict[str, dict], baseline: dict[str, dict] | None = None) -> str:
    """One row per task; with a baseline, its score and the difference too."""
    names = [m for m in MAIN_METRICS if any(m in v for v in metrics.values())]
    header = ["task", "n"] + names + ["score"] + (["baseline", "delta"] if baseline else [])
    rows = []
    for task, m in metrics.items():
        row = [task, m.get("n", "")] + [m.get(k, "") for k in names] + [m["score"]]
        if baseline:
            b = baseline.get(task, {}).get("score")
            row += [b if b is not None else "", (m["score"] - b) if b is not None else ""]
        rows.append(row)
    return table(rows, header)


def data_report_table(report: dict) -> str:
    """Rows used and skipped (with why) per split and source; tasks' ignored labels."""
    rows = []
    for split, sources in report.items():
        for source, r in sources.items():
            skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "-"
            ignored = "; ".join(
                f"{t}: " + ", ".join(f"{k} {v}" for k, v in reasons.items())
                for t, reasons in r["tasks"].items() if reasons
            ) or "-"
            rows.append([split, source, r["rows_read"], r["rows_used"], skipped, ignored,
                         r["max_length"], r["truncated_rows"]])
    return table(rows, ["split", "source", "read", "used", "skipped rows", "labels ignored", "max_len", "truncated"])


def gates_table(gates: dict[str, dict[str, float]]) -> str:
    """One row per task, one column per expert (MMoE/PLE gate means)."""
    experts = list(dict.fromkeys(e for row in gates.values() for e in row))
    return table([[t] + [row.get(e, "") for e in experts] for t, row in gates.items()], ["task"] + experts)
