"""The DeepSpeed JSON, derived from the experiment schema (never written by hand)."""

from __future__ import annotations

from ecomtl.config.schema import ExperimentConfig


def use_bf16(cfg: ExperimentConfig, on_gpu: bool) -> bool:
    return on_gpu if cfg.distributed.bf16 == "auto" else bool(cfg.distributed.bf16)


def deepspeed_config(cfg: ExperimentConfig, on_gpu: bool) -> dict:
    stage = cfg.distributed.zero_stage
    zero: dict = {"stage": stage}
    if stage >= 1:
        zero.update(
            contiguous_gradients=True,
            # Overlapping communication with backward only pays with a GPU's streams.
            overlap_comm=on_gpu,
            reduce_bucket_size=int(5e7),
            allgather_bucket_size=int(5e7),
        )
    if stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    return {
        "train_micro_batch_size_per_gpu": cfg.training.batch_size,
        "gradient_accumulation_steps": cfg.training.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg, on_gpu)},
        # The optimizer is built by ecomtl (param groups with a separate head lr); it is
        # torch's AdamW or DeepSpeed's own CPU/fused Adam, both fine under ZeRO.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # ecomtl prints its own progress lines
        "wall_clock_breakdown": False,
    }
