"""The PromQL extractor the observability checks rely on: if it misreads, the dashboard checks are blind."""

from __future__ import annotations

import pytest

from .promql import Matcher, PromQLError, Selector, expand_grafana, extract


def test_selector_with_matchers_and_range() -> None:
    refs = extract('rate(x0_peer_received_bytes_total{job="x0-agent", peer=~"node-.*"}[5m])')
    assert refs.selectors == [
        Selector(
            "x0_peer_received_bytes_total", (Matcher("job", "=", "x0-agent"), Matcher("peer", "=~", "node-.*"))
        )
    ]
    assert refs.grouping == set()


def test_aggregation_grouping_before_and_after_the_body() -> None:
    a = extract("sum by (mesh, le) (rate(x0_http_request_duration_seconds_bucket[5m]))")
    b = extract("sum(rate(x0_http_request_duration_seconds_bucket[5m])) by (mesh, le)")
    assert a.metrics == b.metrics == {"x0_http_request_duration_seconds_bucket"}
    assert a.grouping == b.grouping == {"mesh", "le"}


def test_binary_matching_labels_and_keywords_are_not_metrics() -> None:
    refs = extract(
        "(x0_peers_up == bool 0) and on (instance, peer) group_left (kind) x0_peer_up offset 5m "
        "unless ignoring(path) x0_member_reachable > inf"
    )
    assert refs.metrics == {"x0_peers_up", "x0_peer_up", "x0_member_reachable"}
    assert refs.grouping == {"instance", "peer", "kind", "path"}


def test_label_functions_report_source_and_created_labels() -> None:
    refs = extract('label_replace(up, "host", "$1", "instance", "(.*):.*")')
    assert refs.metrics == {"up"}
    assert refs.source_labels == {"instance"}
    assert refs.created_labels == {"host"}
    joined = extract('label_join(x0_peer_up, "link", "->", "node_id", "peer")')
    assert joined.source_labels == {"node_id", "peer"}
    assert extract('count_values("version", x0_build_info)').created_labels == {"version"}


def test_name_matcher_and_subquery() -> None:
    refs = extract('max_over_time({__name__="x0_drill_active", kind="partition"}[1h:1m])')
    assert refs.metrics == {"x0_drill_active"}
    assert refs.selectors[0].labels() == {"kind"}


def test_recording_rule_names_with_colons() -> None:
    assert extract('mesh:x0_peers_up:sum{mesh="m"} / mesh:x0_peers_planned:sum').metrics == {
        "mesh:x0_peers_up:sum",
        "mesh:x0_peers_planned:sum",
    }


@pytest.mark.parametrize(
    "bad",
    [
        "sum(rate(x0_peers_up[5m])",  # unbalanced
        "rte(x0_peers_up[5m])",  # typo in a function name
        "x0_peers_up{peer=node-a}",  # unquoted value
        "x0_peers_up ? 1",  # not PromQL
    ],
)
def test_malformed_expressions_raise(bad: str) -> None:
    with pytest.raises(PromQLError):
        extract(bad)


def test_grafana_variables_expand_and_unknown_ones_raise() -> None:
    expr = 'rate(x0_peer_sent_bytes_total{node_id="$node", mesh=~"${mesh}"}[$__rate_interval])'
    out = expand_grafana(expr, {"node": "node-a", "mesh": "local-1", "__rate_interval": "1m"})
    assert out == 'rate(x0_peer_sent_bytes_total{node_id="node-a", mesh=~"local-1"}[1m])'
    with pytest.raises(PromQLError, match="nodes"):
        expand_grafana('x0_peers_up{node_id="$nodes"}', {"node": "node-a"})
    # A regex back-reference is not a variable.
    assert expand_grafana('label_replace(up, "h", "$1", "instance", "(.*)")', {}) == (
        'label_replace(up, "h", "$1", "instance", "(.*)")'
    )
