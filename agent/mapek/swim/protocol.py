"""SWIM membership with Lifeguard's refinements, without I/O: the part the transport and the simulator share.

SWIM (Das, Gupta, Motivala 2002) as hashicorp/memberlist runs it, with Lifeguard (Dadgar et al. 2018):
- Failure detection: each probe is a `Ping`; no `Ack` within the probe timeout -> `PingReq` to k other members,
  which ping the target for us and relay its ack, or answer a nack when they cannot reach it either. Only then
  is the target *suspected*. A prober that gets neither acks nor nacks from its helpers is probably the one cut
  off: it does not suspect anyone, and raises its local health score instead (Lifeguard), which stretches its
  own timeouts.
- Suspicion: a suspect becomes *dead* after a timeout that starts long and shrinks as independent members
  confirm the suspicion (Lifeguard: max..min by log(confirmations)), so one slow observer cannot kill a member
  and a real failure that every monitor sees is confirmed fast.
- Refutation: a member that hears it is suspected (or dead) at its current incarnation raises its incarnation and
  announces itself alive; the higher incarnation wins everywhere. Whoever pings a member it holds suspect puts
  that suspicion in the ping ("buddy system"), so the target refutes in its very ack.
- Dissemination: updates (alive/suspect/dead, incarnation) ride every ping and ack (piggyback), each sent at
  most `retransmit_mult * ceil(log10(n + 1))` times, fewest-sent first; news is also pushed at once to
  `gossip_fanout` random members, and left-over updates every `gossip_interval_s`. Each node's cost per event is
  O(fanout), so the mesh learns in O(log n) hops while per-node traffic stays flat in n.

What differs from memberlist, on purpose:
- Membership is static (the members file), so there is no join/leave: a member starts *joining* (never heard
  from), and is not suspected before `startup_grace_s`. Dead members keep being probed: a member that is back
  answers, learns it was declared dead, and refutes.
- Who is probed: the *watched* members (this node's planned neighbours and stand-ins, a fixed number) every
  probe interval, plus `rotation` other members every `rotation_every` intervals in a shuffled round robin
  (SWIM's time-bounded completeness). Both are O(1) per node; watching the neighbours bounds first detection by
  one interval plus the timeouts instead of SWIM's expected e/(e-1) intervals. A link's two ends watch each
  other, so a ping received from a watched member counts as our probe of it (an ok result, no round trip) and
  defers ours: each link is probed once per interval, by whichever end leads. When the leader's ping is overdue,
  the other end's probe asks the k helpers at once, beside its own ping: that lateness is already a missed round.
- Two paths: `mesh` (the Yggdrasil overlay, or the only path in a loopback mesh) carries all of the protocol;
  `underlay` pings, sent beside the indirect probes when the mesh path fails, only say whether the member's
  agent (and, from its ack, its daemon) is alive. They never carry membership updates: a blackholed member must
  not refute its suspicion over a path the mesh cannot use.
- A member about to fault itself on purpose (a drill) announces it: its alive update carries `drill_until`.

Usage: the owner calls `tick(now)` at `next_due()`, `receive(now, sender, path, message)` for each datagram,
and sends what both return (`Send`). `take_results()` hands over probe outcomes, `changes` records state
changes. Time is whatever clock the owner passes (monotonic in the agent, simulated in tests).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

State = Literal["joining", "alive", "suspect", "dead"]
Path = Literal["mesh", "underlay"]
STATES: tuple[State, ...] = ("joining", "alive", "suspect", "dead")
# Wire codes of the states an update can carry (joining is never sent: nobody vouches for it).
ALIVE, SUSPECT, DEAD = 0, 1, 2
_CODE_STATE: dict[int, State] = {ALIVE: "alive", SUSPECT: "suspect", DEAD: "dead"}
_STATE_CODE: dict[State, int] = {"alive": ALIVE, "suspect": SUSPECT, "dead": DEAD}
# A watched member's ping defers our own probe of it by an interval plus this fraction of one (plus as much
# again at random: two ends whose timers fire together drift apart instead of crossing pings forever).
PASSIVE_MARGIN = 0.1
# The end that lets the other lead still pings a watched member itself this often, so that every node has its own
# round trip to each neighbour (x0_member_rtt_seconds, the Node dashboard's latency panel): one ping per link per
# 30 s from the quiet end, against one per 0.4 s from the leading one.
OWN_RTT_EVERY_S = 30.0


class SwimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Timings and fan-outs; the defaults fit the 2 s awareness target on a loaded 2-core machine
    (bench/scale_bench.py)."""

    probe_interval_s: float = 0.4  # each watched link is pinged once per interval (by one of its ends)
    # Direct ack, before the helpers are asked: overlay round trips here are ~1-20 ms, loaded ~100 ms. A late
    # direct ack still counts until the indirect stage ends (every helper has nacked, ~0.47 s after the ping, else
    # 0.55 s; with 0.3 s it was 0.7 s). Under load no member was suspected with either
    # (bench/results/suspicions-under-load-2026-12-05.txt).
    probe_timeout_s: float = 0.15
    indirect_checks: int = 3  # k helpers asked to ping the target when the direct ping fails
    indirect_timeout_s: float = 0.4  # helpers answer a nack at 80 % of it
    rotation: int = 1  # members outside the watched set probed per rotation interval
    # Every member is watched by its neighbours each probe interval already; the rotation only keeps a path and an
    # RTT to the others and mixes the gossip, and at 20 nodes it still reaches each member ~1.3 times per second.
    rotation_every: int = 2  # probe intervals per rotation step
    suspicion_mult: float = 4.0  # min suspicion = mult * max(1, log10(n)) * interval (memberlist)
    suspicion_max_mult: float = 6.0  # max suspicion = max_mult * min
    gossip_interval_s: float = 0.2
    gossip_fanout: int = 3
    retransmit_mult: int = 4  # each update sent at most mult * ceil(log10(n + 1)) times
    max_updates: int = 12  # updates per message
    max_local_health: int = 4  # Lifeguard: timeouts are multiplied by (1 + score)
    startup_grace_s: float = 10.0  # a member never heard from is not suspected before this
    dead_gossip_s: float = 10.0  # keep gossiping to a member this long after it died (it may be back)
    anti_entropy: int = 2  # random alive entries added to each message with room left


