"""`x0dash serve`: the same dashboard in a browser, through textual-serve (each browser tab runs its own x0dash
process with the options given before `serve`, so `--inventory` or `--nomad` sources suit it best: a `--local`
source would start one mesh per tab).

It binds 127.0.0.1 unless told otherwise. Any other address needs an access token in the URL, as Jupyter does
(`--token`, `$X0DASH_TOKEN`, or one made up and printed at start): whoever reaches the page can run drills, so a
request without the token is refused (403). The first page load with `?token=` sets a cookie, so the page's own
websocket (which carries no query) is let in too.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

COOKIE = "x0dash_token"


class ServeError(Exception):
    """The web view cannot start with these options; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


def access_token(host: str, given: str | None) -> str | None:
    """The token requests must carry: the one given, else (non-loopback only) a new random one."""
    if given is not None:
        if len(given) < 16:
            raise ServeError("--token must be at least 16 characters (it guards who can run drills)")
        return given
    return None if is_loopback(host) else secrets.token_urlsafe(24)


class DashServer(Server):
    def __init__(self, command: str, *, host: str, port: int, token: str | None, public_url: str | None = None):
        super().__init__(command, host=host, port=port, title="x0dash", public_url=public_url)
        self.token = token
        self._fixed_public_url = public_url is not None

    def url(self) -> str:
        """Where to point a browser (with the token)."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        base = self.public_url if self._fixed_public_url else f"http://{host}:{self.port}"
        return base + "/" + (f"?token={self.token}" if self.token else "")

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._check_token)
        return app

    @web.middleware
    async def _check_token(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.token is None:
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.Response(
                status=403,
                text="x0dash: this dashboard needs its access token: open the URL x0dash serve printed "
                "(…/?token=…)\n",
            )
        response = await handler(request)
        if request.query.get("token") and isinstance(response, web.Response):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        # textual-serve builds the page's URLs from its bind address; behind 0.0.0.0 the browser must use the
        # address it actually reached us at.
        base = self.public_url if self._fixed_public_url else f"{request.scheme}://{request.host}"
        static = base + str(request.app.router["static"].url_for(filename="/")).rstrip("/") + "/"
        ws = base + str(request.app.router["websocket"].url_for())
        ws = ("wss:" if base.startswith("https") else "ws:") + ws.split(":", 1)[1]
        return {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": ws,
            "config": {"static": {"url": static}},
            "application": {"name": self.title},
        }

    async def on_startup(self, app: web.Application) -> None:
        self.console.print(f"x0dash web view: {self.url()}")
        self.console.print("Ctrl-C stops it (and every dashboard it started).")
