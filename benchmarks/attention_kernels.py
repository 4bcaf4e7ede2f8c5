"""Attention kernels on this machine: forward and backward time of one MiniLM-L6 training
step with PyTorch's fused attention (sdpa) against plain matmul attention (eager), the
choice ``model.attention: auto`` makes per device.

    flock /tmp/ecomtl-cpu.lock python benchmarks/attention_kernels.py [--threads 2] [--steps 8]

Shapes of the demo's sources (dynamic padding, a quarter of each row padded); bf16
autocast where the CPU has native bf16, as the training loop runs; each with dropout on
(a training step) and off (``model.eval()``: dropout changes which CPU kernel sdpa can
use). Prints a table of ms per step (mean over the steps after two warm-up steps) and
eager's speed-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.backbones.packaged import minilm  # noqa: E402
from ecomtl.report import table  # noqa: E402
from ecomtl.train.deepspeed_config import cpu_supports_bf16  # noqa: E402

SHAPES = {"reviews": (16, 110), "titles": (48, 30), "offer pairs": (18, 128)}  # rows, tokens


def step_ms(model, rows: int, tokens: int, steps: int, bf16: bool, optimizer=None) -> tuple[float, float, float]:
    """Mean forward, backward and optimizer ms over ``steps`` after two warm-up steps
    (without an ``optimizer`` the gradients are only cleared and its phase is 0).
    Shared with benchmarks/step_costs.py."""
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (rows, tokens))
    mask = torch.ones_like(ids)
    mask[:, -tokens // 4:] = 0
    total = [0.0, 0.0, 0.0]
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask).last_hidden_state.mean(1).sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad()
        t3 = time.perf_counter()
        if i >= 2:
            for k, dt in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                total[k] += dt
    return tuple(1e3 * t / steps for t in total)


def setup() -> tuple[argparse.Namespace, bool]:
    """``--threads``/``--steps`` parsed and applied; whether bf16 autocast is on (as the
    training loop decides it). Shared with benchmarks/step_costs.py."""
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    return a, cpu_supports_bf16()


def main() -> None:
    from transformers import AutoModel

    a, bf16 = setup()
    model = AutoModel.from_pretrained(minilm())
    rows = []
    for dropout in (True, False):
        model.train(dropout)
        for name, (n, length) in SHAPES.items():
            times = {}
            for kernel in ("sdpa", "eager"):
                model.set_attn_implementation(kernel)
                times[kernel] = step_ms(model, n, length, a.steps, bf16)
            (sf, sb, _), (ef, eb, _) = times["sdpa"], times["eager"]
            rows.append([f"{name} ({n} x {length})", "on" if dropout else "off", f"{sf:.0f}", f"{sb:.0f}",
                         f"{ef:.0f}", f"{eb:.0f}", f"{(sf + sb) / (ef + eb):.2f}x"])
    print(f"MiniLM-L6, {a.threads} threads, bf16 autocast {bf16}, {a.steps} timed steps")
    print(table(rows, ["batch", "dropout", "sdpa fwd ms", "sdpa bwd ms", "eager fwd ms", "eager bwd ms", "eager speed-up"]))


if __name__ == "__main__":
    main()
