"""The few agent metrics x0dash reads from `/metrics` (docs/contracts.md §5), parsed without a full
Prometheus parser: only the lines we need are looked at, so polling 100 agents stays cheap."""

from __future__ import annotations

import math
import re

import msgspec

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

HTTP_HIST = "x0_http_request_duration_seconds"
MEMBER_RTT = "x0_member_rtt_seconds"
_WANTED = (HTTP_HIST + "_bucket", HTTP_HIST + "_count", MEMBER_RTT)


class MetricsSample(msgspec.Struct, kw_only=True, frozen=True):
    """What one scrape told us: request histogram totals (all routes summed) and probe RTTs per member."""

    taken_at: float
    requests_total: float
    buckets: dict[float, float]  # le -> cumulative count, summed over routes/methods/statuses
    member_rtt_s: dict[str, float]  # member id -> last overlay probe RTT (underlay when no overlay sample)


def _labels(raw: str) -> dict[str, str]:
    return {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL.findall(raw)}


def parse_metrics(text: str, taken_at: float) -> MetricsSample:
    total = 0.0
    buckets: dict[float, float] = {}
    rtt: dict[str, float] = {}
    rtt_path: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        name, _, rest = line.partition("{")
        if rest:
            labels_raw, _, value_part = rest.rpartition("}")
        else:
            name, _, value_part = line.partition(" ")
            labels_raw = ""
        fields = value_part.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if name == HTTP_HIST + "_count":
            total += value
        elif name == HTTP_HIST + "_bucket":
            le = _labels(labels_raw).get("le")
            if le is not None:
                bound = math.inf if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + value
        elif name == MEMBER_RTT:
            labels = _labels(labels_raw)
            member, path = labels.get("member"), labels.get("path", "overlay")
            if member is None or math.isnan(value):
                continue
            # Overlay is what mesh traffic sees; underlay only fills in when there is no overlay sample.
            if path == "overlay" or rtt_path.get(member) != "overlay":
                rtt[member], rtt_path[member] = value, path
    return MetricsSample(taken_at=taken_at, requests_total=total, buckets=buckets, member_rtt_s=rtt)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count <= 0:
        return None
    rank = q * count
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        cum = buckets[bound]
        if cum >= rank:
            if math.isinf(bound):
                return prev_bound  # as Prometheus: the highest finite bound
            if cum == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (cum - prev_count)
        prev_bound, prev_count = bound, cum
    return prev_bound


def http_rate_and_p99(prev: MetricsSample | None, cur: MetricsSample) -> tuple[float | None, float | None]:
    """Requests/s and p99 seconds between two scrapes; p99 over the whole life when no window is known."""
    if prev is None or cur.taken_at <= prev.taken_at or cur.requests_total < prev.requests_total:
        return None, histogram_quantile(0.99, cur.buckets)
    dt = cur.taken_at - prev.taken_at
    rate = (cur.requests_total - prev.requests_total) / dt
    window = {le: cur.buckets[le] - prev.buckets.get(le, 0.0) for le in cur.buckets}
    p99 = histogram_quantile(0.99, window)
    return rate, p99 if p99 is not None else histogram_quantile(0.99, cur.buckets)