# --- wire messages -------------------------------------------------------------------------------------------


class Update(msgspec.Struct, frozen=True, array_like=True):
    node: str
    state: int  # ALIVE | SUSPECT | DEAD
    inc: int
    by: str = ""  # who suspects / declared dead (Lifeguard counts independent confirmations)
    drill_until: float = 0.0  # alive updates about oneself: a drill faults this member until then (unix s)


class Ping(msgspec.Struct, frozen=True, array_like=True, tag="p"):
    seq: int
    src: str
    inc: int
    updates: list[Update] = []


class Ack(msgspec.Struct, frozen=True, array_like=True, tag="a"):
    seq: int
    src: str
    inc: int
    updates: list[Update] = []
    about: str = ""  # relayed by a helper: the member whose liveness this proves ("" = src itself)
    about_inc: int = 0
    nack: bool = False  # a helper could not reach the target
    daemon_up: bool | None = None  # the sender's own daemon answers its admin socket
    api: str | None = None  # the sender's daemon API ("0.4"/"0.5")


class PingReq(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    seq: int
    src: str
    inc: int
    target: str
    updates: list[Update] = []


class Gossip(msgspec.Struct, frozen=True, array_like=True, tag="g"):
    src: str
    inc: int
    updates: list[Update] = []


Message = Ping | Ack | PingReq | Gossip
MESSAGE_KINDS = ("ping", "ack", "nack", "ping_req", "gossip")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)
MAX_DATAGRAM = 8192


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Message:
    """Raises msgspec.DecodeError/ValidationError on anything that is not one of our messages."""
    return _decoder.decode(data)


