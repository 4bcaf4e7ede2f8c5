"""A generation head against the same model's classification head on the first level of
what it writes:

    python benchmarks/generation_table.py BUNDLE [--generation path] [--classifier category]
        [--separator " > "] [--split validation] [--max-rows N]

The generation task is decoded for real on the split (the bundle's own decoding options);
its exact match, token F1 and ROUGE-L come from the head's metrics, and its first level
(the text before the first ``--separator``) is compared with the gold path's first level.
The classifier is scored on its own source's split (accuracy and macro-F1). Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.data.prepare import prepare_data  # noqa: E402
from ecomtl.evaluation import eval_rows, predict_pairs, task_metrics, task_specs  # noqa: E402
from ecomtl.model.bundle import load_bundle  # noqa: E402
from ecomtl.tasks.generation import normalize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--generation", default="path")
    ap.add_argument("--classifier", default="category")
    ap.add_argument("--separator", default=" > ")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--max-rows", type=int, default=600, help="a fixed random subset of each source (0: all)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--data-root")
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    cfg = bundle.config
    data = prepare_data(cfg, bundle.tokenizer, splits=(args.split,), label_infos=bundle.label_infos,
                        max_lengths=bundle.max_lengths, root=args.data_root or cfg.resolved_data_root())
    specs = task_specs(cfg, bundle.label_infos)
    pad = bundle.tokenizer.pad_token_id
    out, seconds = {}, {}
    for task in (args.generation, args.classifier):
        split = data.splits[args.split][cfg.tasks[task].source]
        rows = eval_rows(split, args.max_rows or None)
        t0 = time.perf_counter()
        out[task] = predict_pairs(bundle.model, split, [task], rows, args.batch_size, pad, "cpu")[task]
        seconds[task] = time.perf_counter() - t0
    gen = task_metrics({args.generation: out[args.generation]}, specs)[args.generation]
    first = lambda text: normalize(text.split(args.separator.strip())[0])  # noqa: E731
    level1 = float(np.mean([first(g) == first(p) for g, p in out[args.generation]]))
    cls = task_metrics({args.classifier: out[args.classifier]}, specs)[args.classifier]
    print(f"{args.split}: generation `{args.generation}` on {gen['n']} rows ({seconds[args.generation]:.0f} s to "
          f"decode), classifier `{args.classifier}` on {cls['n']} rows")
    print("| head | exact match | token F1 | ROUGE-L | first level accuracy | macro-F1 (first level) |")
    print("|---|---|---|---|---|---|")
    print(f"| generation `{args.generation}` | {gen['exact_match']:.4f} | {gen['token_f1']:.4f} | {gen['rouge_l']:.4f} "
          f"| {level1:.4f} | - |")
    print(f"| classification `{args.classifier}` | - | - | - | {cls['accuracy']:.4f} | {cls['macro_f1']:.4f} |")
    examples = out[args.generation][:5]
    print("\nexamples (gold → generated):")
    for g, p in examples:
        print(f"  {g!r} → {p!r}")


if __name__ == "__main__":
    main()
