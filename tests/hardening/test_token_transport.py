"""The token never crosses the underlay in clear (issue 11): a real agent, a real KV write (one-voter Raft).

The client calls the agent from this host's own non-loopback address, so the agent sees an underlay peer (the
packets never leave the machine, but the agent cannot tell, and neither could a sniffer's victim): a plain
mutation is refused with 403 saying how to fix it, the same one over https (self-signed certificate made here) is
accepted, and X0_ALLOW_CLEAR_UNDERLAY=true accepts it in clear. The overlay path is tested on a netns mesh
(test_admission.py).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.auth import clear_underlay_refusal, require_token
from tests.agent.service.agentproc import AGENT_BIN, AgentProcess, daemonless_env, free_port, wait_for

TOKEN = "transport-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def get(url: str, **kw: object) -> httpx.Response:
    """A blocking GET for checks around the async x0dash client (the agent is another process)."""
    return httpx.get(url, timeout=3, **kw)  # type: ignore[arg-type]


def underlay_address() -> str | None:
    """A global IPv4 address of this host (not loopback), or None."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
        links = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    for link in links:
        for a in link.get("addr_info", []):
            if a.get("scope") == "global" and not a.get("local", "").startswith("127."):
                return a["local"]
    return None


def self_signed(tmp: Path, ip: str) -> tuple[Path, Path]:
    cert, key = tmp / "agent.crt", tmp / "agent.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=x0-agent",
         "-addext", f"subjectAltName=IP:{ip},IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def host_ip() -> str:
    ip = underlay_address()
    if ip is None:
        pytest.skip("this host has no global IPv4 address to call the agent from as an underlay peer")
    return ip


def start_agents(tmp: Path, host_ip: str, names: list[str], extra: dict[str, str]) -> list[AgentProcess]:
    """Agents on this host's underlay address sharing one members file (one Raft voter: X0_RAFT_VOTERS=1)."""
    ports = {n: (free_port(), free_port()) for n in names}
    scheme = "https" if "X0_TLS_CERT" in extra else "http"
    members = tmp / "members.json"
    members.write_text(
        json.dumps(
            {
                "members": [
                    {
                        "node_id": n,
                        "agent_url": f"{scheme}://{host_ip}:{ports[n][0]}",
                        "raft_address": f"{host_ip}:{ports[n][1]}",
                    }
                    for n in names
                ]
            }
        )
    )
    agents = []
    for n in names:
        d = tmp / n
        d.mkdir()
        env = daemonless_env(
            n,
            ports[n][0],
            d,
            LISTEN_HOST="0.0.0.0",
            MESH_MEMBERS=str(members),
            X0_API_TOKEN=TOKEN,
            X0_RAFT_PORT=str(ports[n][1]),
            X0_RAFT_DIR=str(d / "raft"),
            X0_RAFT_VOTERS="1",
            X0_MAPEK_ENABLED="false",
            **extra,
        )
        agent = AgentProcess(n, ports[n][0], env, d / "agent.log")
        agents.append(agent)
        agent.start()
    return agents


@pytest.fixture
def agents_factory(tmp_path: Path, host_ip: str) -> Iterator[object]:
    started: list[AgentProcess] = []

    def make(name: str, extra: dict[str, str], names: tuple[str, ...] = ("node-a",)) -> list[AgentProcess]:
        d = tmp_path / name
        d.mkdir()
        agents = start_agents(d, host_ip, list(names), extra)
        started.extend(agents)
        return agents

    yield make
    for a in started:
        a.stop()


@pytest.fixture
def agent_factory(agents_factory) -> object:  # type: ignore[no-untyped-def]
    return lambda name, extra: agents_factory(name, extra)[0]


def put_when_leader(url: str, verify: ssl.SSLContext | bool = True) -> httpx.Response | None:
    """PUT /kv/probe until Raft has its single voter elected (503 before): the answer after that."""

    def attempt() -> httpx.Response | None:
        r = httpx.put(f"{url}/kv/probe", content=b"v1", headers=AUTH, timeout=3, verify=verify)
        return None if r.status_code == 503 else r

    return wait_for(attempt, timeout=30, interval=0.3)


def test_plain_underlay_mutation_refused_then_allowed_explicitly(agent_factory, host_ip: str) -> None:  # type: ignore[no-untyped-def]
    strict = agent_factory("strict", {})
    assert wait_for(lambda: httpx.get(f"http://{host_ip}:{strict.port}/health", timeout=2), 20), strict.log()
    r = httpx.put(f"http://{host_ip}:{strict.port}/kv/probe", content=b"v1", headers=AUTH, timeout=3)
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert "in clear over the underlay" in detail and host_ip in detail
    assert "X0_TLS_CERT" in detail and "overlay" in detail and "X0_ALLOW_CLEAR_UNDERLAY" in detail
    # Reads need no token and still work; loopback never leaves the host, so it may mutate.
    assert httpx.get(f"http://{host_ip}:{strict.port}/cluster", timeout=3).status_code == 200
    local = put_when_leader(f"http://127.0.0.1:{strict.port}")
    assert local is not None and local.status_code == 200, strict.log()

    allowed = agent_factory("allowed", {"X0_ALLOW_CLEAR_UNDERLAY": "true"})
    r = put_when_leader(f"http://{host_ip}:{allowed.port}")
    assert r is not None and r.status_code == 200, allowed.log()
    got = httpx.get(f"http://{host_ip}:{allowed.port}/kv/probe", params={"raw": "true"}, timeout=3)
    assert got.content == b"v1"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not found (makes the test certificate)")
