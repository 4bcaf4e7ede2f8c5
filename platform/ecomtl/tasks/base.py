"""What every task head provides. A new head type is one file in this package that
subclasses ``TaskHead`` and registers itself in ``TASK_HEADS``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional

import torch
from torch import nn

from ecomtl.registry import Plugin, Registry

if TYPE_CHECKING:
    from ecomtl.model.multitask import Encoded

TASK_HEADS: Registry[type["TaskHead"]] = Registry("task head")
IGNORE = -100  # label value that contributes no loss and no metric


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


class TaskHead(Plugin, nn.Module):
    #: which source kinds the head accepts: "text", "pair", "tokens"
    input_kinds: ClassVar[tuple[str, ...]]
    #: "sequence" heads read the pooled vector, "token" heads every token state
    level: ClassVar[str] = "sequence"
    #: torch dtype of the encoded labels
    label_dtype: ClassVar[torch.dtype] = torch.long
    #: what a missing label is stored as
    ignore_value: ClassVar[Any] = IGNORE
    #: the keys of ``metrics()`` that ``tasks.<t>.metric`` may name as the task's ``score``
    #: (higher is better), each with a one-line description for ``ecomtl plugins``
    selectable_metrics: ClassVar[dict[str, str]]
    #: the one scored when the config names none
    default_metric: ClassVar[str]
    #: heads that compare the rows of a group (ranking) need ``sources.<s>.group``;
    #: their batches then carry ``batch["group"]`` (each row's group id)
    needs_groups: ClassVar[bool] = False
    #: the fields of this head's own request body (see ``request_model``); None: inputs
    request_fields: ClassVar[Optional[tuple[str, ...]]] = None
    #: heads that project with the backbone's LM head (generation) need a backbone with one
    needs_lm_head: ClassVar[bool] = False
    #: heads whose rows carry their own target in the inputs (generation) have their source
    #: to themselves
    owns_source: ClassVar[bool] = False
    #: False: the head's rows are finished in memory (``finish_rows``), not streamed
    streams: ClassVar[bool] = True
    #: heads that answer by running the whole model (decoding) rather than from an encoding
    needs_backbone: ClassVar[bool] = False
    #: the task's name in the model, set when the model is built (a head that reads its
    #: own labels from the batch in ``forward`` needs it)
    task_name: str = ""

    def __init__(self, hidden_size: int, label_info: dict, dropout: float = 0.1, options: Optional[dict] = None):
        """``options``: the task config's ``options``, validated by this head's ``Options``."""
        super().__init__()
        self.label_info = label_info
        self.options = self.Options.model_validate(options or {})

    # -- labels -----------------------------------------------------------------------
    @classmethod
    def fit_labels(cls, values: list) -> dict:
        """Learn the label space from the train split's (non-missing) values."""
        raise NotImplementedError

    @classmethod
    def encode_label(cls, value: Any, info: dict) -> tuple[Optional[Any], Optional[str]]:
        """(encoded, None), or (None, reason) with reason 'missing_label' / 'unknown_label'."""
        raise NotImplementedError

    @classmethod
    def finish_rows(cls, tokenizer, input_ids: list, labels: list, options: dict) -> Optional[tuple[list, list]]:
        """After tokenising a source's rows: new (input_ids, labels) when the head
        changes them (generation appends the target), else None."""
        return None

    def attach(self, backbone, tokenizer, route: str) -> None:
        """Called once the model is built: the backbone (not as a submodule), the
        tokenizer and the task's adapter route, for heads that decode."""

    # -- model ------------------------------------------------------------------------
    def forward(self, encoded: "Encoded", batch: Mapping[str, Any]) -> torch.Tensor:
        """``encoded``: pooled vectors, token states and mask; ``batch``: the collated
        batch with any row metadata a head needs (group ids, target token ids, ...)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, batch: Optional[Mapping] = None) -> torch.Tensor:
        raise NotImplementedError

    # -- distillation (ecomtl distill) -----------------------------------------------------
    # The teacher's head turns its outputs on a batch into per-row targets
    # (``teacher_targets``, once, on the driver); they travel with the train rows and reach
    # the student's head as ``batch["teacher"][task]`` (rows of unequal length padded, as
    # labels are); the student's ``distill_loss`` scores its outputs against them and the
    # loop mixes it with the hard loss: ``alpha * soft + (1 - alpha) * hard``.
    # Hooks for heads whose outputs are not logits over classes: ranking overrides
    # ``distill_loss`` (MSE to the teacher's per-row score, or a softmax KL within each
    # ``batch["group"]``); generation overrides ``teacher_targets`` to return the teacher's
    # decoded text as token ids (sequence-level KD, Kim & Rush 2016) and ``distill_loss``
    # to score them like labels.
    def teacher_targets(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> list:
        """Per row of ``batch``, what a student learns from this (teacher) head: by
        default the row's logits over classes, as a float32 array (token heads trim the
        padding). Other outputs (a score per row, per-token vocabulary logits) need the
        head's own override: the default refuses them rather than store the wrong thing."""
        if outputs.dim() != 2:
            raise NotImplementedError(f"{type(self).__name__} outputs {tuple(outputs.shape)}, not [rows, classes]: "
                                      "it distils only once it overrides teacher_targets and distill_loss")
        return list(outputs.float().cpu().numpy())

    def distill_loss(self, logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                     temperature: float, batch: Optional[Mapping] = None) -> torch.Tensor:
        """The soft loss against the teacher's targets on the same rows. Default (logits
        over classes): ``T² · KL(softmax(teacher/T) ‖ softmax(logits/T))``, mean over rows:
        every row, labelled or not (the teacher labels what the data leaves blank)."""
        per_row = soft_kl(logits, teacher, temperature)
        return guarded_mean(per_row, torch.ones_like(per_row), logits)

    # -- evaluation ---------------------------------------------------------------------
    def gold_and_pred(self, logits: torch.Tensor, labels: torch.Tensor,
                      batch: Optional[Mapping] = None) -> list[tuple[Any, Any]]:
        """Per example (gold, prediction) in the head's own plain-Python form; examples
        whose label is missing are left out."""
        raise NotImplementedError

    @classmethod
    def metrics(cls, pairs: list[tuple[Any, Any]], info: dict, metric: Optional[str] = None) -> dict[str, float]:
        """Metrics over all (gold, prediction) pairs; must include ``score``: the selected
        ``metric`` (``default_metric`` when None) in [0, 1], which the aggregate for
        model selection averages. End with ``return cls.scored(out, metric)``."""
        raise NotImplementedError

    @classmethod
    def scored(cls, out: dict, metric: Optional[str]) -> dict:
        """``out`` plus ``score``, floored at 0 so that every score lies in [0, 1] (R² can
        be negative); no labelled example scores 0."""
        out["score"] = max(0.0, float(out[metric or cls.default_metric])) if out.get("n") else 0.0
        return out

    @classmethod
    def check_metric(cls, metric: str, info: dict) -> None:
        """Raise ValueError when ``metric`` cannot be computed on this label space (e.g.
        positive-class F1 of a 3-class task). Called once the train split's labels are fit."""

    # -- serving ------------------------------------------------------------------------
    def predict(self, logits: torch.Tensor, **context) -> list[dict]:
        """JSON-ready predictions for one batch."""
        raise NotImplementedError

    @classmethod
    def request_model(cls, task: str, shapes, options: dict):
        """The body of ``POST /v1/tasks/{task}`` when the head has its own: a subclass of
        ``serve.inputs.Request`` (``items()``: the rows to encode, ``params()``: what the
        head's deployment is told besides, ``respond(preds)``: the answer), built with
        ``shapes`` (``serve.inputs.Shapes``: text type, limits, the standard body); None:
        the standard ``inputs`` body."""
        return None

    @classmethod
    def keep_in_group(cls, labels) -> Optional[Any]:
        """Grouped sources: a bool per row that a capped training group must keep (the
        relevant candidates), or None."""
        return None


def number_label(value: Any) -> tuple[Optional[float], Optional[str]]:
    """A numeric label (regression targets, ranking relevance): (value, None), or
    (None, "missing_label" / "unknown_label") for what is not a finite number."""
    if is_missing(value):
        return None, "missing_label"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None, "unknown_label"
    return (v, None) if math.isfinite(v) else (None, "unknown_label")


def guarded_mean(per_item: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over labelled items; a batch with none gives a zero that still touches the
    graph, so every rank runs the same backward under ZeRO."""
    n = mask.sum()
    if n == 0:
        return logits.sum() * 0.0
    return (per_item * mask).sum() / n


def soft_kl(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(logits/T))`` over the last dimension, one value
    per item. T² keeps the gradients' size as T grows (Hinton et al., 2015)."""
    from torch.nn import functional as F

    t = F.log_softmax(teacher.float() / temperature, -1)
    s = F.log_softmax(logits.float() / temperature, -1)
    return temperature ** 2 * (t.exp() * (t - s)).sum(-1)
