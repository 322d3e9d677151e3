"""Errors as RFC 9457 problem+json, so every client gets the same machine-readable shape."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, instance: str, **extra: object) -> JSONResponse:
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status, "detail": detail,
                               "instance": instance, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


_RFC9110_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content"}


def _title(status: int) -> str:
    """The standard reason phrase, e.g. 404 -> "Not Found"; RFC 9110's names where Python has older ones."""
    if status in _RFC9110_PHRASES:
        return _RFC9110_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = problem(exc.status_code, _title(exc.status_code), str(exc.detail), request.url.path)
        response.headers.update(exc.headers or {})  # keeps WWW-Authenticate on 401, Retry-After on 429
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(error["loc"]), "msg": error["msg"]} for error in exc.errors()]
        return problem(422, "Unprocessable Content", "the request is invalid", request.url.path, errors=errors)
