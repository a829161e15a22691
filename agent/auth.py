"""Bearer-token guard for the agent's mutating endpoints (drills).

- token configured (`X0_API_TOKEN`), request without it or with another one -> 401, the handler never runs (the
  guard runs before the body is even parsed, so a bad body without a token is still 401, not 400);
- no token configured -> 403 for every mutating request, with a message saying how to enable them. An agent
  must never run drills for whoever can reach its port;
- the token never crosses the underlay in clear (issue 11): a mutating request is accepted over TLS (X0_TLS_CERT /
  X0_TLS_KEY), over the Yggdrasil overlay (both ends in 200::/7: the daemons encrypt it end to end), from
  loopback (it never left the host) or from an in-process client; a plain request over the underlay is refused
  with 403 saying how to fix it, unless X0_ALLOW_CLEAR_UNDERLAY is set (a mesh on one host: local-mesh sets it).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

TOKEN_ENV = "X0_API_TOKEN"
ALLOW_CLEAR_ENV = "X0_ALLOW_CLEAR_UNDERLAY"
# Yggdrasil's address range (node addresses 200::/8, subnets 300::/8): traffic there goes through the TUN and is
# encrypted end to end by the daemons.
OVERLAY_NET = ipaddress.ip_network("200::/7")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d
    return ip


def is_overlay(host: str) -> bool:
    ip = _ip(host)
    return isinstance(ip, ipaddress.IPv6Address) and ip in OVERLAY_NET


def is_loopback(host: str) -> bool:
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def clear_underlay_refusal(
    scheme: str, client: tuple[str, int] | None, server: tuple[str, int] | None, allow_clear: bool
) -> str | None:
    """Why a request carrying the token may not be served on this connection, or None when it may.

    Overlay means both ends are Yggdrasil addresses: the reply to a 200::/7 source goes back through the TUN, so
    a forged source on the underlay gets no answer, and the request itself arrived through the daemon.
    """
    if scheme in ("https", "wss") or allow_clear or client is None:
        return None
    host = client[0]
    if _ip(host) is None:  # not a network peer (in-process client, unix socket): nothing crossed a wire
        return None
    if is_loopback(host):
        return None
    if is_overlay(host) and (server is None or is_overlay(server[0])):
        return None
    where = f"{server[0]}:{server[1]}" if server else "this agent"
    return (
        f"refused: this request carries the API token in clear over the underlay (from {host} to {where}). "
        "Call the agent over TLS (start it with X0_TLS_CERT and X0_TLS_KEY, use https://) or over its Yggdrasil "
        f"overlay address (http://[200:…]:port, encrypted by the mesh); only for a mesh on one host set "
        f"{ALLOW_CLEAR_ENV}=true on the agent"
    )


def may_send_token(url: str, allow_clear: bool) -> bool:
    """The same rule from the caller's side: may a request carrying the token go to `url`? Over https, to an
    overlay or loopback address, or when the mesh is on one host (`allow_clear`). Callers (x0dash, an agent
    forwarding a write) check it before sending, so a refused token never leaves the host at all."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts.scheme == "https" or allow_clear or is_loopback(host) or is_overlay(host)


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


async def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard: the agent's settings hold the token (`app.state.agent.settings.api_token`); the
    connection must be one the token may travel on (`clear_underlay_refusal`)."""
    settings = connection.app.state.agent.settings
    if settings.api_token:
        scope = connection.scope
        refusal = clear_underlay_refusal(
            scope.get("scheme", "http"), scope.get("client"), scope.get("server"), settings.allow_clear_underlay
        )
        if refusal is not None:
            raise PermissionDeniedException(detail=refusal)
    check_bearer(settings.api_token, connection.headers.get("authorization"))