def kind_of(message: Message) -> str:
    if isinstance(message, Ack):
        return "nack" if message.nack else "ack"
    return {Ping: "ping", PingReq: "ping_req", Gossip: "gossip"}[type(message)]


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    path: Path
    message: Message


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One finished probe of a member, for MAPE-K (agent.mapek.knowledge.Probe) and the metrics."""

    member: str
    path: Path
    ok: bool
    at: float
    rtt_s: float | None = None
    error: str | None = None
    daemon_up: bool | None = None
    api: str | None = None


@dataclass(frozen=True, slots=True)
class Change:
    member: str
    old: State
    new: State
    inc: int
    at: float
    by: str = ""


@dataclass
class MemberEntry:
    node: str
    state: State = "joining"
    inc: int = 0
    since: float = 0.0  # when the state last changed
    by: str = ""  # first suspecter / who declared it dead
    confirmations: set[str] = field(default_factory=set)  # independent suspecters after the first
    suspect_deadline: float | None = None
    suspect_started: float | None = None
    drill_until: float = 0.0
    last_ack: float | None = None  # our own probe of it answered (directly or relayed), or it pinged us
    srtt_s: float | None = None  # smoothed round trip of our direct pings
    srtt_at: float | None = None  # when our last direct ping measured it
    fail_since: float | None = None  # our own probes have failed since


@dataclass
class _Probe:
    seq: int
    target: str
    started: float
    deadline: float
    stage: Literal["direct", "indirect"] = "direct"
    helpers: tuple[str, ...] = ()
    nacks: int = 0
    diag_seq: int | None = None  # the underlay ping sent beside the indirect probes
    diag_sent: float = 0.0  # when it was sent (after the direct timeout): its round trip counts from here
    diag: ProbeResult | None = None


@dataclass
class _Relay:
    requester: str
    seq: int  # the requester's probe seq
    target: str
    nack_at: float
    expires: float
    nacked: bool = False


@dataclass
class _Queued:
    update: Update
    sent: int = 0
    # First word of a member at incarnation 0: piggybacked, but never the reason for a gossip message.
    lazy: bool = False


@dataclass
class Counters:
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MESSAGE_KINDS, 0))
    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MESSAGE_KINDS, 0))
    suspicions: int = 0  # suspicions this node raised itself
    refutations: int = 0  # times this node refuted a suspicion about itself
    declared_dead: int = 0  # suspicions that expired here into dead


class Swim:
    def __init__(
        self,
        me: str,
        members: Iterable[str],
        config: SwimConfig | None = None,
        *,
        now: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.me = me
        self.config = config or SwimConfig()
        self.rng = rng or random.Random()
        self.inc = 0
        self.drill_until = 0.0
        self.local_health = 0
        self.started = now
        self.heard_at = now  # the last datagram any member sent us over the mesh path
        self.members: dict[str, MemberEntry] = {}
        self.watched: tuple[str, ...] = ()
        self.underlay: set[str] = set()  # members with an underlay path distinct from the mesh path
        self.daemon_up: bool | None = None  # our own daemon, reported in our acks
        self.api: str | None = None
        self.counters = Counters()
        self.changes: list[Change] = []
        self._results: list[ProbeResult] = []
        self._seq = self.rng.randrange(1 << 20)
        self._probes: dict[int, _Probe] = {}
        self._probing: dict[str, int] = {}  # target -> seq of its outstanding probe
        self._diags: dict[int, int] = {}  # underlay ping seq -> probe seq
        self._relays: dict[int, _Relay] = {}
        self._queue: dict[str, _Queued] = {}
        self._news = 0  # queued updates that are not lazy: periodic gossip runs while there are any
        # By times sent; news and lazy updates apart, so news never waits behind a startup's lazy backlog.
        self._buckets: list[dict[str, _Queued]] = [{}]
        self._lazy_buckets: list[dict[str, _Queued]] = [{}]
        self._suspects: set[str] = set()
        self._next_watch: dict[str, float] = {}
        # Watched members whose pings stand for our probes of them: when our probe comes due, theirs is overdue.
        self._passive: set[str] = set()
        self._rotation: list[str] = []
        self._next_rotation = now
        self._next_gossip = now + self.config.gossip_interval_s
        self._gossip_now = False
        self.set_members(members, now)
        self._enqueue(self._self_update())  # "I am here": rides the first pings and gossip

    # --- membership ---------------------------------------------------------------------------------------

    def set_members(self, members: Iterable[str], now: float) -> None:
        ids = [m for m in dict.fromkeys(members) if m != self.me]
        for gone in set(self.members) - set(ids):
            del self.members[gone]
            self._suspects.discard(gone)
            q = self._queue.pop(gone, None)
            if q is not None:
                del self._buckets_of(q)[q.sent][gone]
                self._news -= not q.lazy
            self._next_watch.pop(gone, None)
        for m in ids:
            if m not in self.members:
                self.members[m] = MemberEntry(node=m, since=now)
        self._ids = list(self.members)
        self._rotation = [m for m in self._rotation if m in self.members]
        self.set_watched(self.watched, now)

    def set_watched(self, watched: Iterable[str], now: float) -> None:
        """The members probed every interval (neighbours, stand-ins); phases spread over the interval."""
        new = tuple(m for m in dict.fromkeys(watched) if m in self.members)
        if new == self.watched:
            return
        self.watched = new
        interval = self.config.probe_interval_s
        for i, m in enumerate(new):
            if m not in self._next_watch:
                self._next_watch[m] = now + interval * (i + 1) / (len(new) + 1)
        for m in list(self._next_watch):
            if m not in new:
                del self._next_watch[m]
                self._passive.discard(m)

    def state(self, member: str) -> State:
        if member == self.me:
            return "alive"
        e = self.members.get(member)
        return e.state if e is not None else "dead"

    def count(self, state: State) -> int:
        return sum(1 for e in self.members.values() if e.state == state)

    def drilling(self, now_wall: float) -> dict[str, float]:
        """Members that announced a drill still running at `now_wall` (unix s), with its end."""
        out = {m: e.drill_until for m, e in self.members.items() if e.drill_until > now_wall}
        if self.drill_until > now_wall:
            out[self.me] = self.drill_until
        return out

    def pending_results(self) -> list[ProbeResult]:
        return self._results

    def cut_off(self, now: float) -> bool:
        """Nothing has reached us over the mesh for longer than a whole probe cycle, while there are members to
        hear from: this node is the one cut off (it suspects nobody for it, see `_probe_timeout`)."""
        c = self.config
        quiet = now - self.heard_at
        return bool(self.members) and quiet > (c.probe_interval_s + c.probe_timeout_s + c.indirect_timeout_s)

    def take_results(self) -> list[ProbeResult]:
        out, self._results = self._results, []
        return out

    def take_changes(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out

    @property
    def n(self) -> int:
        return len(self.members) + 1

    @property
    def pending_news(self) -> int:
        """Queued updates that keep periodic gossip going (lazy ones only ride the messages sent anyway)."""
        return self._news

    def retransmit_limit(self) -> int:
        return self.config.retransmit_mult * max(1, math.ceil(math.log10(self.n + 1)))

    def suspicion_bounds(self) -> tuple[float, float]:
        c = self.config
        low = c.suspicion_mult * max(1.0, math.log10(max(self.n, 1))) * c.probe_interval_s
        return low, low * c.suspicion_max_mult

    def _scale(self) -> float:
        return 1.0 + self.local_health

    # --- own announcements --------------------------------------------------------------------------------

    def announce_drill(self, until_wall: float, now: float) -> list[Send]:
        """This member is about to fault itself on purpose until `until_wall` (unix s): tell the mesh first."""
        self.drill_until = until_wall
        self.inc += 1
        self._enqueue(self._self_update())
        return self._gossip(now, force=True)

    def _self_update(self) -> Update:
        return Update(self.me, ALIVE, self.inc, "", self.drill_until)

    # --- time ---------------------------------------------------------------------------------------------

    def next_due(self) -> float:
        times = [self._next_rotation, self._next_gossip]
        times += [t for m, t in self._next_watch.items() if m not in self._probing]
        times += [p.deadline for p in self._probes.values()]
        times += [r.nack_at for r in self._relays.values() if not r.nacked]
        times += [r.expires for r in self._relays.values()]
        times += [d for m in self._suspects if (d := self.members[m].suspect_deadline) is not None]
        return min(times)

    def tick(self, now: float) -> list[Send]:
        out: list[Send] = []
        c = self.config
        for m, due in list(self._next_watch.items()):
            if due <= now:
                # Keep the phase; an overrun (loaded host) skips ahead instead of bursting to catch up.
                nxt = due + c.probe_interval_s * self._scale()
                self._next_watch[m] = nxt if nxt > now else now + c.probe_interval_s * self._scale()
                overdue = m in self._passive
                self._passive.discard(m)
                if m not in self._probing:
                    out += self._start_probe(m, now, overdue=overdue)
        if self._next_rotation <= now:
            self._next_rotation = now + c.probe_interval_s * c.rotation_every * self._scale()
            for m in self._rotation_pick(c.rotation):
                out += self._start_probe(m, now)
        for probe in list(self._probes.values()):
            if probe.deadline <= now:
                out += self._probe_timeout(probe, now)
        for hseq, relay in list(self._relays.items()):
            if not relay.nacked and relay.nack_at <= now:
                relay.nacked = True
                out.append(Send(relay.requester, "mesh", self._ack(relay.requester, relay.seq, nack=True)))
            if relay.expires <= now:
                del self._relays[hseq]
        for m in list(self._suspects):
            e = self.members[m]
            if e.suspect_deadline is not None and e.suspect_deadline <= now and e.state == "suspect":
                self.counters.declared_dead += 1
                self._set(e, "dead", e.inc, now, by=self.me)
                self._enqueue(Update(e.node, DEAD, e.inc, self.me))
                self._gossip_now = True
        if self._gossip_now or self._next_gossip <= now:
            out += self._gossip(now)
        return self._count(out)

    def _rotation_pick(self, count: int) -> list[str]:
        picked: list[str] = []
        # watched is a subset of members (set_watched): the pool's size without building it; the pool itself
        # only when the rotation is used up, so a pick is O(count), not O(members), amortized.
        for _ in range(min(count, len(self.members) - len(self.watched))):
            if not self._rotation:
                self._rotation = [m for m in self.members if m not in self.watched]
                self.rng.shuffle(self._rotation)
            m = self._rotation.pop()
            if m not in self._probing:
                picked.append(m)
        return picked

    # --- probing ------------------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _start_probe(self, target: str, now: float, *, overdue: bool = False) -> list[Send]:
        """`overdue`: the member leads the probes of our link and its ping is late, which is already a missed
        round: the helpers are asked at once, beside our direct ping, instead of after the direct timeout. The
        quiet end of a link to a blackholed leader found out 0.44-0.48 s after its last ping plus 0.3 s plus 0.4 s:
        first detection over the 1 s target (bench/scale_bench.py short case)."""
        e = self.members[target]
        seq = self._next_seq()
        timeout = self.config.probe_timeout_s * self._scale()
        if e.srtt_s is not None:
            timeout = max(timeout, min(4 * e.srtt_s, 2 * self.config.probe_interval_s))
        probe = _Probe(seq=seq, target=target, started=now, deadline=now + timeout)
        self._probes[seq] = probe
        self._probing[target] = seq
        out = [Send(target, "mesh", Ping(seq, self.me, self.inc, self._piggyback(target)))]
        if overdue:
            out += self._ask_helpers(probe, now)
        return out

    def _ask_helpers(self, probe: _Probe, now: float) -> list[Send]:
        """The indirect stage: k helpers ping the target for us, and its agent is pinged on the underlay."""
        c = self.config
        out: list[Send] = []
        probe.stage = "indirect"
        probe.deadline = max(probe.deadline, now + c.indirect_timeout_s * self._scale())
        probe.helpers = tuple(self._helpers(probe.target, c.indirect_checks))
        for h in probe.helpers:
            out.append(Send(h, "mesh", PingReq(probe.seq, self.me, self.inc, probe.target, self._piggyback(h))))
        if probe.target in self.underlay:
            probe.diag_seq = self._next_seq()
            probe.diag_sent = now
            self._diags[probe.diag_seq] = probe.seq
            out.append(Send(probe.target, "underlay", Ping(probe.diag_seq, self.me, self.inc)))
        return out

    def _probe_timeout(self, probe: _Probe, now: float) -> list[Send]:
        c = self.config
        out: list[Send] = []
        if probe.stage == "direct":
            probe.deadline = now  # the indirect stage's own timeout counts from now
            return self._ask_helpers(probe, now)
        self._end_probe(probe)
        e = self.members.get(probe.target)
        if e is None:
            return out
        if e.fail_since is None:
            e.fail_since = probe.started
        isolated = bool(probe.helpers) and probe.nacks == 0
        reason = f"no ack within {now - probe.started:.2f} s"
        if probe.helpers:
            reason += f" (direct and via {len(probe.helpers)} members, {probe.nacks} nack)"
        if isolated:
            reason += "; no helper answered either: this node may be the one cut off"
        self._results.append(ProbeResult(probe.target, "mesh", False, probe.started, error=reason))
        if probe.diag_seq is not None:
            self._results.append(
                probe.diag or ProbeResult(probe.target, "underlay", False, probe.started, error="no ack")
            )
        if isolated:
            self.local_health = min(c.max_local_health, self.local_health + 1)
            return out
        # While this node starts (its own links still forming), only a member it has reached before can be
        # suspected: failures to reach the others say more about us than about them.
        grace = now - self.started < c.startup_grace_s and e.last_ack is None
        if e.state in ("alive", "joining") and not grace:
            self.counters.suspicions += 1
            self._suspect(e, e.inc, self.me, now)
            self._enqueue(Update(e.node, SUSPECT, e.inc, self.me))
            self._gossip_now = True
        elif e.state == "suspect" and e.by != self.me and self.me not in e.confirmations:
            # Our own probe confirms someone else's suspicion: an independent confirmation (Lifeguard).
            e.confirmations.add(self.me)
            self._suspicion_timer(e)
            self._enqueue(Update(e.node, SUSPECT, e.inc, self.me))
            self._gossip_now = True
        return out

    def _settle_early(self, probe: _Probe, now: float) -> list[Send]:
        """Every helper has said it cannot reach the target (and the underlay ping, if one went, has answered):
        nothing is left to wait for, so the probe fails now instead of at the indirect timeout. A blackhole's
        first detection was 0.65-1.28 s against its 1 s target (bench/results/scale-*.txt), 0.08 s of it spent
        waiting here after the last nack."""
        if (
            probe.stage != "indirect"
            or not probe.helpers
            or probe.nacks < len(probe.helpers)
            or (probe.diag_seq is not None and probe.diag is None)
        ):
            return []
        return self._probe_timeout(probe, now)

    def _helpers(self, target: str, count: int) -> list[str]:
        """k random alive members other than the target (sampled; scanned only when too few are alive)."""
        sample = self.rng.sample(self._ids, min(2 * count + 1, len(self._ids)))
        picked = [m for m in sample if m != target and self.members[m].state == "alive"][:count]
        if len(picked) < count:
            pool = [m for m in self._ids if m != target and self.members[m].state == "alive"]
            picked = self.rng.sample(pool, min(count, len(pool)))
        return picked

    def _end_probe(self, probe: _Probe) -> None:
        self._probes.pop(probe.seq, None)
        if self._probing.get(probe.target) == probe.seq:
            del self._probing[probe.target]
        if probe.diag_seq is not None:
            self._diags.pop(probe.diag_seq, None)

    def _probe_ok(self, probe: _Probe, ack: Ack, now: float, direct: bool) -> None:
        self._end_probe(probe)
        e = self.members.get(probe.target)
        if e is None:
            return
        rtt = now - probe.started if direct else None
        if rtt is not None:
            e.srtt_s = rtt if e.srtt_s is None else 0.8 * e.srtt_s + 0.2 * rtt
            e.srtt_at = now
        e.last_ack = now
        e.fail_since = None
        self.local_health = max(0, self.local_health - 1)
        self._results.append(
            ProbeResult(
                probe.target,
                "mesh",
                True,
                probe.started,
                rtt_s=rtt,
                daemon_up=ack.daemon_up if direct else None,
                api=ack.api if direct else None,
            )
        )
        if probe.diag is not None:
            self._results.append(probe.diag)
        inc = ack.inc if direct else ack.about_inc
        self._heard_alive(e, inc, now)

    def _probed_by(self, e: MemberEntry, now: float) -> None:
        """A watched member pinged us over the mesh: the link was just probed, from its end. That ping is our
        evidence of it for this interval, so our own probe waits: one probe per link per interval instead of two
        (the agents' probes were most of the daemons' idle CPU, issue 10). Our next probe is due a little more
        than an interval from now, so the member that leads keeps leading, and the moment its pings stop ours
        resume: detection from this end is late by at most that margin."""
        c = self.config
        nxt = now + c.probe_interval_s * self._scale() * (1.0 + PASSIVE_MARGIN * (1.0 + self.rng.random()))
        own_rtt_due = e.srtt_at is None or now - e.srtt_at >= OWN_RTT_EVERY_S
        if self._next_watch[e.node] < nxt and not own_rtt_due:
            self._next_watch[e.node] = nxt
            self._passive.add(e.node)
        elif own_rtt_due:
            self._passive.discard(e.node)  # our probe comes due on its own schedule, theirs just arrived
        e.last_ack = now
        # It stands for our own successful probe, so it heals our local health as that would: a node cut off for
        # a while (score 4) whose neighbours lead every probe sent none of its own, kept its timeouts stretched
        # 4x for good, and then missed a 3 s blackhole of a neighbour altogether (CI of stop 18).
        self.local_health = max(0, self.local_health - 1)
        self._results.append(ProbeResult(e.node, "mesh", True, now))

    def _heard_alive(self, e: MemberEntry, inc: int, now: float) -> None:
        """Direct evidence the member answers at incarnation `inc`."""
        if e.state == "joining" or (e.state != "alive" and inc > e.inc):
            first_word = e.state == "joining" and inc == 0
            self._set(e, "alive", inc, now)
            self._enqueue(Update(e.node, ALIVE, inc, "", e.drill_until), lazy=first_word)
            self._gossip_now = self._gossip_now or not first_word
        elif e.state == "alive" and inc > e.inc:
            e.inc = inc

    # --- receiving ----------------------------------------------------------------------------------------

    def receive(self, now: float, sender: str, path: Path, message: Message) -> list[Send]:
        """One datagram from `sender` (the transport resolved it from the source address) over `path`."""
        self.counters.received[kind_of(message)] += 1
        if sender == self.me or sender not in self.members or message.src != sender:
            return []  # not from the member it names: dropped
        out: list[Send] = []
        if path == "mesh":
            self.heard_at = now
            for u in message.updates:
                self._apply(u, now)
        if isinstance(message, Ping):
            if path == "underlay":
                out.append(Send(sender, "underlay", self._ack(sender, message.seq, updates=False)))
            else:
                e = self.members[sender]
                if e.state == "joining":
                    self._heard_alive(e, message.inc, now)
                if sender in self._next_watch:
                    self._probed_by(e, now)
                out.append(Send(sender, "mesh", self._ack(sender, message.seq)))
        elif isinstance(message, PingReq):
            if path == "mesh":
                out += self._relay(message, now)
        elif isinstance(message, Ack):
            out += self._on_ack(message, path, now)
        if self._gossip_now:
            out += self._gossip(now)
        return self._count(out)

    def _ack(self, to: str, seq: int, *, nack: bool = False, updates: bool = True) -> Ack:
        return Ack(
            seq,
            self.me,
            self.inc,
            self._piggyback(to) if updates else [],
            nack=nack,
            daemon_up=self.daemon_up,
            api=self.api,
        )

    def _relay(self, req: PingReq, now: float) -> list[Send]:
        if req.target not in self.members:
            return [Send(req.src, "mesh", self._ack(req.src, req.seq, nack=True))]
        hseq = self._next_seq()
        t = self.config.indirect_timeout_s
        self._relays[hseq] = _Relay(
            requester=req.src, seq=req.seq, target=req.target, nack_at=now + 0.8 * t, expires=now + 1.5 * t
        )
        return [Send(req.target, "mesh", Ping(hseq, self.me, self.inc, self._piggyback(req.target)))]

    def _on_ack(self, ack: Ack, path: Path, now: float) -> list[Send]:
        out: list[Send] = []
        relay = self._relays.get(ack.seq)
        if relay is not None and path == "mesh":
            if not ack.nack and ack.src == relay.target:
                del self._relays[ack.seq]
                out.append(
                    Send(
                        relay.requester,
                        "mesh",
                        Ack(
                            relay.seq,
                            self.me,
                            self.inc,
                            self._piggyback(relay.requester),
                            about=relay.target,
                            about_inc=ack.inc,
                        ),
                    )
                )
                e = self.members.get(relay.target)
                if e is not None:
                    self._heard_alive(e, ack.inc, now)
            return out
        pseq = self._diags.get(ack.seq)
        if pseq is not None and path == "underlay":
            probe = self._probes.get(pseq)
            if probe is not None and ack.src == probe.target:
                probe.diag = ProbeResult(
                    probe.target,
                    "underlay",
                    True,
                    probe.started,
                    # From the underlay ping, not from the probe's start: counted from there it included the
                    # direct timeout, and an agent answering in 2 ms was reported "answers in 302 ms".
                    rtt_s=now - probe.diag_sent,
                    daemon_up=ack.daemon_up,
                    api=ack.api,
                )
                out += self._settle_early(probe, now)
            return out
        probe = self._probes.get(ack.seq)
        if probe is None or path != "mesh":
            return out  # late: the probe already ended; its updates were applied above
        if ack.nack:
            if ack.src in probe.helpers:
                probe.nacks += 1
                out += self._settle_early(probe, now)
            return out
        direct = not ack.about and ack.src == probe.target
        relayed = ack.about == probe.target and ack.src in probe.helpers
        if direct or relayed:
            self._probe_ok(probe, ack, now, direct)
        return out

    # --- state --------------------------------------------------------------------------------------------

    def _set(self, e: MemberEntry, state: State, inc: int, now: float, by: str = "") -> None:
        old = e.state
        e.inc = inc
        if state == "suspect":
            self._suspects.add(e.node)
        else:
            self._suspects.discard(e.node)
            e.suspect_deadline = e.suspect_started = None
            e.confirmations = set()
        if old != state:
            e.state = state
            e.since = now
            e.by = by
            self.changes.append(Change(e.node, old, state, inc, now, by))

    def _suspect(self, e: MemberEntry, inc: int, by: str, now: float) -> None:
        self._set(e, "suspect", inc, now, by=by)
        e.suspect_started = now
        e.confirmations = set()
        self._suspicion_timer(e)

    def _suspicion_timer(self, e: MemberEntry) -> None:
        """Lifeguard: max timeout with no confirmation, shrinking by log(C+1)/log(K+1) to the min with K."""
        low, high = self.suspicion_bounds()
        k = int(self.config.suspicion_mult) - 2
        if self.n - 2 < k:
            k = 0  # a small mesh cannot produce k independent confirmations
        c = len(e.confirmations)
        if k <= 0 or c >= k:
            timeout = low
        else:
            timeout = max(low, high - (high - low) * math.log(c + 1) / math.log(k + 1))
        assert e.suspect_started is not None
        e.suspect_deadline = e.suspect_started + timeout

    def _apply(self, u: Update, now: float) -> None:
        if u.state not in _CODE_STATE:
            return
        if u.node == self.me:
            if u.state != ALIVE and u.inc >= self.inc:
                self.inc = u.inc + 1
                self.counters.refutations += 1
                self.local_health = min(self.config.max_local_health, self.local_health + 1)
                self._enqueue(self._self_update())
                self._gossip_now = True
            return
        e = self.members.get(u.node)
        if e is None:
            return
        new = False
        first_word = False
        if u.state == ALIVE:
            if e.state == "joining" or u.inc > e.inc:
                e.drill_until = u.drill_until
                new = e.state != "alive" or u.inc > e.inc
                first_word = e.state == "joining" and u.inc == 0
                self._set(e, "alive", u.inc, now)
        elif u.state == SUSPECT:
            if (e.state in ("alive", "joining") and u.inc >= e.inc) or (e.state == "suspect" and u.inc > e.inc):
                self._suspect(e, u.inc, u.by, now)
                new = True
            elif e.state == "suspect" and u.inc == e.inc and u.by and u.by != e.by and u.by not in e.confirmations:
                e.confirmations.add(u.by)
                self._suspicion_timer(e)
                new = True  # pass the confirmation on: others shorten their timers too
        elif u.state == DEAD:
            if (e.state != "dead" and u.inc >= e.inc) or u.inc > e.inc:
                self._set(e, "dead", u.inc, now, by=u.by)
                new = True
        if new:
            self._enqueue(u, lazy=first_word)
            self._gossip_now = self._gossip_now or not first_word

    # --- dissemination ------------------------------------------------------------------------------------

    def _enqueue(self, u: Update, *, lazy: bool = False) -> None:
        """Queue `u` for dissemination. Lazy: a member's first word at incarnation 0 (joining -> alive). With a
        static membership every member is expected, so hearing of one is not news worth a message of its own: at
        startup each member hears of every other, and pushing each of those at once cost every member O(N) gossip
        messages. Lazy updates ride the pings and acks sent anyway."""
        old = self._queue.get(u.node)
        if old is not None:
            del self._buckets_of(old)[old.sent][u.node]
            self._news -= not old.lazy
        q = self._queue[u.node] = _Queued(u, lazy=lazy)
        self._buckets_of(q)[0][u.node] = q
        self._news += not lazy

    def _buckets_of(self, q: _Queued) -> list[dict[str, _Queued]]:
        return self._lazy_buckets if q.lazy else self._buckets

    def _piggyback(self, to: str) -> list[Update]:
        out: list[Update] = []
        e = self.members.get(to)
        if e is not None and e.state in ("suspect", "dead"):
            # Buddy system: tell the member itself what we think, so it can refute in its answer.
            out.append(Update(to, _STATE_CODE[e.state], e.inc, e.by))
        limit = self.retransmit_limit()
        room = self.config.max_updates - len(out)
        # News first, then lazy updates; fewest-sent first, oldest first among equals. O(room), not O(queue): the
        # queue can hold every member after a big event, and this runs for every message.
        taken: list[_Queued] = []
        for bucket in itertools.chain(self._buckets, self._lazy_buckets):
            for q in bucket.values():
                if len(taken) >= room:
                    break
                if not (out and out[0].node == q.update.node == to):
                    taken.append(q)
            if len(taken) >= room:
                break
        for q in taken:
            out.append(q.update)
            buckets = self._buckets_of(q)
            del buckets[q.sent][q.update.node]
            q.sent += 1
            if q.sent >= limit:
                del self._queue[q.update.node]
                self._news -= not q.lazy
            else:
                while len(buckets) <= q.sent:
                    buckets.append({})
                buckets[q.sent][q.update.node] = q
        if len(out) < self.config.max_updates and self.config.anti_entropy > 0:
            # Anti-entropy at no extra message: a few random members we hold alive. Only alive entries, which
            # a receiver takes only when it is news to it (a member it never heard of, or a newer incarnation),
            # so an update that ran out of retransmissions before reaching someone still gets there.
            picks = self.rng.sample(self._ids, min(self.config.anti_entropy, len(self._ids)))
            have = {u.node for u in out}
            for node in picks:
                e = self.members[node]
                if e.state == "alive" and node not in have and node != to:
                    out.append(Update(e.node, ALIVE, e.inc, "", e.drill_until))
        return out

    def _gossip(self, now: float, *, force: bool = False) -> list[Send]:
        self._gossip_now = False
        self._next_gossip = now + self.config.gossip_interval_s
        if not self._news and not force:
            return []
        targets = self._random_members(self.config.gossip_fanout, now)
        return [Send(t, "mesh", Gossip(self.me, self.inc, self._piggyback(t))) for t in targets]

    def _random_members(self, count: int, now: float, exclude: str | None = None) -> list[str]:
        """Up to `count` random members worth talking to (alive, suspect, or dead for less than
        dead_gossip_s), in O(count) for a healthy mesh: sample, then fall back to a scan if too few qualify."""
        dead_ok = self.config.dead_gossip_s

        def fit(m: str) -> bool:
            e = self.members[m]
            return m != exclude and (
                e.state in ("alive", "suspect", "joining") or (e.state == "dead" and now - e.since < dead_ok)
            )

        picked = [m for m in self.rng.sample(self._ids, min(2 * count, len(self._ids))) if fit(m)][:count]
        if len(picked) < count:
            pool = [m for m in self._ids if fit(m)]
            picked = self.rng.sample(pool, min(count, len(pool)))
        return picked

    def _count(self, sends: list[Send]) -> list[Send]:
        for s in sends:
            self.counters.sent[kind_of(s.message)] += 1
        return sends
