"""What a serving precision costs in quality and buys in speed, on one bundle:

    flock /tmp/ecomtl-cpu.lock python benchmarks/precision.py BUNDLE [--precisions fp32 int8 bf16]
        [--max-rows 600] [--texts 256] [--batch 32]

Per precision (``model/precision.py``, the same function ``serve`` applies): every head's
validation score on the same fixed rows (``ecomtl evaluate --precision``), the delta to
fp32, and the in-process encoder throughput on real review texts (tokenised once; the
backbone forward of ``--texts`` texts in batches of ``--batch``, best of 3) plus the
backbone's weight bytes. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "platform"))
sys.path.insert(0, str(REPO / "benchmarks"))


def weight_bytes(module: torch.nn.Module) -> int:
    """Parameters and buffers plus packed int8 weights (quantised Linear keeps them off
    ``parameters()``)."""
    total = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    for m in module.modules():
        if isinstance(m, DynamicInt8Linear):  # its packed weights are off parameters()
            w, b = m._weight_bias()
            total += w.numel() * w.element_size() + (0 if b is None else b.numel() * b.element_size())
    return total


def encoder_speed(bundle: str, precision: str, texts: list[str], batch: int) -> tuple[float, int]:
    from ecomtl.model.bundle import load_bundle
    from ecomtl.model.precision import apply_precision
    from ecomtl.model.predictor import EncoderRunner, Preprocessor

    b = load_bundle(bundle)
    apply_precision(b.model, precision)
    pre, runner = Preprocessor(b.tokenizer, b.spec), EncoderRunner(b.model)
    source = b.spec["tasks"]["rating"]["source"] if "rating" in b.spec["tasks"] else next(iter(b.spec["sources"]))
    feats = [pre.features(source, [(t, None) for t in texts[i:i + batch]]) for i in range(0, len(texts), batch)]
    route = b.spec["routes"][next(iter(b.spec["tasks"]))]
    runner.encode(feats[0], route, False)  # warm-up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for f in feats:
            runner.encode(f, route, False)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best, weight_bytes(b.model.backbone)


def main() -> None:
    from serve_load import review_texts

    from ecomtl.evaluation import evaluate_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8", "bf16"])
    ap.add_argument("--max-rows", type=int, default=600)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(2)
    texts = review_texts(args.texts)
    rows, ref = [], None
    for p in args.precisions:
        scores = evaluate_bundle(args.bundle, max_rows=args.max_rows, precision=p, bf16=False)["tasks"]
        speed, size = encoder_speed(args.bundle, p, texts, args.batch)
        ref = ref or (scores, speed)
        rows.append((p, scores, speed, size))
    tasks = list(rows[0][1])
    print(f"{args.bundle}: validation, {args.max_rows} rows per source; encoder speed on {args.texts} reviews, "
          f"batches of {args.batch}, {torch.get_num_threads()} threads")
    print("| precision | backbone MB | texts/s | speed-up | " + " | ".join(tasks) + " | mean delta |")
    print("|---|---|---|---|" + "---|" * (len(tasks) + 1))
    for p, scores, speed, size in rows:
        deltas = [scores[t]["score"] - ref[0][t]["score"] for t in tasks]
        cells = [f"{scores[t]['score']:.4f}" + ("" if p == rows[0][0] else f" ({d:+.4f})") for t, d in zip(tasks, deltas)]
        print(f"| {p} | {size / 2**20:.1f} | {speed:.1f} | {speed / ref[1]:.2f}x | " + " | ".join(cells)
              + f" | {sum(deltas) / len(deltas):+.4f} |")


if __name__ == "__main__":
    main()
