"""Bearer-token guard for the agent's mutating endpoints (drills).

- token configured (`X0_API_TOKEN`), request without it or with another one -> 401, the handler never runs (the
  guard runs before the body is even parsed, so a bad body without a token is still 401, not 400);
- no token configured -> 403 for every mutating request, with a message saying how to enable them. An agent
  must never run drills for whoever can reach its port.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

TOKEN_ENV = "X0_API_TOKEN"


def check_bearer(expected: str | None, authorization: str | None) -> None:
    """Raise the API error for this Authorization header, or return when it carries the expected token."""
    if not expected:
        raise PermissionDeniedException(
            detail=f"mutating endpoints are disabled on this agent: no API token is configured. Set {TOKEN_ENV} "
            f"in the agent's environment and send 'Authorization: Bearer <token>'"
        )
    if not authorization:
        raise NotAuthorizedException(
            detail="missing 'Authorization: Bearer <token>' header", headers={"WWW-Authenticate": "Bearer"}
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException(
            detail="Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise NotAuthorizedException(detail="wrong API token", headers={"WWW-Authenticate": "Bearer"})


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard: the agent's settings hold the token (`app.state.agent.settings.api_token`)."""
    check_bearer(connection.app.state.agent.settings.api_token, connection.headers.get("authorization"))
