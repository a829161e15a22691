"""Settings.from_env: defaults, and every invalid value names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.settings import Settings, SettingsError


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env({"NODE_ID": "node-a"})
    assert (s.listen_host, s.listen_port, s.log_level) == ("::", 8080, "info")
    assert s.yggdrasil_admin == "unix:///var/run/yggdrasil/yggdrasil.sock"
    assert s.yggdrasil_peers == () and s.yggdrasil_config is None and not s.supervises_daemon
    assert (s.daemon_restart_delay, s.monitor_interval, s.admin_timeout) == (3.0, 1.0, 2.0)
    assert (s.mapek_enabled, s.mapek_interval, s.mapek_degree, s.api_token) == (True, 1.0, 2, None)
    assert s.stale_after == 2.0


def test_values_are_parsed(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            "NODE_ID": "n1",
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": "9000",
            "LOG_LEVEL": "WARNING",
            "YGGDRASIL_ADMIN": "tcp://127.0.0.1:9001",
            "YGGDRASIL_PEERS": " tls://10.0.0.1:1 , tcp://[::1]:2 ,",
            "MESH_MEMBERS": str(tmp_path / "later.json"),
            "X0_MONITOR_INTERVAL": "0.5",
            "X0_MAPEK_ENABLED": "false",
            "X0_API_TOKEN": "s3cret",
        }
    )
    assert s.listen_port == 9000 and s.log_level == "warning"
    assert s.yggdrasil_peers == ("tls://10.0.0.1:1", "tcp://[::1]:2")
    assert s.mesh_members == tmp_path / "later.json"  # may appear later: not an error at start
    assert s.mapek_enabled is False and s.api_token == "s3cret"
    assert s.stale_after == 1.5


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "NODE_ID"),
        ({"NODE_ID": "Node_A"}, "NODE_ID"),
        ({"NODE_ID": "-a"}, "NODE_ID"),
        ({"LISTEN_PORT": "http"}, "LISTEN_PORT"),
        ({"LISTEN_PORT": "70000"}, "LISTEN_PORT"),
        ({"LISTEN_HOST": "a b"}, "LISTEN_HOST"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"YGGDRASIL_ADMIN": "http://x"}, "YGGDRASIL_ADMIN"),
        ({"YGGDRASIL_ADMIN": "tcp://host"}, "YGGDRASIL_ADMIN"),
        ({"YGGDRASIL_ADMIN": "unix://"}, "YGGDRASIL_ADMIN"),
        ({"YGGDRASIL_PEERS": "10.0.0.1:1"}, "YGGDRASIL_PEERS"),
        ({"YGGDRASIL_CONFIG": "/nonexistent/ygg.conf"}, "YGGDRASIL_CONFIG"),
        ({"X0_DAEMON_RESTART_DELAY": "-1"}, "X0_DAEMON_RESTART_DELAY"),
        ({"X0_MONITOR_INTERVAL": "0"}, "X0_MONITOR_INTERVAL"),
        ({"X0_MONITOR_INTERVAL": "nan"}, "X0_MONITOR_INTERVAL"),
        ({"X0_ADMIN_TIMEOUT": "soon"}, "X0_ADMIN_TIMEOUT"),
        ({"X0_MAPEK_ENABLED": "maybe"}, "X0_MAPEK_ENABLED"),
        ({"X0_RAFT_TRANSPORT": "underlay"}, "X0_RAFT_TRANSPORT"),
        ({"X0_MAPEK_INTERVAL": "1e9"}, "X0_MAPEK_INTERVAL"),
        ({"X0_MAPEK_DEGREE": "0"}, "X0_MAPEK_DEGREE"),
    ],
)
def test_invalid_value_names_the_variable(env: dict[str, str], variable: str) -> None:
    base = {} if variable == "NODE_ID" else {"NODE_ID": "node-a"}
    with pytest.raises(SettingsError) as err:
        Settings.from_env({**base, **env})
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}: ")


def test_missing_binary_when_supervising_names_yggdrasil_bin(tmp_path: Path) -> None:
    conf = tmp_path / "ygg.conf"
    conf.write_text("{}")
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"NODE_ID": "a", "YGGDRASIL_CONFIG": str(conf), "YGGDRASIL_BIN": str(tmp_path / "nope")})
    assert err.value.variable == "YGGDRASIL_BIN"


def test_supervising_resolves_the_binary(tmp_path: Path) -> None:
    conf = tmp_path / "ygg.conf"
    conf.write_text("{}")
    fake = tmp_path / "ygg-bin"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    s = Settings.from_env({"NODE_ID": "a", "YGGDRASIL_CONFIG": str(conf), "YGGDRASIL_BIN": str(fake)})
    assert s.supervises_daemon and s.yggdrasil_bin == str(fake)