def test_tls_agent_accepts_a_mutation_over_https(agent_factory, host_ip: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = self_signed(tmp_path, host_ip)
    agent = agent_factory("tls", {"X0_TLS_CERT": str(cert), "X0_TLS_KEY": str(key)})
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"https://{host_ip}:{agent.port}"
    r = put_when_leader(url, verify=trust)
    assert r is not None and r.status_code == 200, agent.log()
    assert httpx.get(f"{url}/kv/probe", params={"raw": "true"}, timeout=3, verify=trust).content == b"v1"
    # Plain HTTP to the TLS port gets no API at all (the server speaks TLS only).
    with pytest.raises(httpx.HTTPError):
        httpx.put(f"http://{host_ip}:{agent.port}/kv/probe", content=b"x", headers=AUTH, timeout=3)
    assert "listening on https" in agent.log()


def test_half_a_tls_pair_or_a_bad_key_stops_the_agent_with_exit_2(tmp_path: Path) -> None:
    def run_agent(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENT_BIN], env=env, capture_output=True, text=True, timeout=20)

    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_ID": "node-a", "LISTEN_PORT": str(free_port())}
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate\n")
    half = run_agent({**base, "X0_TLS_CERT": str(cert)})
    assert half.returncode == 2 and "X0_TLS_KEY: required with X0_TLS_CERT" in half.stderr
    bad = run_agent({**base, "X0_TLS_CERT": str(cert), "X0_TLS_KEY": str(cert), "LISTEN_HOST": "127.0.0.1"})
    assert bad.returncode == 2 and "X0_TLS_CERT/X0_TLS_KEY" in bad.stderr, bad.stderr


@pytest.mark.parametrize(
    ("scheme", "client", "server", "allow", "refused"),
    [
        ("http", ("10.1.2.3", 5000), ("10.1.2.4", 8080), False, True),
        ("http", ("::ffff:10.1.2.3", 5000), ("::ffff:10.1.2.4", 8080), False, True),
        ("http", ("fd00::3", 5000), ("fd00::2", 8080), False, True),
        ("https", ("10.1.2.3", 5000), ("10.1.2.4", 8080), False, False),
        ("http", ("10.1.2.3", 5000), ("10.1.2.4", 8080), True, False),
        ("http", ("201:abcd::1", 5000), ("202:1::1", 8080), False, False),
        # an overlay source to an underlay destination did not come through the daemon: refused
        ("http", ("201:abcd::1", 5000), ("10.1.2.4", 8080), False, True),
        ("http", ("127.0.0.1", 5000), ("127.0.0.1", 8080), False, False),
        ("http", ("::ffff:127.0.0.1", 5000), ("::ffff:127.0.0.1", 8080), False, False),
        ("http", ("testclient", 50000), ("testserver", 80), False, False),
    ],
)
def test_which_connections_may_carry_the_token(
    scheme: str, client: tuple[str, int], server: tuple[str, int], allow: bool, refused: bool
) -> None:
    assert (clear_underlay_refusal(scheme, client, server, allow) is not None) is refused


# --- x0dash's client follows the same rule ------------------------------------------------------------------


async def test_x0dash_never_sends_the_token_in_clear_to_an_underlay_agent(agent_factory, host_ip: str) -> None:  # type: ignore[no-untyped-def]
    from dashboard.agent_client import AgentClient, AgentError

    agent = agent_factory("strict", {})
    url = f"http://{host_ip}:{agent.port}"
    assert wait_for(lambda: httpx.get(f"{url}/health", timeout=2), 20), agent.log()
    before = get(f"{url}/metrics").text.count('route="/kv/{key:path}"')
    async with AgentClient(timeout=3, token=TOKEN) as client:
        with pytest.raises(AgentError) as refused:
            await client.request("PUT", url, "/kv/probe", dict, json="v2", auth=True)
        assert refused.value.kind == "auth" and refused.value.status is None  # refused before sending
        assert "not sending the API token in clear" in refused.value.detail
        assert "X0_TLS_CERT" in refused.value.detail and "X0_ALLOW_CLEAR_UNDERLAY=true" in refused.value.detail
        # Reads need no token: still served over plain HTTP.
        assert (await client.request("GET", url, "/cluster", dict))["node_id"] == "node-a"
    # Nothing reached the KV route.
    assert get(f"{url}/metrics").text.count('route="/kv/{key:path}"') == before
    # Allowed on x0dash's side only: the agent's own rule still refuses it, and x0dash shows why.
    async with AgentClient(timeout=3, token=TOKEN, allow_clear=True) as client:
        with pytest.raises(AgentError) as by_agent:
            await client.request("PUT", url, "/kv/probe", dict, json="v2", auth=True)
        assert by_agent.value.status == 403 and "in clear over the underlay" in by_agent.value.detail
    # Loopback never leaves the host: sent.
    async with AgentClient(timeout=3, token=TOKEN) as client:
        loop_url = f"http://127.0.0.1:{agent.port}"
        r = wait_for(lambda: httpx.get(f"{loop_url}/cluster", timeout=2).json().get("leader_id"), 30)
        assert r, agent.log()
        entry = await client.request("PUT", loop_url, "/kv/probe", dict, json="v2", auth=True)
        assert entry["key"] == "probe"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not found (makes the test certificate)")
