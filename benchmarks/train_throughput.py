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
LLM = ["model.backbone=decoder", "model.pretrained=smollm2", "model.pooling=last", "model.adapter.kind=lora",
       "model.adapter.options={mode: shared, r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}"]
PHASES = ("data", "forward", "backward", "step")


def one_source_cfg(source: str, steps: int, extra: list[str]):
    cfg = load_config(DEMO, [f"training.steps={steps}", f"training.eval_every={steps}", "training.eval_max_rows=16",
                             f"training.log_every={max(1, steps // 4)}", "output.storage_path=/tmp/ecomtl_bench", *extra])
    keep = {t: c for t, c in cfg.tasks.items() if c.source == source}
    return cfg.model_copy(update={"tasks": keep, "sources": {source: cfg.sources[source]},
                                  "sampling": cfg.sampling.model_copy(update={"weights": None})})


class Clock:
    """Wall time per phase over the timed steps (CPU ops are synchronous; on a GPU each
    phase ends with a synchronize so the split is honest, at a small cost)."""

    def __init__(self):
        self.total = dict.fromkeys(PHASES, 0.0)
        self.on = False
        self.t = time.perf_counter()

    def lap(self, phase: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.on:
            self.total[phase] += now - self.t
        self.t = now


def timed_steps(cfg, data, steps: int, label_dtypes: dict, forward_backward, optimizer_step
                ) -> tuple[float, dict, float]:
    """The same batches as the platform, timing the same final progress window (batches
    are grouped by length, so windows differ in cost): (samples/s, ms per step by
    phase, start-up seconds)."""
    tok = load_tokenizer(cfg.model)
    source = next(iter(cfg.sources))
    split = data.splits["train"][source]
    specs = list(cfg.tasks)
    batches = ShardedBatches(len(split), cfg.training.batch_size, 0, 1, 0, lengths=split.lengths())
    warm, clock, t0 = steps - cfg.training.log_every, Clock(), time.perf_counter()
    t_warm = t0
    for k in range(steps):
        if k == warm:
            clock.on, clock.t, t_warm = True, time.perf_counter(), time.perf_counter()
        b = collate(split, batches.batch(k), tok.pad_token_id, label_dtypes)
        clock.lap("data")
        loss = forward_backward(b, specs, clock)
        optimizer_step()
        clock.lap("step")
    elapsed = time.perf_counter() - t_warm
    n = steps - warm
    return n * cfg.training.batch_size / elapsed, {k: 1e3 * v / n for k, v in clock.total.items()}, t_warm - t0


def autocast(cfg):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16(cfg, False))


def plain_loop(cfg, data, steps: int, attention: str = ""):
    """The plain alternative: the same model and batches, torch AdamW, no Ray/DeepSpeed;
    the library's default attention kernel (sdpa) unless ``attention`` names one."""
    torch.set_num_threads(cfg.distributed.num_workers * cfg.distributed.cpus_per_worker)
    torch.manual_seed(0)
    model = build_model(cfg, data.label_infos, load_tokenizer(cfg.model)).train()
    if attention:
        model.backbone.set_attention(attention)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)

    def forward_backward(b, specs, clock):
        with autocast(cfg):
            out = model(b, specs)
            loss = sum(model.heads[t].loss(out[t], b["labels"][t], b) for t in specs)
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")

    def step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    return timed_steps(cfg, data, steps, label_dtypes(model), forward_backward, step)


def label_dtypes(model) -> dict:
    return {t: h.label_dtype for t, h in model.heads.items()}


def deepspeed_in_process(cfg, data, steps: int, skip_allreduce: bool = False):
    """The same loop through a DeepSpeed engine (world size 1, gloo), without Ray: what
    the engine alone costs (``skip_allreduce``: without its world-size-1 gradient
    all-reduce, as the platform runs it)."""
    import os

    import deepspeed

    from ecomtl.train.deepspeed_config import deepspeed_config
    from ecomtl.train.optim import build_optimizer, build_scheduler

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    torch.set_num_threads(cfg.distributed.cpus_per_worker)
    torch.manual_seed(0)
    model = build_model(cfg, data.label_infos, load_tokenizer(cfg.model))
    optimizer = build_optimizer(model, cfg, False)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=build_scheduler(optimizer, cfg),
                                           config=deepspeed_config(cfg, False))
    engine.train()
    if skip_allreduce:  # what the platform's loop does at world size 1, ZeRO-0
        engine.enable_backward_allreduce = False

    def forward_backward(b, specs, clock):
        with autocast(cfg):
            loss = sum(model.losses(engine(b, specs), b).values())
        clock.lap("forward")
        engine.backward(loss)
        clock.lap("backward")

    return timed_steps(cfg, data, steps, label_dtypes(model), forward_backward, engine.step)


