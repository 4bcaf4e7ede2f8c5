"""The Serve deployments and how work is split between them.

    HTTP → Ingress (FastAPI: validation, routing, /v1/predict tokenises once per source)
             │ POST /v1/tasks/{task}                │ POST /v1/predict
             ▼                                      ▼
           Head[task]  (one deployment per task: its own autoscaling; @serve.batch over
             │          requests; tokenises; holds only its head's weights)
             ▼
           Encoder     (one shared deployment: @serve.batch merges the calls of every head
                        and of /v1/predict into one batch, run in passes of rows of like
                        length)

Why this split: the encoder is nearly all the compute and all the memory, so it lives once
per replica and is shared by every task; what differs per task (tokenising, the head,
post-processing, waiting on the encoder) scales with that task's own traffic. Under
``layout: naive`` each Head holds a full encoder instead (the baseline the benchmark
compares against).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Optional, TypeVar

import numpy as np
from ray import serve

from ecomtl.model.bundle import load_bundle, read_spec
from ecomtl.model.multitask import Encoded
from ecomtl.model.predictor import EncoderRunner, Features, HeadRunner, Preprocessor
from ecomtl.serve import metrics
from ecomtl.serve.schemas import Batching

log = logging.getLogger("ray.serve")
T = TypeVar("T")
RETRIES = 3  # a replica that dies mid-request (scale-down, crash) costs a retry, not an error


def load_tokenizer(bundle: str | Path):
    """The bundle's tokenizer with its backbone's pad policy (no model weights read)."""
    from ecomtl.config.load import config_from_dict
    from ecomtl.model.build import load_tokenizer as backbone_tokenizer
    import yaml

    path = Path(bundle).expanduser()
    cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    return backbone_tokenizer(cfg.model, str(path / "backbone"))


def load_encoder_runner(bundle: str | Path, torch_threads: Optional[int], precision: str = "fp32") -> EncoderRunner:
    import torch

    from ecomtl.model.precision import apply_precision

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return EncoderRunner(apply_precision(load_bundle(bundle, device=device).model, precision, device))


def encode_by_length(runner: EncoderRunner, feats: Features, route: str, need_hidden: bool,
                     max_pass_tokens: int) -> Encoded:
    """``runner.encode`` over rows sorted by length, in passes of at most ``max_pass_tokens``
    padded tokens; the result in the rows' own order, padded to the longest row. A merged
    batch holds requests (and, in the encoder, sources) of very different lengths: in one
    pass a 20-token title costs as much as the 128-token review it is padded to."""
    lengths = [len(ids) for ids in feats.input_ids]
    passes, current = [], []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) + 1) * lengths[i] > max_pass_tokens:
            passes.append(current)
            current = []
        current.append(i)
    passes.append(current)
    if len(passes) == 1:
        return runner.encode(feats, route, need_hidden)
    import torch

    out: Optional[Encoded] = None
    n, width = len(lengths), max(lengths)
    with torch.inference_mode():
        for rows in passes:
            enc = runner.encode(take(feats, rows), route, need_hidden)
            if out is None:
                hidden = None if enc.hidden is None else enc.hidden.new_zeros((n, width, enc.hidden.shape[-1]))
                out = Encoded(enc.pooled.new_empty((n, *enc.pooled.shape[1:])), hidden, enc.mask.new_zeros((n, width)))
            index, w = torch.tensor(rows), enc.mask.shape[1]
            out.pooled[index] = enc.pooled
            out.mask[index, :w] = enc.mask
            if out.hidden is not None:
                out.hidden[index, :w] = enc.hidden
    return out


def take(feats: Features, rows: list[int]) -> Features:
    """The rows ``rows`` of ``feats``, in that order."""
    pick = lambda xs: None if xs is None else [xs[i] for i in rows]  # noqa: E731
    return Features(feats.source, feats.kind, feats.pad_id, pick(feats.input_ids), pick(feats.token_type_ids),
                    pick(feats.texts), pick(feats.truncated), pick(feats.word_ids), pick(feats.words))


def replica_died(err: BaseException) -> bool:
    """A replica (this call's, or one it called in turn) died under the request."""
    from ray.exceptions import RayActorError

    return isinstance(err, RayActorError) or isinstance(getattr(err, "cause", None), RayActorError)


async def with_retry(call: Callable[[], Awaitable[T]]) -> T:
    """Predictions are pure functions of the input, so re-sending one whose replica died
    is safe; Serve routes the retry to a live replica (or holds it until a replacement
    is up)."""
    for attempt in range(RETRIES + 1):
        try:
            return await call()
        except Exception as err:
            if attempt == RETRIES or not replica_died(err):
                raise
            log.warning("replica died mid-request; retrying (%d/%d): %s", attempt + 1, RETRIES, type(err).__name__)
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


class Failed:
    """One call's own error, returned in its slot of a batch's results (Serve hands each
    caller its slot; the caller re-raises it) so that batch-mates still get answers."""

    def __init__(self, err: BaseException):
        self.err = err


def unwrap(result):
    if isinstance(result, Failed):
        raise result.err
    return result


def about_the_input(err: BaseException) -> bool:
    """Could one call's input be the cause? Not for overload or dead replicas: those
    hit every call alike, and retrying one by one would only add load."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import RayServeException

    return not (replica_died(err) or isinstance(err, (RayServeException, RayActorError)))


async def isolated(calls: list, run: Callable[[list], Awaitable[list]]) -> list:
    """``run(calls)``; if it fails, each call alone, so that only the bad one fails. Inputs
    are validated at the edge, so this is the rare path: a defence, not a filter."""
    try:
        return await run(calls)
    except Exception as err:
        if len(calls) == 1 or not about_the_input(err):
            return [Failed(err)] * len(calls)
        log.warning("a batch of %d failed (%s); retrying its calls one by one", len(calls), type(err).__name__)
    # concurrently, so that the good calls still share the next forward pass
    alone = await asyncio.gather(*(run([call]) for call in calls), return_exceptions=True)
    return [Failed(r) if isinstance(r, BaseException) else r[0] for r in alone]


def encoder_rows(calls: list) -> int:
    return sum(len(feats.input_ids) for feats, _, _ in calls)


def item_rows(calls: list) -> int:
    return sum(len(items) for items, _ in calls)


def configure_batching(method, batching: Batching) -> None:
    method.set_max_batch_size(batching.max_batch_size)
    method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)


class Batched:
    """Calls into one ``@serve.batch`` method of this replica. ``@serve.batch`` holds the
    first call of a batch for ``batch_wait_timeout_s`` whatever else is going on: a lone
    request on an idle replica then waits for company that never comes (at each batched
    stage it passes). Here the wait is set per batch: a call that finds no other call of
    this method in flight (queued or running) closes its batch at once; while others are
    in flight, calls wait as configured (they and the ones arriving meanwhile share the
    next pass). Serve reads the wait when it takes a batch's first call, on this same
    event loop, so the setting made just before the call is the one that applies."""

    def __init__(self, method, batching: Batching):
        self.method, self.in_flight = method, 0
        self.busy_wait = batching.batch_wait_timeout_s
        self.idle_wait = batching.batch_wait_timeout_s if batching.wait_when_idle else 0.0
        configure_batching(method, batching)

    async def __call__(self, call):
        self.method.set_batch_wait_timeout_s(self.busy_wait if self.in_flight else self.idle_wait)
        self.in_flight += 1
        try:
            return await self.method(call)
        finally:
            self.in_flight -= 1


@dataclass
class HostEncoded:
    """An ``Encoded`` on its way from the encoder replica to a head: numpy arrays of
    just the call's rows. Ray pickles numpy buffers out of band (protocol 5); a torch
    tensor goes through ``torch.save`` of its whole storage, so a row slice of a merged
    batch would carry every row of the batch to every caller."""

    pooled: np.ndarray
    hidden: Optional[np.ndarray]
    mask: np.ndarray

    @classmethod
    def of(cls, enc: Encoded, need_hidden: bool = True) -> "HostEncoded":
        hidden = enc.hidden.numpy() if need_hidden and enc.hidden is not None else None
        return cls(enc.pooled.numpy(), hidden, enc.mask.numpy())

    def encoded(self) -> Encoded:
        """Torch tensors again (a copy where Ray handed back read-only memory)."""
        import torch

        t = lambda a: None if a is None else torch.from_numpy(a if a.flags.writeable else a.copy())  # noqa: E731
        return Encoded(t(self.pooled), t(self.hidden), t(self.mask))


def as_encoded(enc) -> Encoded:
    return enc.encoded() if isinstance(enc, HostEncoded) else enc


@serve.deployment
class Encoder:
    """The shared encoder. One call = one tokenised sub-batch; ``@serve.batch`` merges
    concurrent calls (from any head, any source) into a single forward pass."""

    def __init__(self, bundle: str, batching: Batching, torch_threads: Optional[int] = None, precision: str = "fp32"):
        self.runner = load_encoder_runner(bundle, torch_threads, precision)
        self.max_pass_tokens = batching.max_pass_tokens
        self.batched = Batched(self.encode, batching)

    async def __call__(self, feats: Features, route: str, need_hidden: bool) -> HostEncoded:
        return unwrap(await self.batched((feats, route, need_hidden)))

    # Batches count texts (rows), not calls: one 32-text request weighs 32 single-text
    # ones. Limits are reset from the args in __init__.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=encoder_rows)
    async def encode(self, calls: list[tuple[Features, str, bool]]):
        metrics.batch("encoder", metrics.NO_TASK, encoder_rows(calls))
        # Only calls of one input kind and one adapter route can share a forward pass:
        # one pass per group, results back in call order.
        groups: dict[tuple, list[int]] = {}
        for i, (feats, route, _) in enumerate(calls):
            groups.setdefault((feats.merge_key(), route), []).append(i)
        out: list = [None] * len(calls)
        for (_, route), members in groups.items():
            results = await isolated([calls[i] for i in members], lambda part, route=route: self._forward(part, route))
            for i, r in zip(members, results):
                out[i] = r
        return out

    async def _forward(self, part: list, route: str) -> list:
        merged = Features.concat([feats for feats, _, _ in part])
        need_hidden = any(h for _, _, h in part)
        # torch releases the GIL: run off the event loop so the next batch can gather meanwhile
        enc = await asyncio.to_thread(encode_by_length, self.runner, merged, route, need_hidden, self.max_pass_tokens)
        out, start = [], 0
        for feats, _, hidden in part:  # token states only to the calls that asked for them
            out.append(HostEncoded.of(enc.rows(start, start + len(feats.input_ids)), hidden))
            start += len(feats.input_ids)
        return out


@serve.deployment
class Head:
    """One task. ``predict``: raw (validated) items → predictions, batched across requests;
    ``apply``: an encoding computed elsewhere (``/v1/predict``) → predictions."""

    def __init__(self, bundle: str, task: str, encoder, batching: Batching, torch_threads: Optional[int] = None,
                 precision: str = "fp32"):
        from ecomtl.tasks import TASK_HEADS

        spec = read_spec(bundle)
        self.task, self.source, self.route = task, spec["tasks"][task]["source"], spec["routes"][task]
        self.pre = Preprocessor(load_tokenizer(bundle), spec)
        # naive layout: no shared encoder, a private full copy in this replica; so too for a
        # head that decodes (generation runs the whole model for every new token)
        self.decodes = TASK_HEADS.get(spec["tasks"][task]["head"]).needs_backbone
        self.encoder = None if self.decodes else encoder
        self.local = load_encoder_runner(bundle, torch_threads, precision) if self.encoder is None else None
        # the sharing layer and heads: the whole bundle minus the backbone, or the local copy
        self.heads = HeadRunner(load_bundle(bundle, with_backbone=False).model if self.local is None
                                else self.local.model)
        self.need_hidden = self.heads.needs_hidden([task])
        self.forward_lock = asyncio.Lock()  # naive: one forward at a time, tokenising may overlap
        self.max_pass_tokens = batching.max_pass_tokens
        self.batched = Batched(self.predict_batch, batching)

    async def predict(self, items: list[tuple[str, Optional[str]]], params: Optional[dict] = None) -> list[dict]:
        """``params``: the request's own settings for the head (generation: max_new_tokens)."""
        return unwrap(await self.batched((items, params or {})))

    # Two batches in flight: one waits on the encoder while the next is tokenised.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=item_rows, max_concurrent_batches=2)
    async def predict_batch(self, calls: list[tuple[list, dict]]) -> list:
        metrics.batch("head", self.task, item_rows(calls))
        return await isolated(calls, self._decode if self.decodes else self._predict)

    async def _decode(self, calls: list[tuple[list, dict]]) -> list[list[dict]]:
        """One batched ``generate`` per decoding budget asked (most calls take the
        default, so usually one for the whole batch); answers back in call order."""
        by_budget: dict = {}
        for i, (_, params) in enumerate(calls):
            by_budget.setdefault(params.get("max_new_tokens"), []).append(i)
        out: list = [None] * len(calls)
        for budget, members in by_budget.items():
            feats = self.pre.features(self.source, [x for i in members for x in calls[i][0]])
            async with self.forward_lock:  # off the event loop: other calls keep arriving meanwhile
                made = await asyncio.to_thread(self.heads.generate, self.task, feats, budget)
            metrics.truncations(self.task, feats.truncated)
            start = 0
            for i in members:
                n = len(calls[i][0])
                out[i] = made[start:start + n]
                start += n
        return out

    async def _predict(self, calls: list[tuple[list, dict]]) -> list[list[dict]]:
        feats = self.pre.features(self.source, [x for items, _ in calls for x in items])
        if self.local is not None:
            async with self.forward_lock:
                enc = await asyncio.to_thread(encode_by_length, self.local, feats, self.route, self.need_hidden,
                                              self.max_pass_tokens)
        else:
            enc = as_encoded(await with_retry(lambda: self.encoder.remote(feats, self.route, self.need_hidden)))
        preds = self.heads.predict(self.task, enc, feats)
        metrics.truncations(self.task, feats.truncated)
        out, start = [], 0
        for items, _ in calls:
            out.append(preds[start:start + len(items)])
            start += len(items)
        return out

    async def apply(self, enc, feats: Features) -> list[dict]:
        preds = self.heads.predict(self.task, as_encoded(enc), feats)
        metrics.truncations(self.task, feats.truncated)
        return preds

