"""The few agent metrics x0dash reads (pure)."""

from __future__ import annotations

import math

from dashboard.promtext import histogram_quantile, http_rate_and_p99, parse_metrics

TEXT = """\
# HELP x0_http_request_duration_seconds API latency
# TYPE x0_http_request_duration_seconds histogram
x0_http_request_duration_seconds_bucket{route="/health",method="GET",status="200",le="0.005"} 80
x0_http_request_duration_seconds_bucket{route="/health",method="GET",status="200",le="0.01"} 95
x0_http_request_duration_seconds_bucket{route="/health",method="GET",status="200",le="+Inf"} 100
x0_http_request_duration_seconds_count{route="/health",method="GET",status="200"} 100
x0_http_request_duration_seconds_bucket{route="/mesh/peers",method="GET",status="200",le="0.005"} 0
x0_http_request_duration_seconds_bucket{route="/mesh/peers",method="GET",status="200",le="0.01"} 0
x0_http_request_duration_seconds_bucket{route="/mesh/peers",method="GET",status="200",le="+Inf"} 0
x0_http_request_duration_seconds_count{route="/mesh/peers",method="GET",status="200"} 0
x0_member_rtt_seconds{member="node-b",path="underlay"} 0.004
x0_member_rtt_seconds{member="node-b",path="overlay"} 0.012
x0_member_rtt_seconds{member="node-c",path="underlay"} 0.003
x0_member_rtt_seconds{member="node-d",path="overlay"} NaN
x0_peers_up 2
"""


def test_parse_sums_routes_and_prefers_overlay_rtt() -> None:
    s = parse_metrics(TEXT, 10.0)
    assert s.requests_total == 100
    assert s.buckets == {0.005: 80, 0.01: 95, math.inf: 100}
    assert s.member_rtt_s == {"node-b": 0.012, "node-c": 0.003}


def test_quantile_like_prometheus() -> None:
    assert histogram_quantile(0.5, {0.005: 80, 0.01: 95, math.inf: 100}) == 0.003125
    assert histogram_quantile(0.99, {0.005: 80, 0.01: 95, math.inf: 100}) == 0.01  # +Inf bucket: highest bound
    assert histogram_quantile(0.99, {}) is None


def test_rate_and_window_p99() -> None:
    prev = parse_metrics(TEXT, 10.0)
    cur = parse_metrics(TEXT.replace("} 100", "} 140").replace("} 95", "} 135").replace("} 80", "} 90"), 12.0)
    rate, p99 = http_rate_and_p99(prev, cur)
    assert rate == 20.0
    assert p99 is not None and 0.005 < p99 <= 0.01  # the 40 new requests: 10 fast, 30 in (5, 10] ms
    assert http_rate_and_p99(None, cur)[0] is None
