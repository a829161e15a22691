"""Every error the API returns is `ErrorBody` JSON: `{"status_code": int, "detail": str}` (contracts §3).

Litestar's own exceptions (404 no route, 405 method, 400 validation, 413 body too large...) and ours all pass
through `http_exception_handler`; a validation error names the offending field in `detail`. Anything else is a
bug: it is logged with its traceback and answered 500 with the same shape, never an HTML page or a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from agent.mesh.schemas import ErrorBody

log = logging.getLogger("x0.api")


def _validation_detail(exc: ValidationException) -> str:
    extra = exc.extra if isinstance(exc.extra, list) else []
    problems: list[str] = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        key, source, message = item.get("key"), item.get("source"), item.get("message")
        # Litestar hands the source as a ParamType enum; operators should read "query", not "ParamType.QUERY".
        source = getattr(source, "value", source)
        where = f"{source} parameter {key!r}" if source and key else (f"field {key!r}" if key else "request")
        problems.append(f"{where}: {message}" if message else where)
    if problems:
        return "invalid " + "; invalid ".join(problems)
    return exc.detail or "invalid request"


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    detail = _validation_detail(exc) if isinstance(exc, ValidationException) else exc.detail
    return Response(
        ErrorBody(status_code=exc.status_code, detail=detail), status_code=exc.status_code, headers=exc.headers
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response(
        ErrorBody(status_code=HTTP_500_INTERNAL_SERVER_ERROR, detail=f"internal error: {type(exc).__name__}"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
