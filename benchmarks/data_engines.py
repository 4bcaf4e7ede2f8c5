"""The two data engines on the demo config: ``memory`` (read + tokenise on the driver,
ship through the object store) against ``ray_data`` (Ray Data read, ``map_batches``
tokenisation, streamed per-worker shards).

    python benchmarks/data_engines.py [--steps 30] [--workers 1]

For each engine: driver-side preparation before training can start, the Ray Data
tokenisation pass over every train row (ray_data only), the TorchTrainer fit of
``--steps`` steps, and the training samples/s the loop measured. Prints a table. Run it
on a quiet machine (here: under the shared CPU lock).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.config.load import load_config  # noqa: E402
from ecomtl.report import table  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"


def run(engine: str, steps: int, workers: int, storage: str) -> dict:
    import ray

    from ecomtl.data.pipeline import prepare_training_data
    from ecomtl.model.build import load_tokenizer
    from ecomtl.train.loop import STATE_FILE
    from ecomtl.train.trainer import build_trainer

    cfg = load_config(DEMO, [f"training.steps={steps}", f"training.eval_every={steps}", "training.eval_max_rows=16",
                             f"training.log_every={steps}", f"distributed.num_workers={workers}",
                             "distributed.cpus_per_worker=1", f"data.engine={engine}", f"output.storage_path={storage}"])
    root = cfg.resolved_data_root()
    cfg = cfg.model_copy(update={"data_root": root})
    out = {"engine": engine}
    t0 = time.perf_counter()
    prepared = prepare_training_data(cfg, load_tokenizer(cfg.model), root)
    data, datasets, sizes = prepared.data, prepared.datasets, prepared.sizes
    out["prep_s"] = time.perf_counter() - t0
    out["train_rows"] = sum(sizes.values()) if sizes else sum(len(d) for d in data.splits["train"].values())
    if datasets:
        t1 = time.perf_counter()
        rows = sum(sum(len(b["input_ids"]) for b in ds.iter_batches(batch_size=1024, batch_format="numpy"))
                   for ds in datasets.values())
        out["tokenise_pass_s"] = time.perf_counter() - t1
        out["tokenised_rows"] = rows
    t2 = time.perf_counter()
    result = build_trainer(cfg, ray.put(data), f"bench-{engine}", datasets=datasets, train_sizes=sizes).fit()
    out["fit_s"] = time.perf_counter() - t2
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        history = json.loads(Path(d, STATE_FILE).read_text())["history"]
    out["samples_per_s"] = [h for h in history if h["kind"] == "train"][-1]["samples_per_s"]
    out["total_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--engines", nargs="+", default=["memory", "ray_data"])
    args = p.parse_args()

    import ray

    from ecomtl.ray_env import runtime_env

    # Logical CPUs: training workers take one each; Ray Data's tasks need the rest.
    ray.init(address="local", num_cpus=args.workers + 2, include_dashboard=False, runtime_env=runtime_env(),
             log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        for engine in args.engines:
            r = run(engine, args.steps, args.workers, storage)
            rows.append([r["engine"], r["train_rows"], r["prep_s"], r.get("tokenise_pass_s", "-"),
                         r["fit_s"], r["samples_per_s"], r["total_s"]])
            print(json.dumps(r), flush=True)
    print(f"\ndemo config, {args.steps} steps, {args.workers} worker(s), batch 16, MiniLM-L6 (seconds):")
    print(table(rows, ["engine", "train rows", "driver prep", "tokenise pass", "fit", "train samples/s", "total"]))


if __name__ == "__main__":
    main()
