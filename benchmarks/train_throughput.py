"""Training throughput: the platform's loop (Ray Train + DeepSpeed) against a plain
PyTorch loop over the same model, data and batch size, in one run.

    python benchmarks/train_throughput.py [--steps 40] [--source reviews]

Prints a table of samples/s (warm steps only: start-up is reported apart) and each
variant's ratio to the plain loop. Run it on a quiet machine: other processes on the
same cores change every number.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.config.load import load_config  # noqa: E402
from ecomtl.data.collate import collate  # noqa: E402
from ecomtl.data.prepare import prepare_data  # noqa: E402
from ecomtl.data.sampling import ShardedBatches  # noqa: E402
from ecomtl.model.build import build_model, load_tokenizer  # noqa: E402
from ecomtl.report import table  # noqa: E402
from ecomtl.train.deepspeed_config import use_bf16  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "demo.yaml"


def one_source_cfg(source: str, steps: int, extra: list[str]):
    cfg = load_config(DEMO, [f"training.steps={steps}", f"training.eval_every={steps}", "training.eval_max_rows=16",
                             f"training.log_every={max(1, steps // 4)}", "output.storage_path=/tmp/ecomtl_bench", *extra])
    keep = {t: c for t, c in cfg.tasks.items() if c.source == source}
    return cfg.model_copy(update={"tasks": keep, "sources": {source: cfg.sources[source]},
                                  "sampling": cfg.sampling.model_copy(update={"weights": None})})


def plain_loop(cfg, data, steps: int) -> tuple[float, float]:
    """The plain alternative: the same model and batches, torch AdamW, no Ray/DeepSpeed."""
    torch.set_num_threads(cfg.distributed.num_workers * cfg.distributed.cpus_per_worker)
    tok = load_tokenizer(cfg.model)
    source = next(iter(cfg.sources))
    split = data.splits["train"][source]
    specs = list(cfg.tasks)
    model = build_model(cfg, data.label_infos, tok).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    batches = ShardedBatches(len(split), cfg.training.batch_size, 0, 1, 0, lengths=split.lengths())
    dtypes = {t: model.heads[t].label_dtype for t in specs}
    bf16 = use_bf16(cfg, False)
    # Time the same steps as the platform's last progress window: batches are grouped by
    # length, so different windows hold different sequence lengths and costs.
    warm, t_warm = steps - cfg.training.log_every, None
    t0 = time.perf_counter()
    for k in range(steps):
        if k == warm:
            t_warm = time.perf_counter()
        b = collate(split, batches.batch(k), tok.pad_token_id, dtypes)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(b, specs)
            loss = sum(model.heads[t].loss(out[t], b["labels"][t], b) for t in specs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    elapsed = time.perf_counter() - t_warm
    return (steps - warm) * cfg.training.batch_size / elapsed, t_warm - t0


def platform_loop(cfg, name: str) -> tuple[float, float]:
    from ecomtl.train.run import train_experiment

    t0 = time.perf_counter()
    out = train_experiment(cfg, run_name=f"bench-{name}-{int(t0)}", log=lambda *_: None)
    rates = [h for h in out.history if h["kind"] == "train"]
    # the first log window includes DeepSpeed's first steps; report the last window's rate
    return rates[-1]["samples_per_s"], out.wall_s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--source", default="reviews")
    args = p.parse_args()
    base = one_source_cfg(args.source, args.steps, [])
    tok = load_tokenizer(base.model)
    data = prepare_data(base, tok)
    rows = []
    plain, _ = plain_loop(base, data, args.steps)
    rows.append(["plain PyTorch loop, 2 threads", plain, 1.0, "-"])
    variants = {
        "1 worker x 2 CPU, ZeRO-0": ["distributed.num_workers=1", "distributed.cpus_per_worker=2", "distributed.zero_stage=0"],
        "1 worker x 2 CPU, ZeRO-2": ["distributed.num_workers=1", "distributed.cpus_per_worker=2", "distributed.zero_stage=2"],
        "2 workers x 1 CPU, ZeRO-2": ["distributed.num_workers=2", "distributed.cpus_per_worker=1", "distributed.zero_stage=2"],
    }
    for name, extra in variants.items():
        cfg = one_source_cfg(args.source, args.steps, extra)
        rate, wall = platform_loop(cfg, name.split(",")[0].replace(" ", ""))
        rows.append([f"ecomtl: {name}", rate, rate / plain, f"{wall:.0f}s"])
        print(table(rows, ["loop", "samples/s", "x plain", "wall (incl. start-up, eval)"]), flush=True)
    print(f"\nsource={args.source} batch={base.training.batch_size} steps={args.steps} "
          f"bf16={use_bf16(base, False)} max_length={data.max_lengths[args.source]}")


if __name__ == "__main__":
    main()
