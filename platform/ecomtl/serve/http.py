"""The HTTP face: the Ingress deployment and its FastAPI routes.

The FastAPI app is built on each replica (``__serve_build_asgi_app__``) from the bundle
it serves, so that the OpenAPI page names the real tasks and limits: one operation per
task with its own input shape, and /v1/predict with the task names as enums
(serve/inputs.py).
Error shape and codes: serve/errors.py; auth, admission, body limit, headers:
serve/guards.py. Each request has one deadline (``request_timeout_s``, retries included).
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures.

import asyncio
import logging
from typing import Awaitable, Callable, Optional, TypeVar

from fastapi import FastAPI
from ray import serve

from ecomtl.model.bundle import bundle_version
from ecomtl.model.predictor import Preprocessor
from ecomtl.serve import metrics
from ecomtl.serve.deployments import load_tokenizer, read_spec, replica_died, with_retry
from ecomtl.serve.errors import ServiceError, install_handlers
from ecomtl.serve.guards import Edge, read_keys
from ecomtl.serve.inputs import Shapes
from ecomtl.serve.schemas import AppArgs, ErrorResponse, PredictResponse, TaskResponse, TasksResponse, task_infos
from ecomtl.tasks import TASK_HEADS

log = logging.getLogger("ray.serve")
T = TypeVar("T")
ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 422, 503, 504)}


@serve.deployment
@serve.ingress()
class Ingress:
    def __init__(self, bundle: str, heads: dict, encoder, args: AppArgs):
        self.spec = read_spec(bundle)
        self.args, self.limits = args, args.limits
        self.pre = Preprocessor(load_tokenizer(bundle), self.spec, self.limits)
        self.heads, self.encoder = heads, encoder  # encoder is None in the naive layout
        self.version = bundle_version(bundle)
        self.decodes = {t: TASK_HEADS.get(s["head"]).needs_backbone for t, s in self.spec["tasks"].items()}
        self.keys = read_keys(args.auth)  # fail closed: no key found → the replica does not start
        self.info = TasksResponse(tasks=task_infos(self.spec), max_items=self.limits.max_items,
                                  max_text_chars=self.limits.max_text_chars, bundle_version=self.version)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    async def within_deadline(self, call: Callable[[], Awaitable[T]]) -> T:
        """The request's one deadline, and downstream refusals as JSON-able errors."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        retry = {"Retry-After": str(self.args.retry_after_s)}
        try:
            out = await asyncio.wait_for(call(), self.args.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(504, "timeout", f"no answer within {self.args.request_timeout_s} s") from None
        except BackPressureError:
            raise ServiceError(503, "overloaded", "a deployment's queue is full; retry later", retry) from None
        except DeploymentUnavailableError:
            raise ServiceError(503, "unavailable", "a deployment is not available; retry later", retry) from None
        except Exception as err:
            if replica_died(err):  # after the retries
                raise ServiceError(503, "unavailable", "replicas kept failing; retry later", retry) from None
            raise
        return out

    async def predict_task(self, task: str, items: list, params: Optional[dict] = None) -> TaskResponse:
        """``params``: the request's settings for the head (generation: max_new_tokens)."""
        self.pre.group([task], items)  # validation only: raises InputError
        preds = await self.within_deadline(lambda: with_retry(lambda: self.heads[task].predict.remote(items, params)))
        return TaskResponse(task=task, predictions=preds)

    async def predict_many(self, tasks: list[str], items: list) -> PredictResponse:
        metrics.note_tasks(dict.fromkeys(tasks))  # counted per task it names
        groups = self.pre.group(tasks, items)
        return await self.within_deadline(lambda: self._predict_many(groups, items))

    async def _predict_many(self, groups: dict, items: list) -> PredictResponse:
        if self.encoder is None:  # naive: every task deployment runs its own encoder
            calls = {t: with_retry(lambda t=t: self.heads[t].predict.remote(items)) for ts in groups.values() for t in ts}
        else:
            calls = {}
            for (source, route), names in groups.items():
                decoding = [t for t in names if self.decodes[t]]  # they run their own whole model
                for t in decoding:
                    calls[t] = with_retry(lambda t=t: self.heads[t].predict.remote(items))
                names = [t for t in names if t not in decoding]
                if not names:
                    continue
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

    async def ready(self) -> dict:
        """One real prediction through a head (and the encoder behind it)."""
        task = next((t for t in self.spec["tasks"] if not self.decodes[t]), next(iter(self.spec["tasks"])))
        probe = ("ready", "ready") if self.pre.task_kind(task) == "pair" else ("ready", None)
        try:
            await asyncio.wait_for(self.heads[task].predict.remote([probe], {"max_new_tokens": 1}),
                                   min(10.0, self.args.request_timeout_s))
        except Exception as err:
            log.warning("readiness probe failed: %s", type(err).__name__)
            raise ServiceError(503, "not_ready", "the model is not answering yet",
                               {"Retry-After": str(self.args.retry_after_s)}) from None
        return {"status": "ready", "bundle_version": self.version}


def build_api(ing: Ingress) -> FastAPI:
    shapes = Shapes({t: ing.pre.task_kind(t) == "pair" for t in ing.spec["tasks"]}, ing.limits,
                    {t: (TASK_HEADS.get(spec["head"]), spec["options"]) for t, spec in ing.spec["tasks"].items()})
    api = FastAPI(title="ecomtl", version=ing.version,
                  description="Multi-task e-commerce text models: one shared encoder, one autoscaling deployment "
                              f"per task head. Bundle {ing.version}.")
    install_handlers(api, list(ing.spec["tasks"]))
    admitted = ing.args.ingress.ongoing + ing.args.ingress.queued
    api.add_middleware(Edge, version=ing.version, keys=ing.keys, max_in_flight=admitted,
                       retry_after_s=ing.args.retry_after_s, max_body_bytes=ing.args.body_limit,
                       tasks=list(ing.spec["tasks"]))

    @api.get("/healthz", summary="liveness: the app is up and knows its tasks")
    async def health() -> dict:
        return {"status": "ok", "tasks": len(ing.spec["tasks"])}

    @api.get("/readyz", responses={503: {"model": ErrorResponse}},
             summary="readiness: a probe prediction went through a head and the encoder")
    async def ready() -> dict:
        return await ing.ready()

    @api.get("/v1/tasks", response_model=TasksResponse, responses={401: {"model": ErrorResponse}},
             summary="tasks, head types, labels, input fields, limits, bundle version")
    async def tasks() -> TasksResponse:
        return ing.info

    # One operation per task, so that its input shape (one text or a pair) is in its schema.
    for info in ing.info.tasks:
        add_task_route(api, ing, info.name, shapes.task[info.name], f"{info.name}: {info.head} head on {info.input} input")

    @api.post("/v1/tasks/{task}", include_in_schema=False)
    async def unknown_task(task: str) -> None:
        ing.pre.task_source(task)  # raises the 404 naming the known tasks

    @api.post("/v1/predict", response_model=PredictResponse, responses=ERRORS,
              summary="several tasks on the same inputs; the encoder runs once per source")
    async def predict_many(body: shapes.predict) -> PredictResponse:
        return await ing.predict_many([t.value for t in body.tasks], body.items())

    return api


def add_task_route(api: FastAPI, ing: Ingress, task: str, model, summary: str) -> None:
    async def predict_task(body: model) -> TaskResponse:
        answer = await ing.predict_task(task, body.items(), body.params())
        return TaskResponse(task=task, predictions=body.respond(answer.predictions))

    api.post(f"/v1/tasks/{task}", response_model=TaskResponse, responses=ERRORS, summary=summary,
             operation_id=f"predict_{task}")(predict_task)
