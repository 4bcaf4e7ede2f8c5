"""Request models built per app from the bundle and the limits, so that the OpenAPI page
states what the service accepts (task names as an enum, text lengths, input counts) and
everything the model could not answer is refused here, at the edge, before it reaches a
batch shared with other requests.

Refused here: wrong shapes, unknown keys, unknown tasks, empty or blank texts, texts over
``max_text_chars``, more than ``max_items`` inputs, and text that is not valid Unicode
(a lone surrogate such as ``"\\ud800"``, which JSON can spell but no tokenizer encodes).
"""

# No `from __future__ import annotations`: FastAPI reads these annotations at runtime.

import enum
from typing import Annotated, Any, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StringConstraints,
                      Tag, create_model, model_validator)
from pydantic_core import PydanticCustomError

from ecomtl.model.predictor import Limits

NON_BLANK = r"\S"  # at least one non-whitespace character (Python's `re`, as str.strip sees it)


def unicode_text(value: str) -> str:
    """Only text that UTF-8 can encode reaches a tokenizer (it raises on the rest)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PydanticCustomError("invalid_text", "text is not valid Unicode: {what} at character {at}",
                                  {"what": repr(err.object[err.start:err.end]), "at": err.start}) from None
    return value


class Closed(BaseModel):
    """Unknown keys are refused with one error naming a few of them: a body with 100,000
    stray keys costs one error, not 100,000."""

    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any):
        if isinstance(data, dict):
            extra = [k for k in data if k not in cls.model_fields]
            if extra:
                shown = ", ".join(repr(k)[:40] for k in extra[:5])
                shown += f" and {len(extra) - 5} more" if len(extra) > 5 else ""
                raise PydanticCustomError("extra_forbidden", "unknown field(s) {keys}; known: {known}",
                                          {"keys": shown, "known": ", ".join(cls.model_fields)})
        return data


def bounded_list(what: str, limit: int, code: str):
    """A length check before item validation: a list of 200,000 items fails at once."""

    def check(value: Any):
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError(code, "{n} {what} exceed the limit of {limit} per request",
                                      {"n": len(value), "what": what, "limit": limit})
        return value

    return check


def shape_checks(names: list[str], pair: bool, max_items: int):
    """The pair-or-single rule of these tasks, with its own error codes (a pair task sent
    one text, a single-text task sent a pair)."""
    what = ", ".join(repr(n) for n in names)

    def check(value: Any):
        if isinstance(value, list) and len(value) > max_items:
            return value  # the count check speaks
        for i, x in enumerate(value if isinstance(value, list) else [value]):
            has_pair = isinstance(x, dict) and x.get("text_pair") is not None
            if pair and (isinstance(x, str) or isinstance(x, dict) and not has_pair):
                raise PydanticCustomError("pair_required", "{what} compare(s) two texts: inputs[{i}] needs 'text_pair'",
                                          {"what": what, "i": i})
            if not pair and has_pair:
                raise PydanticCustomError("pair_not_accepted",
                                          "{what} read(s) a single text: inputs[{i}] must not have 'text_pair'",
                                          {"what": what, "i": i})
        return value

    return check


class Shapes:
    """The request models of one bundle: per task (``task``), and the body of
    /v1/predict (``predict``), whose schema is one branch per input shape."""

    def __init__(self, pair_of: dict[str, bool], limits: Limits, heads: Optional[dict[str, tuple]] = None):
        """``heads``: task → (head class, its options); a head with its own
        ``request_model`` (ranking: a query and its candidates) gives its task's body."""
        self.pair_of, self.limits = pair_of, limits
        self.Text = Annotated[str, StringConstraints(min_length=1, max_length=limits.max_text_chars,
                                                     pattern=NON_BLANK), AfterValidator(unicode_text)]
        Text = self.Text

        class TextItem(Closed):
            text: Text = Field(description="the text")

        class PairItem(Closed):
            text: Text = Field(description="the first text (for matching: the first offer)")
            text_pair: Text = Field(description="the second text (the second offer)")

        self.items = {False: Union[Text, TextItem], True: PairItem}
        own = {t: h.request_model(t, self, options) for t, (h, options) in (heads or {}).items()}
        self.task = {t: own.get(t) or self.model(f"{t}_request", [t]) for t in pair_of}
        self.predict = self.predict_model()

    def inputs(self, names: list[str]):
        pair, n = self.pair_of[names[0]], self.limits.max_items
        item = self.items[pair]
        return Annotated[Union[item, Annotated[list[item], Field(min_length=1, max_length=n)]],
                         BeforeValidator(shape_checks(names, pair, n)),
                         BeforeValidator(bounded_list("inputs", n, "too_many_items"))]

    def model(self, name: str, names: list[str], with_tasks: bool = False):
        pair, lim = self.pair_of[names[0]], self.limits
        shape = "{text, text_pair}" if pair else "a string or {text}"
        fields = {"inputs": (self.inputs(names), Field(description=f"one input or a list of 1-{lim.max_items}: "
                                                                   f"{shape}; texts of 1-{lim.max_text_chars} characters"))}
        if with_tasks:
            TaskName = enum.Enum(f"{name}_task", {t: t for t in names}, type=str)
            fields["tasks"] = (Annotated[list[TaskName], Field(min_length=1, max_length=len(names)),
                                         BeforeValidator(bounded_list("tasks", len(names), "too_many_tasks"))],
                               Field(description="task names; the encoder runs once per source"))
        return create_model(name, __base__=Request, **fields)

    def predict_model(self):
        """One model per input shape; the tasks named pick the branch, after checking
        that they are known and agree on the shape."""
        by_shape = {p: [t for t, q in self.pair_of.items() if q == p] for p in (False, True)}
        branches = {p: self.model("pair_predict_request" if p else "text_predict_request", names, with_tasks=True)
                    for p, names in by_shape.items() if names}
        check = BeforeValidator(self.known_tasks)
        if len(branches) == 1:
            return Annotated[next(iter(branches.values())), check]
        tagged = Union[tuple(Annotated[m, Tag(str(p))] for p, m in branches.items())]
        return Annotated[tagged, Discriminator(self.shape_of), check]

    def shape_of(self, body: Any) -> str:
        tasks = body.get("tasks") if isinstance(body, dict) else None
        first = tasks[0] if isinstance(tasks, list) and tasks else None
        return str(self.pair_of.get(first, False)) if isinstance(first, str) else "False"

    def known_tasks(self, body: Any):
        tasks = body.get("tasks") if isinstance(body, dict) else None
        if not isinstance(tasks, list) or len(tasks) > len(self.pair_of):
            return body  # the model's own checks speak
        named = [t for t in tasks if isinstance(t, str)]
        unknown = [t for t in named if t not in self.pair_of]
        if unknown:
            raise PydanticCustomError("unknown_task", "unknown task {name}; known: {known}",
                                      {"name": repr(unknown[0])[:40], "known": ", ".join(self.pair_of)})
        pairs = [t for t in named if self.pair_of[t]]
        if pairs and len(pairs) < len(named):  # no input fits both: name the side the inputs miss
            inputs = body.get("inputs")
            as_pairs = any(isinstance(x, dict) and x.get("text_pair") is not None
                           for x in (inputs if isinstance(inputs, list) else [inputs]))
            names = [t for t in named if t not in pairs] if as_pairs else pairs
            shape_checks(names, not as_pairs, self.limits.max_items)(inputs)
        return body


class Request(Closed):
    def items(self) -> list[tuple[str, Optional[str]]]:
        raw = self.inputs if isinstance(self.inputs, list) else [self.inputs]
        return [(x, None) if isinstance(x, str) else (x.text, getattr(x, "text_pair", None)) for x in raw]

    def params(self) -> dict:
        """What the task's deployment needs besides the items (generation: max_new_tokens)."""
        return {}

    def respond(self, preds: list[dict]) -> list[dict]:
        """The predictions of ``items()``, as the task's answer lists them."""
        return preds
