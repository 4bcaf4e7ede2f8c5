"""Which source each micro-step trains on, and which rows each rank takes from it.

Everything here is a pure function of (seed, counter), so every rank draws the same
source at the same step (ZeRO needs identical module calls on all ranks) and a resumed
run continues the exact sequence from the saved counters."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ecomtl.registry import Plugin, Registry

SAMPLERS: Registry[type["SourceSampler"]] = Registry("task sampler")
_CHUNK = 4096


class SourceSampler(Plugin):
    def __init__(self, sizes: dict[str, int], seed: int, temperature: float = 1.0,
                 weights: Optional[dict[str, float]] = None, options: Optional[dict] = None):
        if not sizes or min(sizes.values()) <= 0:
            raise ValueError(f"every source needs rows to sample from: {sizes}")
        self.names = list(sizes)
        self.sizes = sizes
        self.seed = seed
        self.temperature = temperature
        self.weights = weights or {}
        self.options = self.Options.model_validate(options or {})

    def base_probabilities(self) -> dict[str, float]:
        raise NotImplementedError

    def probabilities(self) -> dict[str, float]:
        """The base rule's probabilities times the configured per-source weights."""
        p = {s: v * self.weights.get(s, 1.0) for s, v in self.base_probabilities().items()}
        total = sum(p.values())
        return {s: v / total for s, v in p.items()}

    def source_at(self, i: int) -> str:
        raise NotImplementedError

    def sources_at(self, i: int, k: int) -> list[str]:
        """The ``k`` distinct sources of micro-step ``i`` (all of them when ``k`` covers
        every source), a pure function of (seed, i) like ``source_at``: drawn without
        replacement by the sampler's probabilities, so weightings that compare tasks see
        the losses of several sources in one backward."""
        if k == 1:
            return [self.source_at(i)]
        if k >= len(self.names):
            return list(self.names)
        p = np.array([self.probabilities_at(i)[s] for s in self.names])
        picked = np.random.default_rng([self.seed, i, k]).choice(len(self.names), size=k, replace=False, p=p)
        return [self.names[j] for j in sorted(picked)]

    def probabilities_at(self, i: int) -> dict[str, float]:
        """The probabilities micro-step ``i`` draws with (fixed for most samplers)."""
        return self.probabilities()

    # -- samplers that learn from validation (none of the fixed ones) --------------------
    def observe(self, source_scores: dict[str, float], micro: int) -> None:
        """After an evaluation (the same all-gathered scores on every rank): the mean
        selection score of each source's tasks, and the micro-step from which a new
        rule would apply."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Random(SourceSampler):
    exponent: Optional[float] = None

    def base_probabilities(self):
        n = np.array([self.sizes[s] for s in self.names], dtype=np.float64)
        p = n ** self._exponent()
        return dict(zip(self.names, (p / p.sum()).tolist()))

    def _exponent(self) -> float:
        return 1.0 / self.temperature

    def _chunk(self, c: int) -> np.ndarray:
        cache = self.__dict__.setdefault("_chunks", {})
        if c not in cache:
            p = np.array(list(self.probabilities().values()))
            cache.clear()  # draws are sequential: only the current chunk is needed
            cache[c] = np.random.default_rng([self.seed, c]).choice(len(self.names), size=_CHUNK, p=p)
        return cache[c]

    def source_at(self, i):
        return self.names[int(self._chunk(i // _CHUNK)[i % _CHUNK])]


@SAMPLERS.register("proportional")
class ProportionalSampler(_Random):
    """p(source) ∝ its number of rows."""

    def _exponent(self):
        return 1.0


@SAMPLERS.register("temperature")
class TemperatureSampler(_Random):
    """p(source) ∝ rows^(1/T): T=1 is proportional, large T tends to uniform (small
    datasets get more steps than their size alone would give)."""


@SAMPLERS.register("round_robin")
class RoundRobinSampler(SourceSampler):
    """Sources in turn; weights are ignored (use a random sampler to weight sources)."""

    def base_probabilities(self):
        return {s: 1.0 / len(self.names) for s in self.names}

    def probabilities(self):
        return self.base_probabilities()

    def source_at(self, i):
        return self.names[i % len(self.names)]

    def sources_at(self, i, k):
        k = min(k, len(self.names))
        return [self.names[(i * k + j) % len(self.names)] for j in range(k)]


def build_sampler(kind: str, sizes: dict[str, int], seed: int, temperature: float,
                  weights: Optional[dict[str, float]] = None, options: Optional[dict] = None) -> SourceSampler:
    return SAMPLERS.get(kind)(sizes, seed=seed, temperature=temperature, weights=weights, options=options)


def sampler_from_config(cfg, sizes: dict[str, int]) -> SourceSampler:
    s = cfg.sampling
    return build_sampler(s.kind, sizes, cfg.training.seed, s.temperature, s.weights, s.options)


from ecomtl.data import metric_sampler  # noqa: E402,F401  (registration; it subclasses _Random)


class ShardedBatches:
    """Batch k of one source for one rank, as a function of k.

    An epoch is a seeded permutation; the global batch (batch_size × world) is split
    across ranks, so ranks never see the same row in the same epoch. With ``lengths``,
    rows are sorted by length within windows of ``window`` batches and the batches of a
    window shuffled: far less padding, still random order."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int,
                 lengths: Optional[np.ndarray] = None, window: int = 50):
        self.n, self.bs, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.global_bs = batch_size * world
        self.per_epoch = max(1, n // self.global_bs)
        self.lengths = lengths
        self.window = window
        self._cached: tuple = (None, None)

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            self._cached = (epoch, self._make_epoch(epoch))
        return self._cached[1]

    def _make_epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.n)
        if len(perm) < self.per_epoch * self.global_bs:  # tiny source: wrap around
            perm = np.resize(perm, self.per_epoch * self.global_bs)
        perm = perm[: self.per_epoch * self.global_bs].reshape(self.per_epoch, self.global_bs)
        if self.lengths is not None:
            for start in range(0, self.per_epoch, self.window):
                block = perm[start:start + self.window]
                flat = block.reshape(-1)
                flat = flat[np.argsort(self.lengths[flat], kind="stable")]
                block = flat.reshape(block.shape)[rng.permutation(len(block))]
                perm[start:start + self.window] = block
        return perm

    def batch(self, k: int) -> np.ndarray:
        rows = self._epoch(k // self.per_epoch)[k % self.per_epoch]
        return rows[self.rank::self.world]


class GroupedBatches:
    """Batch k of a grouped source (``sources.<s>.group``) for one rank, as a function
    of k: ``groups_per_batch`` whole groups per rank, every rank the same number, no
    group on two ranks in one step.

    An epoch is a seeded permutation of the groups. A group larger than
    ``max_group_size`` keeps its ``priority`` rows (the relevant candidates) and a
    random sample of the rest, drawn afresh each epoch, so every negative is seen over
    the epochs while a batch's size stays bounded."""

    def __init__(self, groups: np.ndarray, groups_per_batch: int, rank: int, world: int, seed: int,
                 max_group_size: int, priority: Optional[np.ndarray] = None):
        order = np.argsort(groups, kind="stable")
        bounds = np.flatnonzero(np.diff(groups[order])) + 1
        self.members = np.split(order, bounds)
        self.n_groups = len(self.members)
        self.gpb, self.rank, self.world, self.seed = groups_per_batch, rank, world, seed
        self.max_group_size = max_group_size
        self.priority = priority
        self.global_groups = groups_per_batch * world
        self.per_epoch = max(1, self.n_groups // self.global_groups)
        self._cached: tuple = (None, None)

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._cached[0] != epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_groups)
            need = self.per_epoch * self.global_groups
            if len(perm) < need:  # fewer groups than one global batch: wrap around
                perm = np.resize(perm, need)
            self._cached = (epoch, perm[:need].reshape(self.per_epoch, self.global_groups))
        return self._cached[1]

    def _capped(self, g: int, epoch: int) -> np.ndarray:
        rows = self.members[g]
        if len(rows) <= self.max_group_size:
            return rows
        rows = np.random.default_rng([self.seed, epoch, int(g)]).permutation(rows)
        if self.priority is not None:
            rows = rows[np.argsort(~self.priority[rows], kind="stable")]  # relevant rows first
        return np.sort(rows[:self.max_group_size])

    def groups_of(self, k: int) -> np.ndarray:
        """The group ids rank ``self.rank`` trains on at batch ``k``."""
        return self._epoch(k // self.per_epoch)[k % self.per_epoch][self.rank::self.world]

    def batch(self, k: int) -> np.ndarray:
        epoch = k // self.per_epoch
        return np.concatenate([self._capped(g, epoch) for g in self.groups_of(k)])
