"""Where a MiniLM-L6 training step's time goes on this machine, and what two settings
buy: the backbone's dropout (``model.backbone_dropout``) and the AdamW kernel (torch's
default foreach against the fused one that ``optim.impl: torch`` now uses everywhere).

    flock /tmp/ecomtl-cpu.lock python benchmarks/step_costs.py [--threads 2] [--steps 8]

Shapes of the demo's sources (dynamic padding, a quarter of each row padded), bf16
autocast where the CPU has native bf16, as the training loop runs. Prints ms per phase
(mean over the steps after two warm-up steps) and each variant's speed-up over the
first row of its batch (dropout 0.1, foreach AdamW: the platform before this change).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from attention_kernels import SHAPES, setup, step_ms  # noqa: E402  (the demo's batch shapes, same loop)

from ecomtl.backbones.base import set_dropout  # noqa: E402
from ecomtl.backbones.packaged import minilm  # noqa: E402
from ecomtl.report import table  # noqa: E402

VARIANTS = [(0.1, False), (0.1, True), (0.0, False), (0.0, True)]  # backbone dropout, fused AdamW


def main() -> None:
    from transformers import AutoModel

    a, bf16 = setup()
    rows = []
    for name, (n, length) in SHAPES.items():
        base = None
        for dropout, fused in VARIANTS:
            model = AutoModel.from_pretrained(minilm(), attn_implementation="eager").train()
            set_dropout(model, dropout)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
            fwd, bwd, opt = step_ms(model, n, length, a.steps, bf16, optimizer)
            step = fwd + bwd + opt
            base = base or step
            rows.append([f"{name} ({n} x {length})", f"{dropout:g}", "fused" if fused else "foreach",
                         f"{fwd:.0f}", f"{bwd:.0f}", f"{opt:.0f}", f"{step:.0f}", f"{base / step:.2f}x"])
    print(f"MiniLM-L6 training step, {a.threads} threads, bf16 autocast {bf16}, eager attention, "
          f"{a.steps} timed steps")
    print(table(rows, ["batch", "backbone dropout", "AdamW", "fwd ms", "bwd ms", "optimizer ms", "step ms",
                       "speed-up"]))


if __name__ == "__main__":
    main()
