"""One JSON error shape for every refusal, and the mapping from what went wrong to it.

``{"error": {"code", "message", "request_id", "details"?, "more_details"?}}``:
400 malformed_json / invalid_utf8 / bad_request, 401 unauthorized, 404 unknown_task /
not_found, 405 method_not_allowed (with ``Allow``), 413 body_too_large / too_many_items /
text_too_long, 422 invalid_request / empty_inputs / empty_text / invalid_text /
pair_required / pair_not_accepted, 503 overloaded / unavailable (with ``Retry-After``),
504 timeout. Bodies are bounded (the first ``MAX_DETAILS`` errors, messages cut at
``MAX_MESSAGE``) and never carry tracebacks or paths: a 500 says only its request id,
the replica log has the rest.
"""

from __future__ import annotations

import logging
import uuid
from typing import Optional

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException  # FastAPI's subclasses it; routing raises this one
from starlette.requests import Request

from ecomtl.model.predictor import InputError
from ecomtl.serve import metrics

log = logging.getLogger("ray.serve")
MAX_DETAILS = 20
MAX_MESSAGE = 300


class ServiceError(Exception):
    """A refusal decided by the service itself (overload, deadline, auth)."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def request_id(scope_or_request=None) -> str:
    """Serve's id of this request (the proxy also returns it as ``X-Request-Id``)."""
    try:
        from ray.serve.context import _get_serve_request_context

        rid = _get_serve_request_context().request_id
        if rid:
            return rid
    except Exception:  # outside a replica (unit tests): any unique id will do
        pass
    return uuid.uuid4().hex


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def error_body(code: str, message: str, details: Optional[list] = None) -> dict:
    metrics.note_error(code)  # every refusal is built here: the request's metrics get its code
    body = {"code": code, "message": cut(message), "request_id": request_id()}
    if details:
        body["details"] = details[:MAX_DETAILS]
        if len(details) > MAX_DETAILS:
            body["more_details"] = len(details) - MAX_DETAILS
    return {"error": body}


def error(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(code, message, details), headers=headers)


# -- request validation: the first error of the most telling kind picks code and status --
# (pydantic type, where in the body) → (status, code); unions report every branch, so the
# order matters: a list over the limit also "is not a string".
#: the body fields that carry texts: ``inputs`` of most routes, a ranking route's
#: ``query`` and ``candidates``
TEXT_FIELDS = ("inputs", "query", "candidates")
KINDS = [
    ({"too_many_items", "too_long"}, TEXT_FIELDS, 413, "too_many_items"),
    ({"string_too_long"}, TEXT_FIELDS, 413, "text_too_long"),
    ({"unknown_task"}, None, 404, "unknown_task"),
    ({"pair_required"}, None, 422, "pair_required"),
    ({"pair_not_accepted"}, None, 422, "pair_not_accepted"),
    ({"too_short"}, TEXT_FIELDS, 422, "empty_inputs"),
    ({"string_too_short", "string_pattern_mismatch"}, TEXT_FIELDS, 422, "empty_text"),
    ({"invalid_text", "string_unicode"}, TEXT_FIELDS, 422, "invalid_text"),
]
MISMATCH = {"string_type", "model_type", "list_type", "dict_type", "model_attributes_type", "union_tag_invalid"}
FIELDS = {"text", "text_pair", "tasks", *TEXT_FIELDS}  # the rest of a loc names union branches


def field_name(loc) -> str:
    """``body.inputs.list[union[...]].0.str`` → ``inputs[0]``: the client's view."""
    parts = []
    for x in loc:
        if isinstance(x, int):
            parts.append(f"[{x}]")
        elif x in FIELDS:
            parts.append(("." if parts else "") + x)
    return "".join(parts) or "body"


def classify(errs: list[dict]) -> tuple[int, str]:
    for types, where, status, code in KINDS:
        for e in errs:
            if e.get("type") in types and (where is None or any(w in e.get("loc", ()) for w in where)):
                return status, code
    return 422, "invalid_request"


def validation_error(errs: list[dict], known_tasks: list[str]) -> JSONResponse:
    bad_json = [e for e in errs if e.get("type") == "json_invalid"]
    if bad_json:
        e = bad_json[0]
        why = e.get("ctx", {}).get("error", e["msg"])
        return error(400, "malformed_json", f"request body is not valid JSON: {why} at character {e['loc'][-1]}")
    status, code = classify(errs)
    details = [{"field": field_name(e.get("loc", ())), "problem": cut(str(e.get("msg", "")), 160)} for e in errs]
    # the error that picked the code speaks first
    # (for a plain invalid_request, an error past the union branches' type mismatches)
    i = next((i for i, e in enumerate(errs) if classify([e]) == (status, code) and e.get("type") not in MISMATCH),
             next((i for i, e in enumerate(errs) if classify([e]) == (status, code)), 0))
    lead, field = (errs[i], details[i]["field"]) if errs else ({}, "body")
    return error(status, code, MESSAGES.get(code, lambda f, e, _: f"{f}: {e.get('msg', 'invalid request')}")(
        field, lead, known_tasks), details)


def too_long_text(field: str, e: dict, _) -> str:
    n = len(e["input"]) if isinstance(e.get("input"), str) else "too many"
    return f"{field} has {n} characters; the limit is {e.get('ctx', {}).get('max_length')}"


MESSAGES = {
    "unknown_task": lambda f, e, known: e["msg"],
    "pair_required": lambda f, e, _: e["msg"],
    "pair_not_accepted": lambda f, e, _: e["msg"],
    "empty_inputs": lambda f, e, _: f"{f} is empty: give at least one input",
    "empty_text": lambda f, e, _: f"{f} is empty or only whitespace",
    "invalid_text": lambda f, e, _: f"{f} is not valid Unicode text (e.g. a lone surrogate such as \\ud800); "
                                    f"no tokenizer can encode it",
    "text_too_long": too_long_text,
}

def install_handlers(api: FastAPI, known_tasks: list[str]) -> None:
    @api.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return error(exc.status, exc.code, exc.message)

    @api.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return error(exc.status, exc.code, exc.message, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return validation_error(list(exc.errors()), known_tasks)

    @api.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):  # FastAPI hides it behind a generic 400
            return error(400, "invalid_utf8", f"request body is not UTF-8: byte {cause.start} "
                                              f"({cause.object[cause.start:cause.start + 1]!r}) cannot be decoded")
        if exc.status_code == 400 and cause is not None:  # nested too deep, a number too long, …
            return error(400, "malformed_json", "request body could not be read as JSON")
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        # 405 keeps Starlette's Allow header
        return error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))
