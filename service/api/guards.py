"""The HTTP surface around the pipeline: the FastAPI app, its error mapping and its guards.

Every failure leaves as `{"error": {"code", "message"}}`: our own ServiceErrors, FastAPI's
validation errors (missing or malformed fields), unknown routes, and anything unexpected
(logged with its traceback, answered as a 500 without internals).
"""

from __future__ import annotations

import asyncio
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from ..errors import ServiceError, code_for_status, error_body, error_response
from ..ids import new_id
from ..serving.live_stats import LIVE

log = logging.getLogger(__name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
INFERENCE_PATHS = ("/classify", "/classify_batch")
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the image bytes


def request_id_of(request: Request) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.match(given) else new_id()


def rejected(error: ServiceError) -> JSONResponse:
    metrics.REJECTED.labels(code=error.code).inc()
    LIVE.error(error.code)
    return error_response(error)


def validation_error(exc: RequestValidationError) -> ServiceError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    if field == "top_k":
        return ServiceError("invalid_top_k", f"top_k: {first.get('msg', 'invalid')}")
    if first.get("type") == "missing":
        return ServiceError("missing_field", f"missing required field {field!r}")
    return ServiceError("invalid_field", f"{field}: {first.get('msg', 'invalid value')}")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return rejected(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return rejected(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI wraps errors raised while it parses the body (e.g. our size guard).
        if isinstance(exc.__cause__, ServiceError):
            return rejected(exc.__cause__)
        if exc.status_code == 400:
            error = ServiceError("invalid_field", f"malformed request body: {exc.detail}")
            return rejected(error)
        code = code_for_status(exc.status_code)
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        metrics.REJECTED.labels(code="internal_error").inc()
        LIVE.error("internal_error")
        return JSONResponse(
            error_body("internal_error", "unexpected server error; it has been logged"), 500
        )


# A refused body is read to its end before the answer, up to this size and time, so that a client
# that sends the whole body before it reads (Python's urllib) gets the answer instead of a
# connection reset. Before, not after: once the answer is sent, uvicorn hands the app no more of
# the body. A body beyond these bounds is left unread and the connection closed.
DISCARD_MAX_BYTES = 64 * 1024 * 1024
DISCARD_MAX_S = 10.0


async def discard_body(receive: Receive, declared: bytes | None) -> None:
    if declared is not None and (not declared.isdigit() or int(declared) > DISCARD_MAX_BYTES):
        return
    discarded = 0
    try:
        async with asyncio.timeout(DISCARD_MAX_S):
            while discarded <= DISCARD_MAX_BYTES:
                message = await receive()
                if message["type"] != "http.request":  # the client went away
                    return
                discarded += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
    except TimeoutError:
        return


class RequestGuard:
    """ASGI middleware that refuses what must not reach the parser, before reading the body.

    - an overloaded batcher: 503 + Retry-After at once, so excess load costs almost nothing.
      The request is routed here, so that it is the batcher of the variant that will answer
      (pipeline.admit); the route handler finds the choice in `request.state.variant`, and the
      client key it was made by (read only from a trusted header) in `.client_key`;
    - a declared or streamed body over the limit: 413, without buffering the rest;
    - an empty body: 400 empty_body.

    A refusal made here reads the refused body to its end and drops it (`discard_body`) before
    it answers, unless the client asked `Expect: 100-continue`. An overload refusal is held
    `refusal_delay_s` first (at most its Retry-After): a refusal is cheap, but a client that
    retries the moment it gets one makes them as fast as the event loop can answer, and the
    loop is the one that must also feed the model. Held, each such client costs a timer.
    """

    def __init__(
        self,
        app: ASGIApp,
        pipeline_getter,
        max_body_bytes: dict[str, int],
        client_key_header: str,
        refusal_delay_s: float = 0.0,
    ):
        self.app = app
        self.refusal_delay_s = refusal_delay_s
        self.pipeline_getter = pipeline_getter
        self.max_body_bytes = max_body_bytes
        # None: no header is trusted to carry a client key (experiment.client_key_header "").
        self.client_key_header = client_key_header.lower().encode("latin-1") or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes[path]
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        try:
            client_key = None
            if self.client_key_header:
                client_key = headers.get(self.client_key_header, b"").decode("latin-1") or None
            variant = self.pipeline_getter().admit(1, client_key)
            scope.setdefault("state", {}).update(variant=variant.name, client_key=client_key)
            if declared is None and b"transfer-encoding" not in headers:
                # HTTP/1.1: no length and no chunking means no body at all.
                raise ServiceError("empty_body", "the request body is empty")
            if declared is not None:
                if not declared.isdigit():
                    raise ServiceError("invalid_field", "Content-Length is not a number")
                if int(declared) == 0:
                    raise ServiceError("empty_body", "the request body is empty")
                if int(declared) > limit:
                    raise ServiceError(
                        "payload_too_large",
                        f"request body is {int(declared)} bytes; the limit is {limit}",
                    )
        except ServiceError as error:
            if b"expect" not in headers:  # `Expect: 100-continue` clients read the answer first
                await discard_body(receive, declared)
            if error.code == "overloaded" and self.refusal_delay_s:
                await asyncio.sleep(min(self.refusal_delay_s, error.retry_after or 1))
            await rejected(error)(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ServiceError(
                        "payload_too_large", f"request body exceeds the limit of {limit} bytes"
                    )
            return message

        await self.app(scope, counting_receive, send)
