"""Mean ± spread of several seeds' bundles, per head, on the metrics they were scored on.

    python benchmarks/seeds_table.py BUNDLE [BUNDLE ...] [--metrics rating=macro_f1,department=accuracy]
        [--targets rating=0.52,match=0.75] [--baseline baseline.json]

Reads each bundle's ``metrics.json`` (the full validation split, written by ``ecomtl
train``) and prints one row per head: the chosen metric (default: the head's score) as
mean ± population std over the bundles, min and max, and where given the target and the
TF-IDF baseline (``ecomtl baseline --out``). One seed's noise can flip a comparison of a
point or two: compare means, and read the spread before calling a difference real.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.report import table  # noqa: E402


def pairs(text: str | None, cast=str) -> dict:
    """``a=x,b=y`` → {a: x, b: y}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        if not value:
            raise SystemExit(f"expected TASK=VALUE, got {item!r}")
        out[key.strip()] = cast(value.strip())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("bundles", nargs="+")
    p.add_argument("--metrics", help="TASK=METRIC,... (default: each head's score)")
    p.add_argument("--targets", help="TASK=VALUE,...: a column of targets and whether the mean meets it")
    p.add_argument("--baseline", help="JSON from `ecomtl baseline --out`")
    args = p.parse_args()
    runs = [json.loads(Path(b, "metrics.json").read_text())["validation"] for b in args.bundles]
    chosen, targets = pairs(args.metrics), pairs(args.targets, float)
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else {}
    baseline = baseline.get("validation", baseline)
    rows = []
    for task in runs[0]:
        metric = chosen.get(task, "score")
        values = [r[task][metric] for r in runs]
        mean = statistics.mean(values)
        row = [task, metric, f"{mean:.4f} ± {statistics.pstdev(values):.4f}", f"{min(values):.4f}",
               f"{max(values):.4f}"]
        if args.baseline:
            base = (baseline.get(task) or {}).get(metric)
            row.append("–" if base is None else f"{base:.4f}")
        if targets:
            target = targets.get(task)
            row += ["–", "–"] if target is None else [f"{target:.3f}", "yes" if mean >= target else
                                                    f"no ({mean - target:+.4f})"]
        rows.append(row)
    head = ["head", "metric", f"mean ± std ({len(runs)} seeds)", "min", "max"]
    head += ["TF-IDF baseline"] if args.baseline else []
    head += ["target", "met"] if targets else []
    print(table(rows, head))


if __name__ == "__main__":
    main()
