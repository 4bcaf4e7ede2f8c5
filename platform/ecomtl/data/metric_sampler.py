"""``sampling.kind: metric``: more steps for the sources whose heads lag on validation.

After each evaluation a source's probability becomes its temperature-rule probability
times ``(1 - score + eps) ** power``, where ``score`` is the mean selection score of its
tasks (each in [0, 1]) in that evaluation, floored at ``min_share`` of the base
probability so no source is starved, then renormalised. Before the first evaluation it
is the temperature rule. In the spirit of loss-/performance-driven task scheduling
(e.g. Jean et al. 2019, "Adaptive Scheduling for Multi-Task Learning"; Sharma et al.
2017, "Learning to Multi-Task by Active Sampling").

Every rank sees the same all-gathered scores at the same micro-step, so every rank
draws the same sources. The schedule of (micro-step, probabilities) is checkpointed: a
resumed run draws exactly what the uninterrupted one would have."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.data.sampling import SAMPLERS, _Random

EPS = 0.05


class MetricSamplerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power: float = Field(1.0, ge=0, le=10, description="how strongly a lagging score pulls steps (0: temperature rule)")
    min_share: float = Field(0.25, gt=0, le=1, description="floor on a source's probability, as a share of its base one")


@SAMPLERS.register("metric")
class MetricSampler(_Random):
    """Temperature rule reweighted by (1 - validation score) after each evaluation."""

    Options = MetricSamplerOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule: list[tuple[int, dict[str, float]]] = []  # (from micro-step, probabilities)

    def observe(self, source_scores, micro):
        base = self.probabilities()
        o = self.options
        raw = {s: max(p * (1.0 - source_scores.get(s, 0.0) + EPS) ** o.power, o.min_share * p)
               for s, p in base.items()}
        total = sum(raw.values())
        self.schedule.append((int(micro), {s: v / total for s, v in raw.items()}))

    def probabilities_at(self, i):
        current = self.probabilities()
        for start, probs in self.schedule:
            if start <= i:
                current = probs
        return current

    def source_at(self, i):
        if not self.schedule or i < self.schedule[0][0]:
            return super().source_at(i)  # the temperature rule's own draws
        p = self.probabilities_at(i)
        j = np.random.default_rng([self.seed, i]).choice(len(self.names), p=[p[s] for s in self.names])
        return self.names[int(j)]

    def state_dict(self):
        return {"schedule": [[start, probs] for start, probs in self.schedule]}

    def load_state_dict(self, state):
        self.schedule = [(int(start), dict(probs)) for start, probs in state.get("schedule", [])]
