"""One JSON error shape for every 4xx/5xx, the one OpenAI's API uses:
{"error": {"message", "type", "param", "code"}} - so the official client parses ours too."""

from __future__ import annotations

import logging
import re
from typing import Annotated

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("llmlab.server")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


def no_lone_surrogates(text: str) -> str:
    """A pydantic validator: JSON's "\\ud800" escape parses to a lone UTF-16 surrogate, which
    is no character and can't be encoded as UTF-8, so nothing downstream could use it."""
    try:
        text.encode("utf-8")  # at C speed; fails exactly on surrogates
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        raise ValueError(f"a lone UTF-16 surrogate (U+{ch:04X}) at character {e.start}") from None
    return text


# A request's free text: any string but one holding a lone surrogate.
Text = Annotated[str, AfterValidator(no_lone_surrogates)]


async def client_gone(request: Request) -> None:
    """Return once the client hangs up. For a route that has read its body, the next
    message is the disconnect; the work it started can then be cancelled."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def error_body(message: str, kind: str, param: str | None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*(?::| must| is| has)")


def _param_of(message: str) -> str | None:
    """Library errors start with the parameter they are about ("top_p must be ...")."""
    m = _FIELD.match(message)
    return m.group(1) if m else None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":  # loc holds a character offset, not a field
            at = first.get("loc", ("body", "?"))[-1]
            why = first.get("ctx", {}).get("error", "")
            msg = f"body: not valid JSON at character {at}: {why}"
            return JSONResponse(error_body(msg, "invalid_request_error", None), status_code=422)
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msg = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(msg, "invalid_request_error", param), status_code=422)

    @app.exception_handler(ValueError)
    async def _value(_: Request, e: ValueError) -> JSONResponse:
        msg = str(e)
        return JSONResponse(
            error_body(msg, "invalid_request_error", _param_of(msg)), status_code=400
        )

    @app.exception_handler(PermissionError)
    async def _perm(_: Request, e: PermissionError) -> JSONResponse:
        msg = str(e)
        return JSONResponse(error_body(msg, "permission_error", _param_of(msg)), status_code=403)

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        # A bug, not bad input: log the traceback, still answer in the one error shape.
        log.error("unhandled error", exc_info=e)
        msg = f"internal server error ({type(e).__name__}); the server log has the traceback"
        return JSONResponse(error_body(msg, "server_error", None), status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind, None), status_code=e.status_code)


def sse_error(e: BaseException) -> dict:
    """An error after a stream has started (its 200 is already sent) goes in the stream."""
    if isinstance(e, ValueError):
        return error_body(str(e), "invalid_request_error", _param_of(str(e)))
    log.error("error in a stream", exc_info=e)
    return error_body(f"internal server error ({type(e).__name__})", "server_error", None)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with a 413 in the usual
    error shape before any of it is read, so a huge POST can't fill memory. Bodies without a
    Content-Length (chunked) are counted as they arrive and cut off at the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            msg = f"body: larger than this server's limit of {self.limit} bytes"
            return await JSONResponse(
                error_body(msg, "invalid_request_error", None), status_code=413
            )(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ValueError(f"body: larger than this server's limit of {self.limit} bytes")
            return message

        await self.app(scope, counted, send)
