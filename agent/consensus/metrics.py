"""Raft and KV series (docs/contracts.md §5), registered on the agent's registry by `agent.metrics.AgentMetrics`
(one registry per agent). Closed label sets are created at 0 so alerts and panels have series from the start."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROLES = ("leader", "follower", "candidate", "client", "joining", "disabled")
KV_OPS = ("get", "list", "put", "delete", "cas")
KV_OUTCOMES = ("ok", "not_found", "conflict", "invalid", "unavailable", "timeout", "forwarded_error")
MEMBER_STATES = ("voter", "reachable", "client")
KV_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class ConsensusMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.role = Gauge("x0_raft_role", "This node's Raft role (1 for the current role)", ["role"], registry=r)
        self.term = Gauge("x0_raft_term", "Current Raft term (0 on clients)", registry=r)
        self.commit_index = Gauge("x0_raft_commit_index", "Raft commit index this node knows", registry=r)
        self.applied_index = Gauge("x0_raft_applied_index", "Last Raft entry applied to this replica", registry=r)
        self.leader_changes = Counter(
            "x0_raft_leader_changes",
            "Times this node saw the leader change (to another node or to none)",
            registry=r,
        )
        self.rebuilds = Counter(
            "x0_raft_replica_rebuilds",
            "Times this voter's replica contradicted the leader's log and was rebuilt from it (should stay 0)",
            registry=r,
        )
        self.members = Gauge(
            "x0_raft_members",
            "Voters in the configuration, voters this node is connected to (itself included), known clients",
            ["state"],
            registry=r,
        )
        self.has_quorum = Gauge(
            "x0_raft_has_quorum", "1 when this node sees a majority of the voters (voters only)", registry=r
        )
        self.store_bytes = Gauge(
            "x0_kv_store_bytes",
            "Bytes of keys and values in this node's replica, as the 64 MiB store limit counts them (voters only)",
            registry=r,
        )
        self.store_keys = Gauge("x0_kv_keys", "Keys in this node's replica (voters only)", registry=r)
        self.kv_requests = Counter(
            "x0_kv_requests", "KV API requests by operation and outcome", ["op", "outcome"], registry=r
        )
        self.kv_duration = Histogram(
            "x0_kv_request_duration_seconds",
            "KV request latency as served (forwarding included)",
            ["op"],
            buckets=KV_BUCKETS,
            registry=r,
        )
        for role in ROLES:
            self.role.labels(role=role).set(0)
        for state in MEMBER_STATES:
            self.members.labels(state=state).set(0)
        for op in KV_OPS:
            self.kv_duration.labels(op=op)
            for outcome in KV_OUTCOMES:
                self.kv_requests.labels(op=op, outcome=outcome)

    def set_role(self, role: str) -> None:
        for r in ROLES:
            self.role.labels(role=r).set(1 if r == role else 0)
