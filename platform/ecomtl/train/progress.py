"""Progress lines a person can follow: per-task losses, samples/s, FLOP rate, ETA."""

from __future__ import annotations

import time
from collections import defaultdict

import torch

# Dense bf16 peak of common accelerators (TFLOP/s), for MFU; unknown devices print none.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0}


def peak_tflops(on_gpu: bool) -> float | None:
    if not on_gpu:
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def flops_per_token(encoder, seq_len: float) -> float:
    """nanoGPT's estimate for a training step: 6·N (non-embedding params) + 12·L·d·S."""
    cfg = encoder.config
    n = sum(p.numel() for name, p in encoder.named_parameters() if "embed" not in name and "lm_head" not in name)
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total_steps: int, start_step: int, world: int, encoder, on_gpu: bool):
        self.total, self.start, self.world = total_steps, start_step, world
        self.encoder, self.peak = encoder, peak_tflops(on_gpu)
        self.t0 = self.t_last = time.perf_counter()
        self.samples = self.tokens = 0
        self.flops = 0.0
        self.losses = defaultdict(list)
        self.window_samples, self.window_flops = 0, 0.0
        self._fpt_cache: dict[int, float] = {}

    def add(self, losses: dict[str, torch.Tensor], batch_size: int, seq_len: int, real_tokens: int) -> None:
        """``losses``: detached tensors, read only when a line is printed: a ``.item()``
        per micro-step would wait for the device every step."""
        for t, v in losses.items():
            self.losses[t].append(v)
        n = batch_size * self.world
        self.samples += n
        self.window_samples += n
        self.tokens += real_tokens * self.world
        if seq_len not in self._fpt_cache:
            self._fpt_cache[seq_len] = flops_per_token(self.encoder, seq_len)
        flops = self._fpt_cache[seq_len] * batch_size * seq_len * self.world
        self.flops += flops
        self.window_flops += flops

    def restart_window(self) -> None:
        """Start the next rate window now: time spent evaluating or checkpointing after a
        line is not training time."""
        self.t_last = time.perf_counter()

    def line(self, step: int, lr: float) -> tuple[str, dict]:
        """``samples_per_s`` is the rate of the steps since the last line (training time
        only, see ``restart_window``); the ETA uses the whole run's pace."""
        now = time.perf_counter()
        elapsed = now - self.t0
        done = step - self.start
        window = now - self.t_last
        rate = self.window_samples / window if window > 0 else 0.0
        eta = elapsed / done * (self.total - step) if done else 0.0
        tflops = self.window_flops / window / 1e12 if window > 0 else 0.0
        losses = {t: float(torch.stack(v).float().mean()) for t, v in sorted(self.losses.items())}
        loss_txt = " ".join(f"{t} {v:.3f}" for t, v in losses.items())
        mfu = f" | MFU {100 * tflops / self.peak:.1f}%" if self.peak else ""
        text = (
            f"step {step}/{self.total} ({100 * step / self.total:.0f}%) | loss {loss_txt} | "
            f"{rate:.1f} samples/s | {tflops * 1e3:.1f} GFLOP/s{mfu} | lr {lr:.2e} | "
            f"eta {fmt_seconds(eta)}"
        )
        self.losses.clear()
        self.t_last, self.window_samples, self.window_flops = now, 0, 0.0
        return text, {"step": step, "samples_per_s": rate, "tflops": tflops, **{f"train_loss/{t}": v for t, v in losses.items()}}
