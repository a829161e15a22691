"""Small per-node time series over the session (peers up, link latency), for the node detail sparklines."""

from __future__ import annotations

from collections import deque

from dashboard.models import MeshView


class SessionHistory:
    def __init__(self, max_points: int = 600) -> None:
        self.max_points = max_points
        self._peers: dict[str, deque[float]] = {}
        self._latency: dict[str, deque[float]] = {}

    def record(self, view: MeshView) -> None:
        lat: dict[str, list[float]] = {}
        for link in view.links:
            if link.latency_ms is not None:
                lat.setdefault(link.a, []).append(link.latency_ms)
                lat.setdefault(link.b, []).append(link.latency_ms)
        for n in view.nodes:
            if n.age_s is None or n.state in ("silent", "down", "unknown"):
                continue  # no new data: a flat line would claim we know
            self._peers.setdefault(n.id, deque(maxlen=self.max_points)).append(float(n.peers_up or 0))
            if n.id in lat:
                values = lat[n.id]
                self._latency.setdefault(n.id, deque(maxlen=self.max_points)).append(sum(values) / len(values))

    def peers(self, node_id: str) -> list[float]:
        return list(self._peers.get(node_id, ()))

    def latency(self, node_id: str) -> list[float]:
        return list(self._latency.get(node_id, ()))
