"""A mesh of real `agent.mapek.swim.protocol.Swim` members on a simulated network (discrete events, no sockets).

Every member runs the exact protocol code the agents run; only time and the network are simulated: each datagram
arrives after a latency drawn from `latency` (seconds), or is lost. Faults: `blackhole(node)` drops the node's
mesh traffic both ways (its underlay still answers, as in a drill), `kill(node)` drops everything, `slow(node, s)`
delays everything the node sends and receives (a starved event loop), `restore(node)` ends any of them.
Watched sets are `agent.topology.watch_sets` of `plan_links(ids, topology)`, as in the agent.

Used by tests/mapek/test_swim_sim.py (small meshes) and bench/swim_sim.py (100 and 1,000 members, the README
table: awareness time and per-node message rate against N).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent import topology
from agent.mapek.swim.protocol import Message, Path, Send, Swim, SwimConfig, encode


def member_ids(n: int) -> list[str]:
    return [f"node-{i:04d}" for i in range(n)]


@dataclass
class Fault:
    mesh: bool = True  # mesh path dropped
    underlay: bool = False  # underlay path dropped too (node loss)
    delay_s: float = 0.0  # extra delay both ways (slow node)


@dataclass
class Traffic:
    messages: int = 0
    bytes: int = 0


@dataclass
class MeshSim:
    n: int
    topology: topology.Topology = "auto"
    config: SwimConfig = field(default_factory=SwimConfig)
    latency: tuple[float, float] = (0.001, 0.010)
    loss: float = 0.0
    seed: int = 1
    start: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.now = self.start
        self.ids = member_ids(self.n)
        self.links = topology.plan_links(self.ids, self.topology)
        self.nodes: dict[str, Swim] = {}
        watching = topology.watch_sets(self.ids, topology.adjacency(self.links))
        for i in self.ids:
            s = Swim(i, self.ids, self.config, now=self.now, rng=random.Random(self.rng.random()))
            s.underlay = set(self.ids) - {i}
            s.set_watched(watching[i], self.now)
            self.nodes[i] = s
        self.faults: dict[str, Fault] = {}
        self.sent: dict[str, Traffic] = {i: Traffic() for i in self.ids}
        self._events: list[tuple[float, int, str, object]] = []
        self._order = itertools.count()
        self._due: dict[str, float] = {}
        for i in self.ids:
            self._schedule(i)
        # every change of an observer's view: (time, observer, member)
        self.downs: list[tuple[float, str, str]] = []  # to suspect or dead
        self.ups: list[tuple[float, str, str]] = []  # to alive
        self.dead_declared: list[tuple[float, str, str]] = []  # (time, observer, member)

    # --- faults -------------------------------------------------------------------------------------------

    def blackhole(self, node: str) -> None:
        self.faults[node] = Fault(mesh=True)

    def kill(self, node: str) -> None:
        self.faults[node] = Fault(mesh=True, underlay=True)

    def slow(self, node: str, delay_s: float) -> None:
        self.faults[node] = Fault(mesh=False, delay_s=delay_s)

    def restore(self, node: str) -> None:
        self.faults.pop(node, None)
        self._schedule(node)

    # --- running ------------------------------------------------------------------------------------------

    def _schedule(self, node: str) -> None:
        due = max(self.now, self.nodes[node].next_due())
        if self._due.get(node) is None or due < self._due[node] - 1e-9 or self._due[node] < self.now:
            self._due[node] = due
            heapq.heappush(self._events, (due, next(self._order), "tick", node))

    def _down(self, node: str, path: Path) -> bool:
        f = self.faults.get(node)
        if f is None:
            return False
        return f.underlay or (path == "mesh" and f.mesh)

    def _send(self, src: str, sends: Iterable[Send]) -> None:
        for s in sends:
            size = len(encode(s.message))
            t = self.sent[src]
            t.messages += 1
            t.bytes += size
            if self._down(src, s.path) or self._down(s.to, s.path) or self.rng.random() < self.loss:
                continue
            delay = self.rng.uniform(*self.latency)
            for end in (src, s.to):
                f = self.faults.get(end)
                if f is not None:
                    delay += f.delay_s
            event = (s.to, src, s.path, s.message)
            heapq.heappush(self._events, (self.now + delay, next(self._order), "msg", event))

    def _after(self, node: str) -> None:
        swim = self.nodes[node]
        for ch in swim.take_changes():
            if ch.new in ("suspect", "dead") and ch.old not in ("suspect", "dead"):
                self.downs.append((ch.at, node, ch.member))
            elif ch.new == "alive":
                self.ups.append((ch.at, node, ch.member))
            if ch.new == "dead":
                self.dead_declared.append((ch.at, node, ch.member))
        swim.take_results()
        self._schedule(node)

    def run_until(self, t: float) -> None:
        while self._events and self._events[0][0] <= t:
            at, _, kind, payload = heapq.heappop(self._events)
            self.now = at
            if kind == "tick":
                node = payload  # type: ignore[assignment]
                assert isinstance(node, str)
                if self._due.get(node) is None or abs(self._due[node] - at) > 1e-9:
                    continue  # superseded
                self._due[node] = None  # type: ignore[assignment]
                if self.faults.get(node, Fault(mesh=False)).underlay:
                    self._schedule_later(node)
                    continue  # a dead node does nothing
                self._send(node, self.nodes[node].tick(at))
                self._after(node)
            else:
                to, src, path, msg = payload  # type: ignore[misc]
                message: Message = msg
                self._send(to, self.nodes[to].receive(at, src, path, message))
                self._after(to)
        self.now = t

    def _schedule_later(self, node: str) -> None:
        self._due[node] = self.now + 0.1
        heapq.heappush(self._events, (self.now + 0.1, next(self._order), "tick", node))

    # --- measures -----------------------------------------------------------------------------------------

    @staticmethod
    def first_after(events: list[tuple[float, str, str]], member: str, since: float) -> dict[str, float]:
        """Per observer: the first time at or after `since` it recorded an event about `member`. One pass over the
        events (a scan per observer is O(N x events): minutes at 1,000 members)."""
        first: dict[str, float] = {}
        for t, obs, m in events:
            if m == member and t >= since and (obs not in first or t < first[obs]):
                first[obs] = t
        return first

    def awareness(self, member: str, since: float) -> dict[str, float | None]:
        """Per observer (every other node not faulted): seconds from `since` until it first held `member`
        suspect or dead, or None."""
        first = self.first_after(self.downs, member, since)
        return {
            obs: (first[obs] - since if obs in first else None)
            for obs in self.ids
            if obs != member and obs not in self.faults
        }

    def recovered(self, member: str, since: float) -> dict[str, float | None]:
        first = self.first_after(self.ups, member, since)
        return {
            obs: (first[obs] - since if obs in first and self.nodes[obs].state(member) == "alive" else None)
            for obs in self.ids
            if obs != member and obs not in self.faults
        }

    def reset_traffic(self) -> None:
        self.sent = {i: Traffic() for i in self.ids}