def plain_peft_loop(cfg, data, steps: int):
    """A plain Hugging Face + PEFT loop a user would write: the decoder, ``get_peft_model``
    with the same LoRA settings, last-token pooling, one linear head per task."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from ecomtl.backbones.packaged import resolve

    torch.set_num_threads(cfg.distributed.cpus_per_worker)
    torch.manual_seed(0)
    o = cfg.model.adapter.options
    base = AutoModel.from_pretrained(resolve(cfg.model.pretrained))
    model = get_peft_model(base, LoraConfig(r=o["r"], lora_alpha=o["alpha"], lora_dropout=o["dropout"],
                                            target_modules=o["target_modules"]))
    classes = {t: len(data.label_infos[t]["names"]) for t in cfg.tasks}
    heads = torch.nn.ModuleDict({t: torch.nn.Linear(base.config.hidden_size, n) for t, n in classes.items()})
    params = [p for p in model.parameters() if p.requires_grad] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    model.train()

    def forward_backward(b, specs, clock):
        with autocast(cfg):
            hidden = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            last = b["attention_mask"].sum(1) - 1  # right padding: the last real token
            pooled = hidden[torch.arange(len(last)), last]
            loss = sum(torch.nn.functional.cross_entropy(heads[t](pooled).float(), b["labels"][t],
                                                         ignore_index=-100) for t in specs)
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()

    return timed_steps(cfg, data, steps, {t: torch.long for t in heads}, forward_backward, step)


def platform_loop(cfg, name: str) -> tuple[float, float]:
    from ecomtl.train.run import train_experiment

    t0 = time.perf_counter()
    out = train_experiment(cfg, run_name=f"bench-{name}-{int(t0)}", log=lambda *_: None)
    rates = [h for h in out.history if h["kind"] == "train"]
    # the last progress window: the same steps the in-process loops time
    return rates[-1]["samples_per_s"], out.wall_s


def breakdown(name: str, ms: dict) -> list:
    return [name, *(f"{ms[p]:.0f}" for p in PHASES), f"{sum(ms.values()):.0f}"]


def compare(title: str, base, data, steps: int, plain_fn, plain_name: str, variants: dict, in_process=None):
    rows, phases = [], []
    plain, ms, _ = plain_fn(base, data, steps)
    rows.append([plain_name, plain, 1.0, "-"])
    phases.append(breakdown(plain_name, ms))
    if plain_fn is plain_loop:  # what the platform's CPU default (model.attention: auto → eager) is worth alone
        rate, ms, _ = plain_loop(base, data, steps, attention="eager")
        rows.append(["  same, eager attention", rate, rate / plain, "-"])
        phases.append(breakdown("  same, eager attention", ms))
    if in_process:
        for skip, name in ((False, "DeepSpeed engine in-process"), (True, "  same, no world-1 all-reduce")):
            rate, ms, _ = in_process(base, data, steps, skip)
            rows.append([f"{name}, ZeRO-0, no Ray", rate, rate / plain, "-"])
            phases.append(breakdown(name, ms))
    for name, extra in variants.items():
        cfg = base.model_copy(update={"distributed": base.distributed.model_copy(update=extra)})
        rate, wall = platform_loop(cfg, name.split(",")[0].replace(" ", ""))
        rows.append([f"ecomtl: {name}", rate, rate / plain, f"{wall:.0f}s"])
    print(f"\n{title}")
    print(table(rows, ["loop", "samples/s", "x plain", "wall (incl. start-up, eval)"]))
    print(table(phases, ["ms per step (timed window)", *PHASES, "total"]), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--source", default="reviews")
    p.add_argument("--llm", action="store_true", help="also SmolLM2 + LoRA against a plain PEFT loop")
    p.add_argument("--llm-only", action="store_true")
    p.add_argument("--llm-steps", type=int, default=24)
    args = p.parse_args()
    zero = lambda workers, cpus, stage: dict(num_workers=workers, cpus_per_worker=cpus, zero_stage=stage)  # noqa: E731
    if not args.llm_only:
        base = one_source_cfg(args.source, args.steps, [])
        data = prepare_data(base, load_tokenizer(base.model))
        compare(f"MiniLM-L6, source={args.source} batch={base.training.batch_size} steps={args.steps} "
                f"bf16={use_bf16(base, False)} max_length={data.max_lengths[args.source]}",
                base, data, args.steps, plain_loop, "plain PyTorch loop, 2 threads", {
                    "1 worker x 2 CPU, ZeRO-0": zero(1, 2, 0),
                    "1 worker x 2 CPU, ZeRO-2": zero(1, 2, 2),
                    "2 workers x 1 CPU, ZeRO-2": zero(2, 1, 2),
                }, in_process=deepspeed_in_process)
    if args.llm or args.llm_only:
        base = one_source_cfg(args.source, args.llm_steps, LLM + [f"sources.{args.source}.max_length=48"])
        base = base.model_copy(update={"tasks": {t: c for t, c in base.tasks.items() if c.head == "classification"}})
        data = prepare_data(base, load_tokenizer(base.model))
        compare(f"SmolLM2-135M + LoRA r16 (shared, all-linear), source={args.source} batch={base.training.batch_size} "
                f"steps={args.llm_steps} max_length=48", base, data, args.llm_steps, plain_peft_loop,
                "plain PEFT loop, 2 threads", {"1 worker x 2 CPU, ZeRO-0": zero(1, 2, 0)})


if __name__ == "__main__":
    main()
