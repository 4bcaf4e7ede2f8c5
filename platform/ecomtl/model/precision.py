"""The numeric precision a bundle's backbone serves in.

- ``fp32``: as trained (the reference).
- ``bf16``: backbone weights cast to bfloat16 (GPUs; CPUs with native bf16). Heads stay
  fp32 and read fp32 encodings.
- ``fp16``: weights cast to float16: GPU replicas only (CPU kernels for half are slow or
  missing).
- ``int8``: CPU dynamic quantisation of every ``nn.Linear`` of the backbone (weights int8,
  activations quantised per batch) with ``torch.ao.quantization.quantize_dynamic``: about a
  quarter of the weight memory and faster matmuls on x86. Heads, embeddings and norms stay
  fp32. ``torch.ao`` quantisation is deprecated upstream in favour of ``torchao`` (not a
  dependency here); torch 2.13 still ships and runs it.

Quality is a measurement, not a promise: ``python benchmarks/precision.py BUNDLE`` scores
every head at each precision on the same rows and times the in-process forward.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")


def apply_precision(model, precision: str, device: str = "cpu"):
    """``model`` (a MultiTaskModel in eval mode) with its backbone in ``precision``; in
    place, returned for chaining. Raises ValueError for a precision the device cannot run."""
    on_gpu = str(device).startswith("cuda")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32" or model.backbone is None:
        return model
    if precision == "fp16" and not on_gpu:
        raise ValueError("precision: fp16 needs a GPU replica (ray_actor_options.num_gpus); on CPU use int8 or bf16")
    if precision == "int8":
        if on_gpu:
            raise ValueError("precision: int8 is CPU dynamic quantisation; on a GPU use bf16 or fp16")
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch.ao's deprecation notice, once per replica
            warnings.simplefilter("ignore")
            quantize_dynamic(model.backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
        return model
    model.backbone.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    return model
