"""`x0dash serve`: the same dashboard in a browser, through textual-serve (each browser tab runs its own x0dash
process with the options given before `serve`). A `--local` source is one mesh for the server, not one per tab:
`serve` starts it and every tab reads it through its inventory; it is stopped when serving stops (SIGINT,
SIGTERM, and SIGHUP: closing the terminal that runs `serve`).

It binds 127.0.0.1 unless told otherwise. Any other address needs an access token in the URL, as Jupyter does
(`--token`, `$X0DASH_TOKEN`, or one made up and printed at start): whoever reaches the page can run drills, so a
request without the token is refused (403). The first page load with `?token=` sets a cookie, so the page's own
websocket (which carries no query) is let in too.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

from dashboard.terminal import detach_terminal, terminal_alive

COOKIE = "x0dash_token"


class ServeError(Exception):
    """The web view cannot start with these options; the message says why and what to do."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


def check_port(host: str, port: int) -> None:
    """ServeError when host:port cannot be bound now (in use, or not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds: TIME_WAIT is no conflict
        try:
            probe.bind(addr)
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", port_in_use=True) from None


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
        self.stopped_by: signal.Signals | None = None

    def serve(self, debug: bool = False) -> None:
        """textual-serve's serve(), with SIGHUP too: closing the terminal that runs `serve` must stop it like
        SIGINT and SIGTERM do (the default action would kill it and leave its tabs and its mesh running)."""
        self.debug = debug
        self.initialize_logging()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_on, sig)
        try:
            web.run_app(
                self._make_app(),
                host=self.host,
                port=self.port,
                handle_signals=False,
                loop=loop,
                print=lambda *args: None,
            )
        finally:
            loop.close()

    def _stop_on(self, sig: signal.Signals) -> None:
        self.stopped_by = self.stopped_by or sig
        if sig == signal.SIGHUP and os.isatty(2) and not terminal_alive():
            detach_terminal()  # the tabs and the mesh are stopped next; nothing may block on the dead terminal
        self.request_exit()

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
        self.console.print("Ctrl-C stops it (and every dashboard it started, and a --local mesh).")
