"""One JSON error shape for every 4xx/5xx, the one OpenAI's API uses:
{"error": {"message", "type", "param", "code"}} - so the official client parses ours too."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


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
        loc = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        param = ".".join(loc) or None
        msg = f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
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

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind, None), status_code=e.status_code)
