"""Default deployment sizes for ``ecomtl serve BUNDLE`` on the machine at hand.

Serve's per-deployment defaults ask for a CPU or more each, so a bundle with six tasks
would wait forever for resources on a small box. Here every replica's CPU share is
chosen so that the whole app fits the CPUs Ray has: the shared encoder gets what the
light replicas (ingress, one per task head) leave, and no deployment autoscales past
what fits. ``serve_configs/*.yaml`` is the place for anything more deliberate.
"""

from __future__ import annotations

import math

# Ray's CPU shares are logical: threads round up so that a 1.5-CPU encoder uses both cores.
LIGHT_CPUS = 0.1  # ingress and head replicas: tokenising, a small head, waiting on the encoder
FIXED = {"min_replicas": 1, "max_replicas": 1}


def down(x: float) -> float:
    """Rounded down to 0.01: rounding up could ask for more than the machine has."""
    return math.floor(x * 100 + 1e-9) / 100


def fit_to_machine(layout: str, n_tasks: int, cpus: float) -> dict:
    """App args (ingress/encoder/heads) whose replicas need at most ``cpus`` CPUs."""
    light = {"ray_actor_options": {"num_cpus": LIGHT_CPUS}, "torch_threads": 1, "autoscaling_config": FIXED}
    if layout == "shared":
        rest = cpus - LIGHT_CPUS * (n_tasks + 1)
        need = LIGHT_CPUS * (n_tasks + 2)
        encoder = {"ray_actor_options": {"num_cpus": down(rest)}, "torch_threads": max(1, math.ceil(rest)),
                   "autoscaling_config": FIXED}
        args = {"ingress": light, "heads": light, "encoder": encoder}
    else:  # naive: every head replica holds a full encoder
        rest = (cpus - LIGHT_CPUS) / max(n_tasks, 1)
        need = LIGHT_CPUS * (n_tasks + 1)
        heads = {"ray_actor_options": {"num_cpus": down(rest)}, "torch_threads": max(1, math.ceil(rest)),
                 "autoscaling_config": FIXED}
        args = {"ingress": light, "heads": heads}
    if cpus < need - 1e-9 or rest < LIGHT_CPUS - 1e-9:
        raise ValueError(f"{cpus:g} CPUs are too few for {n_tasks} tasks in the {layout} layout "
                         f"(at least {need:g}); give a cluster (RAY_ADDRESS) or fewer tasks")
    return args


def describe(args: dict) -> str:
    parts = []
    for name in ("ingress", "encoder", "heads"):
        if name in args:
            d = args[name]
            parts.append(f"{name} {d['ray_actor_options']['num_cpus']:g} CPU × {d['torch_threads']} thread(s)")
    return ", ".join(parts)
