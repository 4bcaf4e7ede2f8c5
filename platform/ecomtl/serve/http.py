"""The HTTP face: FastAPI routes on the Ingress deployment, and one JSON error shape.

Every refusal is ``{"error": {"code", "message", "details"?}}`` with a 4xx status:
400 malformed_json / invalid_utf8, 404 unknown_task / not_found, 413 too_many_items /
text_too_long, 422 invalid_request / empty_text / pair_required / pair_not_accepted.
A 500 would be a bug: it still answers JSON, and the replica keeps serving.
"""

# No `from __future__ import annotations` here: Serve's class-based view re-reads the
# route signatures, and string annotations would turn the JSON bodies into query params.

import asyncio
import logging

from fastapi import FastAPI, Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException  # FastAPI's subclasses it; routing raises this one
from starlette.requests import Request

from ecomtl.model.predictor import InputError, Limits, Preprocessor
from ecomtl.serve.deployments import load_tokenizer, read_spec, replica_died, with_retry
from ecomtl.serve.schemas import (ErrorResponse, PredictRequest, PredictResponse, TaskRequest, TaskResponse,
                                  TasksResponse, task_infos)
from ecomtl.tasks import TASK_HEADS

log = logging.getLogger("ray.serve")
ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
          422: {"model": ErrorResponse}}

api = FastAPI(title="ecomtl", version="1", description="Multi-task e-commerce text models: one shared encoder, "
                                                        "one autoscaling deployment per task head.")


def error(status: int, code: str, message: str, details=None) -> JSONResponse:
    body = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse(status_code=status, content={"error": body})


@api.exception_handler(InputError)
async def _input_error(request: Request, exc: InputError):
    return error(exc.status, exc.code, exc.message)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    errs = exc.errors()
    bad_json = [e for e in errs if e.get("type") == "json_invalid"]
    if bad_json:
        e = bad_json[0]
        return error(400, "malformed_json", f"request body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])} "
                                            f"at character {e['loc'][-1]}")
    details = [{"field": ".".join(str(x) for x in e["loc"]), "problem": e["msg"]} for e in errs]
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5])
    return error(422, "invalid_request", f"invalid request: {summary}", details)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException):
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):  # FastAPI hides it behind a generic 400
        return error(400, "invalid_utf8", f"request body is not UTF-8: byte {cause.start} "
                                          f"({cause.object[cause.start:cause.start + 1]!r}) cannot be decoded")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error(exc.status_code, code, str(exc.detail))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception):
    log.exception("unexpected error")
    return error(500, "internal_error", f"{type(exc).__name__}: {exc}")


@serve.deployment
@serve.ingress(api)
class Ingress:
    def __init__(self, bundle: str, heads: dict, encoder, limits: Limits):
        self.spec = read_spec(bundle)
        self.pre = Preprocessor(load_tokenizer(bundle), self.spec, limits)
        self.heads, self.encoder = heads, encoder  # encoder is None in the naive layout
        self.info = TasksResponse(tasks=task_infos(self.spec), max_items=limits.max_items,
                                  max_text_chars=limits.max_text_chars)

    @api.get("/healthz", summary="liveness: the app is up and knows its tasks")
    async def health(self) -> dict:
        return {"status": "ok", "tasks": len(self.spec["tasks"])}

    @api.get("/v1/tasks", response_model=TasksResponse, summary="tasks, head types, labels, input fields")
    async def tasks(self) -> TasksResponse:
        return self.info

    @api.post("/v1/tasks/{task}", response_model=TaskResponse, responses=ERRORS,
              summary="one task on one input or a list of inputs")
    async def predict_task(self, body: TaskRequest, task: str = PathParam(description="task name")) -> TaskResponse:
        items = body.items()
        self.pre.group([task], items)  # validation only: raises InputError
        preds = await with_retry(lambda: self.heads[task].predict.remote(items))
        return TaskResponse(task=task, predictions=preds)

    @api.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
              summary="several tasks on the same inputs; the encoder runs once per source")
    async def predict_many(self, body: PredictRequest) -> PredictResponse:
        items = body.items()
        groups = self.pre.group(body.tasks, items)
        if self.encoder is None:  # naive: every task deployment runs its own encoder
            calls = {t: with_retry(lambda t=t: self.heads[t].predict.remote(items)) for ts in groups.values() for t in ts}
        else:
            calls = {}
            for (source, route), names in groups.items():
                feats = self.pre.features(source, items)
                need_hidden = any(TASK_HEADS.get(self.spec["tasks"][t]["head"]).level == "token" for t in names)
                shared = self.encoder.remote(feats, route, need_hidden)  # one backbone call for all of them
                for t in names:
                    calls[t] = self._apply(t, shared, feats, route, need_hidden)
        results = await asyncio.gather(*calls.values())
        return PredictResponse(predictions=dict(zip(calls, results)))

    async def _apply(self, task: str, shared, feats, route: str, need_hidden: bool) -> list[dict]:
        """The head reads the encoder's result straight from the object store (the
        ingress never holds it); if a replica died, redo both calls."""
        try:
            return await self.heads[task].apply.remote(shared, feats)
        except Exception as err:
            if not replica_died(err):
                raise
            return await with_retry(lambda: self.heads[task].apply.remote(self.encoder.remote(feats, route, need_hidden), feats))
