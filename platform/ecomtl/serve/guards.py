"""The edge of the HTTP app, one ASGI middleware in front of FastAPI: every response gets
the bundle version header; unexpected errors become a JSON 500 (never a
traceback); then, in order, API-key auth, admission (a bound on requests in flight: JSON
503 with Retry-After beyond it) and the body size limit (JSON 413, also for chunked
bodies without Content-Length). Each answer is counted there too (serve/metrics.py)."""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path
from typing import Optional

from ecomtl.serve import metrics
from ecomtl.serve.errors import error_body, request_id
from ecomtl.serve.schemas import AuthArgs

log = logging.getLogger("ray.serve")
OPEN_PATHS = {"/healthz", "/readyz"}  # probes need no key


def read_keys(auth: AuthArgs) -> list[bytes]:
    """Keys from the environment variable and/or file; none found with a source given is
    an error (a typo must not open the service)."""
    raw = []
    if auth.api_keys_env:
        raw += os.environ.get(auth.api_keys_env, "").replace(",", "\n").splitlines()
    if auth.api_keys_file:
        raw += Path(auth.api_keys_file).expanduser().read_text().splitlines()
    keys = [k.strip().encode() for k in raw if k.strip() and not k.strip().startswith("#")]
    if auth.enabled and not keys:
        raise ValueError(f"auth: no API key in {auth.api_keys_env or ''} {auth.api_keys_file or ''}".strip())
    return keys


def route_path(scope) -> str:
    """The path below the app's route prefix (Serve passes the full path and the prefix
    as ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def presented_key(headers: list[tuple[bytes, bytes]]) -> Optional[bytes]:
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            return value[7:].strip()
        if name == b"x-api-key":
            return value.strip()
    return None


def key_ok(given: Optional[bytes], keys: list[bytes]) -> bool:
    """Constant time in the key's content; every key is compared (no early exit)."""
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given or b"", k)
    return ok and given is not None


class Edge:
    def __init__(self, app, *, version: str, keys: list[bytes], max_in_flight: int, retry_after_s: int,
                 max_body_bytes: int, tasks: list[str]):
        self.app, self.version, self.keys, self.tasks = app, version, keys, tasks
        self.max_in_flight, self.retry_after_s, self.max_body_bytes = max_in_flight, retry_after_s, max_body_bytes
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # every answer, refusals at the edge included, is counted once it has been sent
        req = metrics.start(route_path(scope), self.tasks)

        async def watched(message):
            if message["type"] == "http.response.start":
                req.status = message["status"]
            await send(message)

        try:
            await self.handle(scope, receive, watched)
        finally:
            metrics.finish(req)

    async def handle(self, scope, receive, send):
        rid = request_id()
        # (Serve's proxy adds X-Request-Id itself)
        extra = [(b"x-bundle-version", self.version.encode())]
        started = False

        async def send_tagged(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", [])) +
                           [(k, v) for k, v in extra if k not in names]}
            await send(message)

        async def refuse(status: int, code: str, message: str, headers=()):
            body = json.dumps(error_body(code, message)).encode()
            await send_tagged({"type": "http.response.start", "status": status,
                               "headers": [(b"content-type", b"application/json"),
                                           (b"content-length", str(len(body)).encode()), *headers]})
            await send_tagged({"type": "http.response.body", "body": body})

        try:
            needs_key = self.keys and route_path(scope) not in OPEN_PATHS
            if needs_key and not key_ok(presented_key(scope["headers"]), self.keys):
                return await refuse(401, "unauthorized", "a valid API key is required: "
                                                         "'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                    [(b"www-authenticate", b"Bearer")])
            if self.in_flight >= self.max_in_flight:
                return await refuse(503, "overloaded", f"the service is at its limit of {self.max_in_flight} "
                                                       f"requests in flight; retry later",
                                    [(b"retry-after", str(self.retry_after_s).encode())])
            self.in_flight += 1
            metrics.in_flight(self.in_flight)
            try:
                body = await self.read_body(scope, receive)
                if body is None:
                    return await refuse(413, "body_too_large", f"request body over {self.max_body_bytes} bytes")
                await self.app(scope, replay(body, receive), send_tagged)
            finally:
                self.in_flight -= 1
                metrics.in_flight(self.in_flight)
        except Exception:
            log.exception("unexpected error (request %s)", rid)
            if not started:
                await refuse(500, "internal_error", f"internal error; the replica log has the details "
                                                    f"under request id {rid}")

    async def read_body(self, scope, receive) -> Optional[bytes]:
        """The whole body, or None when it is over the limit (refused before reading it
        when Content-Length says so)."""
        for name, value in scope["headers"]:
            if name == b"content-length" and value.strip().isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnect: let the app see it
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def replay(body: bytes, receive):
    sent = False

    async def again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
