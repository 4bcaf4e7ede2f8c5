"""Teacher, student trained alone and distilled student side by side: size, in-process
speed and per-head validation scores.

    python benchmarks/distill_speed.py teacher=BUNDLE alone=BUNDLE distilled=BUNDLE \
        [--texts 256] [--batch 32] [--evaluate] [--json OUT]

For each ``label=bundle``: parameters (all trained tensors: backbone and heads) and
encoder layers; texts/s of the in-process ``Predictor`` (the Serve stages in one
process: tokenise, encode once per source, every head of that source) over the first
``--texts`` validation rows of each source, in batches of ``--batch``, after one warm-up
batch; the per-head validation scores and the aggregate the bundle was exported with
(``ecomtl evaluate`` on the whole validation split, kept in its metrics.json), or scored
again with ``--evaluate``. Run on a quiet machine (here: under the shared CPU lock).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.data.prepare import join_text  # noqa: E402
from ecomtl.data.sources import open_split  # noqa: E402
from ecomtl.model.predictor import Predictor  # noqa: E402
from ecomtl.report import table  # noqa: E402


def validation_items(cfg, source: str, n: int) -> list:
    """The first ``n`` usable validation rows of ``source`` as Predictor inputs."""
    src = cfg.sources[source]
    rows = open_split(source, cfg, cfg.resolved_data_root(), "validation").rows()
    items = []
    for i in range(len(next(iter(rows.values())))):
        if src.tokens:
            text, pair = " ".join(w for w in rows[src.tokens][i] or [] if isinstance(w, str)), None
        else:
            text = join_text([rows[c][i] for c in src.text])
            pair = join_text([rows[c][i] for c in src.text_pair]) if src.text_pair else None
        if text and (pair or not src.text_pair):
            items.append({"text": text, "text_pair": pair} if pair else text)
        if len(items) == n:
            break
    return items


def speed(predictor: Predictor, cfg, n: int, batch: int) -> dict[str, float]:
    """texts/s per source and over all of them (every head of a source per text)."""
    out, total_texts, total_s = {}, 0, 0.0
    for source, tasks in cfg.task_names_by_source().items():
        items = validation_items(cfg, source, n)
        predictor.predict(tasks, items[:batch])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(items), batch):
            predictor.predict(tasks, items[start:start + batch])
        secs = time.perf_counter() - t0
        out[source] = len(items) / secs
        total_texts, total_s = total_texts + len(items), total_s + secs
    out["all"] = total_texts / total_s
    return out


def describe(label: str, path: str, args) -> dict:
    from ecomtl.evaluation import evaluate_bundle

    predictor = Predictor.from_bundle(path)
    model = predictor.encoder.model
    cfg = _config(path)
    params = sum(p.numel() for p in model.parameters())
    layers = int(model.backbone.config.num_hidden_layers)
    metrics = json.loads((Path(path) / "metrics.json").read_text())
    if args.evaluate or "validation" not in metrics:
        metrics = evaluate_bundle(path, split="validation")
        metrics["validation"] = metrics["tasks"]
    tasks, agg = metrics["validation"], metrics["aggregate"]
    return {"label": label, "bundle": str(path), "params": params, "layers": layers,
            "texts_per_s": speed(predictor, cfg, args.texts, args.batch),
            "scores": {t: m["score"] for t, m in tasks.items()}, "aggregate": agg}


def _config(path: str):
    import yaml

    from ecomtl.config.load import config_from_dict

    return config_from_dict(yaml.safe_load((Path(path) / "config.yaml").read_text()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", metavar="LABEL=BUNDLE")
    p.add_argument("--texts", type=int, default=256, help="validation rows per source to time")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--evaluate", action="store_true", help="score each bundle on validation again")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    torch.manual_seed(0)
    rows = [describe(*item.split("=", 1), args) for item in args.bundles]
    tasks = list(dict.fromkeys(t for r in rows for t in r["scores"]))
    sources = [s for s in rows[0]["texts_per_s"] if s != "all"]
    base = rows[0]
    print(f"torch threads {torch.get_num_threads()}, {args.texts} validation texts per source, batch {args.batch}")
    print(table([[r["label"], f"{r['params'] / 1e6:.1f}M", r["layers"], f"{r['texts_per_s']['all']:.1f}",
                  f"{r['texts_per_s']['all'] / base['texts_per_s']['all']:.2f}x"]
                 + [r["scores"].get(t, "") for t in tasks] + [r["aggregate"]] for r in rows],
                ["model", "params", "layers", "texts/s", "speed"] + tasks + ["aggregate"]))
    print("\ntexts/s per source (all of its heads per text):")
    print(table([[r["label"]] + [f"{r['texts_per_s'][s]:.1f}" for s in sources] for r in rows], ["model"] + sources))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
