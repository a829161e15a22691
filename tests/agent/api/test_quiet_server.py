"""The agent's uvicorn server waits for its exit signal instead of polling a flag ten times a second (issue 10
item 1): a signal still ends it at once, and the Date header still moves on every second."""

from __future__ import annotations

import asyncio
import signal
import time

import uvicorn

from agent.api.server import QuietServer


async def app(scope: dict, receive: object, send: object) -> None:  # never called: no socket is served here
    raise AssertionError(scope)


def server(cls: type[QuietServer] = QuietServer) -> QuietServer:
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    config.load()
    return cls(config)


async def test_a_signal_ends_the_main_loop_at_once_not_at_the_next_second() -> None:
    s = server()
    loop_task = asyncio.create_task(s.main_loop())
    await asyncio.sleep(0.3)  # inside its one-second wait
    assert not loop_task.done()
    started = time.monotonic()
    s.handle_exit(signal.SIGTERM, None)
    await asyncio.wait_for(loop_task, 5)
    # uvicorn's loop would have looked at the flag within 0.1 s; this one would have slept until its second ended.
    assert time.monotonic() - started < 0.5


async def test_it_wakes_once_a_second_and_the_date_header_still_moves() -> None:
    ticks: list[int] = []

    class Counted(QuietServer):
        async def on_tick(self, counter: int) -> bool:
            ticks.append(counter)
            return await super().on_tick(counter)

    s = server(Counted)
    loop_task = asyncio.create_task(s.main_loop())
    try:
        await asyncio.sleep(0.1)
        first = dict(s.server_state.default_headers)[b"date"]
        await asyncio.sleep(2.5)
        # uvicorn's own loop: 25 ticks in 2.5 s.
        assert 2 <= len(ticks) <= 4, ticks
        assert dict(s.server_state.default_headers)[b"date"] != first
    finally:
        s.handle_exit(signal.SIGTERM, None)
        await asyncio.wait_for(loop_task, 5)
