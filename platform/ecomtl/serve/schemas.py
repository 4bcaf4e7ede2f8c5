"""HTTP request/response models and the typed arguments of the Serve app builder.

Limits policy (see serve_configs/README.md):
- more than ``max_items`` inputs in one request → 413 ``too_many_items``;
- a text over ``max_text_chars`` characters → 413 ``text_too_long`` (refused, not cut:
  a caller that sends a whole page should learn it rather than get a silent answer);
- a text longer than the source's token ``max_length`` is truncated exactly as in
  training, and its prediction carries ``"truncated": true``.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ecomtl.model.predictor import DEFAULT_MAX_ITEMS, DEFAULT_MAX_TEXT_CHARS, Limits


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- requests and responses --------------------------------------------------------------
class TaskResponse(BaseModel):
    task: str
    predictions: list[dict[str, Any]]


class PredictResponse(BaseModel):
    predictions: dict[str, list[dict[str, Any]]]


class TaskInfo(BaseModel):
    name: str
    head: str
    input: Literal["text", "pair", "tokens"]
    input_fields: list[str]
    labels: Optional[list[str]] = None
    max_tokens: int


class TasksResponse(BaseModel):
    tasks: list[TaskInfo]
    max_items: int
    max_text_chars: int
    bundle_version: str = Field(description="the bundle's manifest hash; also the X-Bundle-Version header")


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str = Field(description="quote it when reporting a problem: the replica log has the details")
    details: Optional[list[dict[str, Any]]] = Field(None, description="the first errors, at most 20")
    more_details: Optional[int] = Field(None, description="how many errors were left out of details")


class ErrorResponse(BaseModel):
    error: ErrorBody


def task_infos(spec: dict) -> list[TaskInfo]:
    out = []
    for name, t in spec["tasks"].items():
        src = spec["sources"][t["source"]]
        from ecomtl.tasks import TASK_HEADS

        own = TASK_HEADS.get(t["head"]).request_fields  # a head with its own body (ranking)
        fields = list(own) if own else ["text", "text_pair"] if src["kind"] == "pair" else ["text"]
        # the label list the head declared (span types where it has them, else class names), not its name
        labels = t["labels"].get("types") or t["labels"].get("names")
        out.append(TaskInfo(name=name, head=t["head"], input=src["kind"], input_fields=fields, labels=labels,
                            max_tokens=src["max_length"]))
    return out


# -- app builder arguments --------------------------------------------------------------------
ACTOR_OPTIONS = {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type"}


class Batching(Strict):
    """``@serve.batch`` limits: texts (rows, not requests) merged into one batch, and how
    long the first waits for more. The wait applies while the replica has other
    calls in flight (they or the calls arriving meanwhile join the batch); a call that
    finds the replica idle runs at once, since waiting would only add its wait to the
    answer (``wait_when_idle: true`` waits anyway)."""

    max_batch_size: int = Field(64, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    wait_when_idle: bool = Field(False, description="a call on an idle replica also waits batch_wait_timeout_s "
                                                    "for company (default: it runs at once)")
    max_pass_tokens: int = Field(2048, ge=1, le=1_000_000, description=(
        "padded tokens per forward pass: a merged batch is sorted by length and cut into passes of at most "
        "this many (rows × longest row; one row at least), so short texts are not padded to the longest "
        "text of every request merged with them; raise it on a GPU replica"))


class DeploymentArgs(Strict):
    autoscaling_config: dict[str, Any] = Field(default_factory=lambda: {"min_replicas": 1, "max_replicas": 1})
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1})
    batching: Batching = Batching()
    max_ongoing_requests: Optional[int] = Field(
        None, ge=1, description="default 2 × max_batch_size: one batch runs while the next fills")
    max_queued_requests: Optional[int] = Field(
        None, ge=1, description="requests waiting beyond max_ongoing_requests before callers get 503 "
                                "(default 4 × max_ongoing_requests: bounded, so overload sheds instead of piling up)")
    torch_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads per replica")
    max_surge_percent: int = Field(
        100, ge=0, le=100, description="extra replicas during a rollout (% of the count): the old ones serve "
                                       "until their replacements are ready; needs room for them. 0: replaced "
                                       "in place, requests wait for the new replica meanwhile")

    @field_validator("autoscaling_config")
    @classmethod
    def _autoscaling(cls, v):
        from ray.serve.config import AutoscalingConfig

        AutoscalingConfig(**v)  # Serve's own checks, now rather than at deploy time
        return v

    @field_validator("ray_actor_options")
    @classmethod
    def _actor(cls, v):
        unknown = set(v) - ACTOR_OPTIONS
        if unknown:
            raise ValueError(f"unknown ray_actor_options {sorted(unknown)}; known: {sorted(ACTOR_OPTIONS)}")
        return v

    @property
    def ongoing(self) -> int:
        return self.max_ongoing_requests or 2 * self.batching.max_batch_size

    @property
    def queued(self) -> int:
        return self.max_queued_requests or 4 * self.ongoing

    def serve_options(self) -> dict:
        return {"autoscaling_config": self.autoscaling_config, "ray_actor_options": self.ray_actor_options,
                "max_ongoing_requests": self.ongoing, "max_queued_requests": self.queued,
                "max_surge_percent": self.max_surge_percent}

    def ingress_serve_options(self) -> dict:
        """The ingress admits ``ongoing + queued`` requests itself and answers the next
        with a JSON 503: Serve's own refusal (``max_queued_requests`` at the proxy) is
        plain text. So Serve lets a little more through than the ingress admits and
        never queues for it."""
        admitted = self.ongoing + self.queued
        return {**self.serve_options(), "max_ongoing_requests": admitted + max(8, admitted // 4),
                "max_queued_requests": -1}


class DeploymentOverride(Strict):
    """Per-task settings; what is given replaces the ``heads`` defaults."""

    autoscaling_config: Optional[dict[str, Any]] = None
    ray_actor_options: Optional[dict[str, Any]] = None
    batching: Optional[Batching] = None
    max_ongoing_requests: Optional[int] = Field(None, ge=1)
    max_queued_requests: Optional[int] = Field(None, ge=1)
    torch_threads: Optional[int] = Field(None, ge=1)
    max_surge_percent: Optional[int] = Field(None, ge=0, le=100)


class AuthArgs(Strict):
    """Optional API keys: with a source given, every route but /healthz and /readyz needs
    ``Authorization: Bearer KEY`` (or ``X-API-Key: KEY``). Keys are read on each replica,
    one per line; a source that yields no key stops the replica (fail closed)."""

    api_keys_env: Optional[str] = Field(None, description="environment variable holding keys (comma or newline separated)")
    api_keys_file: Optional[str] = Field(None, description="file with one key per line")

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys_env or self.api_keys_file)


class AppArgs(Strict):
    """Arguments of ``ecomtl.serve.app:build_app`` (the ``args:`` of a Serve YAML)."""

    bundle: str = Field(description="model bundle directory (from `ecomtl train` / `ecomtl export`)")
    layout: Literal["shared", "naive"] = Field(
        "shared", description="shared: one encoder deployment + light per-task heads; "
                             "naive: every task deployment holds the full model (baseline)")
    max_items: int = Field(DEFAULT_MAX_ITEMS, ge=1, le=4096,
                           description="inputs per request; at most every batching.max_batch_size")
    max_text_chars: int = Field(DEFAULT_MAX_TEXT_CHARS, ge=1, le=1_000_000)
    max_body_bytes: Optional[int] = Field(
        None, ge=1024, description="request body limit (413 beyond); default: room for max_items pairs of "
                                   "max_text_chars characters, each written as a 6-byte JSON \\u escape")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="one deadline per request, retries "
                                                                       "included; 504 beyond")
    retry_after_s: int = Field(1, ge=0, le=3600, description="Retry-After of an overload 503")
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32", description="the backbone's precision in every replica that holds it (model/precision.py): bf16/fp16 "
                            "on GPU replicas, int8 = CPU dynamic quantisation; measure the quality cost with "
                            "benchmarks/precision.py before switching")
    auth: AuthArgs = AuthArgs()
    ingress: DeploymentArgs = DeploymentArgs(ray_actor_options={"num_cpus": 0.5})
    encoder: DeploymentArgs = DeploymentArgs()
    heads: DeploymentArgs = DeploymentArgs(ray_actor_options={"num_cpus": 0.5})
    tasks: dict[str, DeploymentOverride] = Field(default_factory=dict, description="per-task overrides")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_items, self.max_text_chars)

    @property
    def body_limit(self) -> int:
        return self.max_body_bytes or self.max_items * 2 * self.max_text_chars * 6 + 64 * 1024

    def head_args(self, task: str) -> DeploymentArgs:
        override = self.tasks.get(task)
        if override is None:
            return self.heads
        return DeploymentArgs.model_validate({**self.heads.model_dump(), **override.model_dump(exclude_unset=True)})

    @model_validator(mode="after")
    def _overrides_valid(self):
        for task in self.tasks:  # validate the merged settings now, not at deploy time
            try:
                self.head_args(task)
            except ValueError as err:
                raise ValueError(f"tasks.{task}: {err}") from None
        # a request is never split across forward passes: the largest must fit one batch
        parts = {"encoder": self.encoder, "heads": self.heads, **{f"tasks.{t}": self.head_args(t) for t in self.tasks}}
        for name, part in parts.items():
            if part.batching.max_batch_size < self.max_items:
                raise ValueError(f"{name}.batching.max_batch_size ({part.batching.max_batch_size}) is below "
                                 f"max_items ({self.max_items}): a full request would not fit one batch")
        return self
