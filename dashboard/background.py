"""A second asyncio loop in its own thread, where the UI runs its session (polls, drills).

Polling 100 agents is ~700 HTTP requests a cycle; on the UI's own loop their callbacks crowd the ready queue and
a key press waits behind them (measured: seconds). On their own loop the UI loop stays short and only receives
the finished results (Textual's post_message is thread-safe). The headless command needs none of this: it has
no UI to keep responsive.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self, name: str = "x0dash-poll") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """Started on first use, so an app that never polls (tests feeding recorded data) starts no thread."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self._loop

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the background loop; await it from another loop. Cancelling the awaiting task cancels
        the coroutine there too."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def call(self, fn: Callable[[], object]) -> None:
        """Call a plain function on the background loop (e.g. set an asyncio.Event that lives there)."""
        self.loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