async def test_x0dash_uses_https_when_the_agent_serves_it(agent_factory, host_ip: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from dashboard.agent_client import AgentClient

    cert, key = self_signed(tmp_path, host_ip)
    agent = agent_factory("tls", {"X0_TLS_CERT": str(cert), "X0_TLS_KEY": str(key)})
    trust = ssl.create_default_context(cafile=str(cert))
    https = f"https://{host_ip}:{agent.port}"
    assert wait_for(lambda: httpx.get(f"{https}/cluster", timeout=2, verify=trust).json().get("leader_id"), 30)
    given = f"http://{host_ip}:{agent.port}"  # as a source that does not know about TLS lists it
    async with AgentClient(timeout=3, token=TOKEN, ca_file=str(cert)) as client:
        entry = await client.request("PUT", given, "/kv/probe", dict, json="v3", auth=True)
        assert entry["key"] == "probe"
        assert (await client.request("GET", given, "/cluster", dict))["node_id"] == "node-a"
    assert get(f"{https}/kv/probe", params={"raw": "true"}, verify=trust).content == b'"v3"'


# --- agents forwarding writes follow it too -------------------------------------------------------------------


def client_and_voter(agents: list[AgentProcess], scheme: str, verify: ssl.SSLContext | bool = True):  # type: ignore[no-untyped-def]
    """(client, voter) once the single voter leads and the other agent forwards to it."""

    def roles() -> dict[str, AgentProcess] | None:
        found = {}
        for a in agents:
            c = httpx.get(f"{scheme}://127.0.0.1:{a.port}/cluster", timeout=2, verify=verify).json()
            found[c["role"]] = a
            if c["role"] == "client" and not c["leader_id"]:
                return None
        return found if set(found) == {"leader", "client"} else None

    found = wait_for(roles, timeout=30, interval=0.3)
    assert found, "\n".join(a.log() for a in agents)
    return found["client"], found["leader"]


def test_a_client_agent_never_forwards_the_token_in_clear(agents_factory) -> None:  # type: ignore[no-untyped-def]
    agents = agents_factory("pair", {}, ("node-a", "node-b"))
    client, voter = client_and_voter(agents, "http")
    # The write reaches the client agent over loopback (allowed); its voter is on the underlay in clear.
    r = httpx.put(f"http://127.0.0.1:{client.port}/kv/fwd", content=b"x", headers=AUTH, timeout=5)
    assert r.status_code == 503, r.text
    assert r.headers["x-x0-outcome"] == "not-applied"
    assert "not forwarding the API token in clear" in r.json()["detail"]
    # Nothing reached the voter: the key does not exist there, and its KV route saw no write.
    assert httpx.get(f"http://127.0.0.1:{voter.port}/kv/fwd", timeout=3).status_code == 404
    assert 'method="PUT",route="/kv/{key:path}"' not in httpx.get(f"http://127.0.0.1:{voter.port}/metrics").text
    # Reads carry no token: forwarded as before (the linearizable read goes through the voter).
    assert httpx.get(f"http://127.0.0.1:{client.port}/kv/fwd", timeout=5).status_code == 404


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not found (makes the test certificate)")
def test_a_client_agent_forwards_writes_over_https(agents_factory, host_ip: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cert, key = self_signed(tmp_path, host_ip)
    tls = {"X0_TLS_CERT": str(cert), "X0_TLS_KEY": str(key), "X0_TLS_CA": str(cert)}
    agents = agents_factory("tlspair", tls, ("node-a", "node-b"))
    trust = ssl.create_default_context(cafile=str(cert))
    client, voter = client_and_voter(agents, "https", trust)
    r = httpx.put(f"https://127.0.0.1:{client.port}/kv/fwd", content=b"x", headers=AUTH, timeout=5, verify=trust)
    assert r.status_code == 200, r.text + client.log()
    got = httpx.get(f"https://127.0.0.1:{voter.port}/kv/fwd", params={"raw": "true"}, timeout=3, verify=trust)
    assert got.content == b"x"


def test_the_token_guard_runs_on_the_event_loop() -> None:
    # Litestar hands a sync guard to a worker thread on every request it guards: a thread round trip per KV write.
    # As a coroutine it runs inline; a leader took 4 of 5 runs more writes/s and 5 of 5 a lower p99 that way
    # (bench/results/kv-guard-2026-12-04.txt).
    assert inspect.iscoroutinefunction(require_token)
