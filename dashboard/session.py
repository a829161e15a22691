"""One dashboard session: a provider, the poller and what they add up to. Used the same way by the UI and
by headless drills, so both see the mesh through the same code.

`update()` is one refresh of the provider (in a thread: providers may block) followed by one poll cycle; it is
serialized, so however many callers ask, the agents see one cycle after the other.

A source that hears about changes (Nomad's event stream) calls the session's change listener from its own
thread; `wait_change()` is how the poll loop sleeps until the next interval *or* that change, whichever comes
first. It only shortens the sleep between cycles: cycles still never overlap.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import msgspec

from agent.auth import ALLOW_CLEAR_ENV
from dashboard.agent_client import TLS_CA_ENV, AgentClient
from dashboard.events import Event, view_events
from dashboard.models import AgentData, MeshView, merge
from dashboard.poller import Poller, PollResult
from dashboard.providers.base import Provider, SourceSnapshot


class MeshUpdate(msgspec.Struct, kw_only=True, frozen=True):
    view: MeshView
    events: list[Event]
    poll: PollResult | None
    # The agents' data as of this update, copied: the UI reads it on its own thread while the poller (on the
    # session's loop) goes on changing its own records.
    agents: dict[str, AgentData] = {}


def _copy(agent: AgentData) -> AgentData:
    return msgspec.structs.replace(
        agent,
        incidents=dict(agent.incidents),
        actions=dict(agent.actions),
        endpoint_errors=dict(agent.endpoint_errors),
    )


class MeshSession:
    def __init__(
        self,
        provider: Provider,
        *,
        timeout: float = 1.5,
        down_after: float = 10.0,
        metrics_every: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.clock = clock
        self.down_after = down_after
        self.client = AgentClient(timeout=timeout, ca_file=os.environ.get(TLS_CA_ENV) or None)
        self.poller = Poller(self.client, clock=clock, metrics_every=metrics_every)
        self.view: MeshView | None = None
        self.snapshot: SourceSnapshot | None = None
        self.listeners: list[Callable[[MeshUpdate], None]] = []
        self._lock = asyncio.Lock()
        self.started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None  # set by the source's change listener, cleared per refresh
        self.source_changes = 0  # change notifications received (diagnostics, tests)
        self._pending_events: list[Event] = []  # told between polls (drill steps), handed out with the next update

    async def start(self) -> None:
        """Start the provider (may raise ProviderError, after cleaning up what it started)."""
        if self._changed is None:  # once per session: a retried start must not add a second listener
            self._loop = asyncio.get_running_loop()
            self._changed = asyncio.Event()
            # Registered before start(): the source may report a change while it starts.
            self.provider.add_change_listener(self._source_changed)
        await asyncio.to_thread(self.provider.start)
        self.started = True
        self.client.token = self._token()
        self.client.allow_clear = self._allow_clear()

    def _allow_clear(self) -> bool:
        # The source says the mesh is on one host (a local mesh's inventory), or the operator does.
        env = os.environ.get(ALLOW_CLEAR_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        return env or self.provider.allow_clear_underlay

    def _token(self) -> str | None:
        # The source's token (inventory, Nomad variable) wins; X0_API_TOKEN is for sources that do not know it.
        return self.provider.api_token or os.environ.get("X0_API_TOKEN") or None

    def _source_changed(self) -> None:
        """The source's change listener; called from the source's own thread."""
        loop, changed = self._loop, self._changed
        if loop is None or changed is None or loop.is_closed():
            return
        self.source_changes += 1
        try:
            loop.call_soon_threadsafe(changed.set)
        except RuntimeError:  # the loop closed between the check and the call (session shutting down)
            pass

    async def wait_change(self, within_s: float) -> bool:
        """Sleep up to `within_s`, less if the source reports a change (or already did since the last
        refresh began). True when woken by a change."""
        changed = self._changed
        if changed is None:
            await asyncio.sleep(max(0.0, within_s))
            return False
        try:
            async with asyncio.timeout(max(0.0, within_s)):
                await changed.wait()
        except TimeoutError:
            return False
        return True

    def add_event(self, event: Event) -> None:
        """An event for the log that no poll produces (a drill step); it goes out with the next update."""
        self._pending_events.append(event)

    async def close(self) -> None:
        await self.client.aclose()
        # stop() is also due after a failed start: the provider may have half-started something.
        await asyncio.to_thread(self.provider.stop)

    async def _refresh_source(self) -> SourceSnapshot:
        try:
            snap = await asyncio.to_thread(self.provider.refresh)
        except Exception as exc:  # a provider must not raise here; if it does, keep going on the last list
            last = self.snapshot
            snap = SourceSnapshot(
                source=last.source if last else self.provider.name,
                ok=False,
                detail=f"refresh failed: {type(exc).__name__}: {exc}",
                nodes=last.nodes if last else [],
                planned_links=last.planned_links if last else [],
                taken_at=self.clock(),
            )
        if not self.client.token:
            self.client.token = self._token()
        self.client.allow_clear = self._allow_clear()
        return snap

    async def update(self) -> MeshUpdate:
        async with self._lock:
            if self._changed is not None:
                self._changed.clear()  # this refresh reads the change; later ones wake the next cycle
            snap = self.snapshot = await self._refresh_source()
            poll = await self.poller.poll(snap.nodes)
            now = self.clock()
            view = merge(
                snap,
                self.poller.agents,
                now,
                polled_at=poll.finished_at,
                poll_duration_s=poll.duration_s,
                down_after=self.down_after,
                drill_lease=self.poller.lease,
            )
            events = view_events(self.view, view) + poll.events + self._pending_events
            self._pending_events = []
            events.sort(key=lambda e: e.at)
            self.view = view
            update = MeshUpdate(
                view=view, events=events, poll=poll, agents={k: _copy(v) for k, v in self.poller.agents.items()}
            )
        for listener in list(self.listeners):
            listener(update)
        return update
