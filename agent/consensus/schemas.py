"""Payloads of /cluster, /kv, /drills/lease and /drills/history (docs/contracts.md §3, §7)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Role = Literal["leader", "follower", "candidate", "client", "joining", "disabled"]
ROLES: tuple[Role, ...] = ("leader", "follower", "candidate", "client", "joining", "disabled")
MemberState = Literal["self", "leader", "connected", "disconnected", "client"]

# A client's id for one write: a retry with the same id applies at most once (the last 4,096 ids are remembered).
REQUEST_ID_HEADER = "X-X0-Request-Id"
REQUEST_ID_RE = r"^[A-Za-z0-9_.:-]{1,64}$"
# On a 503 to a write: `not-applied` (refused before reaching a Raft log, or overwritten there: it never applies)
# or `unknown` (it reached a log and the answer was lost: it may still apply; read the key back before retrying).
OUTCOME_HEADER = "X-X0-Outcome"
# On a PUT or DELETE: when its writer stops waiting (Unix time, seconds). A node that gets the write later than
# this plus X0_RAFT_CLOCK_SKEW refuses it (503 `not-applied`) and no voter hands it to Raft after then: a request
# held up in the network (a blackholed link retransmitting) cannot apply long after its writer was told 503.
DEADLINE_HEADER = "X-X0-Deadline"


class ClusterMember(msgspec.Struct, kw_only=True):
    node_id: str
    raft_address: str | None
    voter: bool
    state: MemberState
    match_index: int | None = None


class Cluster(msgspec.Struct, kw_only=True):
    node_id: str
    enabled: bool
    role: Role
    term: int
    leader_id: str | None
    leader_url: str | None
    commit_index: int
    applied_index: int
    last_contact_s: float | None
    has_quorum: bool
    voters_target: int
    detail: str
    members: list[ClusterMember]
    # The voters the leader wants (node ids, in voter order); on followers and clients: as last learned.
    target: list[str] = []


class KvEntry(msgspec.Struct, kw_only=True):
    key: str
    value: str  # base64
    modify_index: int
    create_index: int
    index: int
    stale: bool
    lag: int | None


class KvKey(msgspec.Struct, kw_only=True):
    key: str
    modify_index: int
    size: int


class KvList(msgspec.Struct, kw_only=True):
    keys: list[KvKey]
    index: int
    truncated: bool


class KvWrite(msgspec.Struct, kw_only=True):
    key: str
    modify_index: int
    index: int


class KvDelete(msgspec.Struct, kw_only=True):
    key: str
    deleted: bool
    index: int


class DrillLease(msgspec.Struct, kw_only=True):
    lease_id: str
    holder: str
    kind: str
    node_id: str
    acquired_at: float
    expires_at: float
    drill_id: str | None = None


class LeaseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    holder: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    node_id: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    ttl_s: Annotated[float, msgspec.Meta(ge=1, le=3600)]


class DrillRecord(msgspec.Struct, kw_only=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: str
    node_id: str
    duration_s: float
    started_at: float
    ends_at: float
    reverted_at: float | None
    state: str
    detail: str
    holder: str | None = None
    source: Literal["agent", "x0dash"] = "agent"
    targets: list[str] = []
    report: dict[str, Any] | None = None


class DrillHistory(msgspec.Struct, kw_only=True):
    drills: list[DrillRecord]


class NodeKey(msgspec.Struct, kw_only=True):
    """`x0/keys/<node_id>`: a node's Yggdrasil identity as the node itself published it (contracts §7)."""

    public_key: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    address: str
    updated_at: float
