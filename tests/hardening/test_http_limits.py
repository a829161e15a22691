"""Issue 11 items 3 and 6 against a real `x0-agent` process (uvicorn, httptools, the agent's own limits).

3. Silent and slow-header connections are closed after X0_HTTP_REQUEST_TIMEOUT; past X0_HTTP_MAX_CONNECTIONS a
   new client is still served (the oldest idle connection is evicted) and the agent's descriptors stay bounded;
   repeated bad requests do not flood the log.
6. The server and its schema agree: a URL over the limit and a malformed request get the JSON error body,
   OPTIONS names POST, a number sent as a string is refused, request bodies are closed objects in the schema.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent.service.agentproc import AgentProcess, free_port, wait_for

CAP = 32
TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_ID": "node-a",
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "YGGDRASIL_ADMIN": f"unix://{tmp}/none.sock",  # no daemon: /health answers 503, which is an answer
        "X0_API_TOKEN": "secret-token",
        "X0_MAPEK_ENABLED": "false",
        "X0_RAFT_ENABLED": "false",
        "X0_HTTP_MAX_CONNECTIONS": str(CAP),
        "X0_HTTP_REQUEST_TIMEOUT": str(TIMEOUT_S),
    }
    proc = AgentProcess("node-a", port, env, tmp / "agent.log")
    proc.start()
    try:
        assert wait_for(lambda: httpx.get(proc.url + "/health", timeout=1).status_code, 15), proc.log()
        yield proc
    finally:
        proc.stop()


def connect(agent: AgentProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
    return s


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.01)
    try:
        s.recv(4096)  # EOF, or a 408 before it: the server is done with this connection
    except TimeoutError:
        return False
    except OSError:
        pass  # reset
    return True


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raw(agent: AgentProcess, request: bytes) -> tuple[int, dict]:
    with connect(agent) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/json" in head.lower(), head
    return status, json.loads(body)


def test_silent_and_slow_header_connections_are_closed(agent: AgentProcess) -> None:
    silent = [connect(agent) for _ in range(10)]
    slow = [connect(agent) for _ in range(10)]
    for s in slow:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    open_ = silent + slow
    while open_ and time.monotonic() - started < TIMEOUT_S + 5:
        for s in slow:
            try:
                s.sendall(b"X-Slow: 1\r\n")  # a byte now and then never completes the headers
            except OSError:
                pass
        time.sleep(0.25)
        open_ = [s for s in open_ if not closed_by_server(s)]
    took = time.monotonic() - started
    for s in silent + slow:
        s.close()
    assert open_ == [], f"{len(open_)} of 20 connections still open after {took:.1f} s"
    assert took >= TIMEOUT_S - 0.3  # not closed before their time either


def test_a_fresh_client_is_served_past_the_connection_cap(agent: AgentProcess) -> None:
    assert agent.proc is not None
    before = fds(agent.proc.pid)
    held = [connect(agent) for _ in range(CAP * 3)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        r = httpx.get(agent.url + "/health", timeout=1)
        assert r.status_code in (200, 503) and r.json()["node_id"] == "node-a"
        assert time.monotonic() - started < 1.0
        assert fds(agent.proc.pid) <= before + CAP + 2  # evicted connections give their descriptor back
    finally:
        for s in held:
            s.close()
    # The flood is over: its memory is given back to the system once (bench/http_floods.py measures the RSS).
    assert wait_for(lambda: "connection flood over" in agent.log(), 10), agent.log()[-2000:]


def test_limits_and_malformed_requests_get_the_json_error_body(agent: AgentProcess) -> None:
    status, body = raw(agent, b"GET /health?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and body["status_code"] == 414 and "URL longer" in body["detail"]
    status, body = raw(agent, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n")
    assert status == 431 and body["status_code"] == 431
    status, body = raw(agent, b"BLAH\x00 / HTTP/1.1\r\n\r\n")
    assert status == 400 and body["detail"].startswith("malformed HTTP request")


def test_repeated_bad_requests_do_not_flood_the_log(agent: AgentProcess) -> None:
    before = agent.log().count("Invalid HTTP request received")
    for _ in range(200):
        with connect(agent) as s:
            s.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            s.recv(4096)
    after = Path(agent.log_path).read_text(errors="replace").count("Invalid HTTP request received")
    assert after - before <= 10, f"{after - before} log lines for 200 bad requests"


def test_server_and_schema_agree(agent: AgentProcess) -> None:
    r = httpx.options(agent.url + "/drills")
    assert r.status_code == 204 and r.headers["allow"] == "GET, OPTIONS, POST"
    auth = {"Authorization": "Bearer secret-token"}
    r = httpx.post(agent.url + "/drills", json={"kind": "blackhole", "duration_s": "5"}, headers=auth)
    assert r.status_code == 400 and "duration_s" in r.json()["detail"]
    r = httpx.post(agent.url + "/drills", json={"kind": "blackhole", "duration_s": 5, "extra": 1}, headers=auth)
    assert r.status_code == 400 and "extra" in r.json()["detail"]
    schema = httpx.get(agent.url + "/schema/openapi.json").json()
    assert schema["components"]["schemas"]["DrillRequest"]["additionalProperties"] is False
    # The key and request-id rules are in the schema, as the server enforces them (schemathesis warned that
    # most of its generated keys were refused while the schema allowed any string).
    kv = schema["paths"]["/kv/{key}"]
    for op in ("get", "put", "delete"):
        (key,) = [p for p in kv[op]["parameters"] if p["name"] == "key"]
        assert key["schema"]["maxLength"] == 512 and key["schema"]["minLength"] == 1, key
        pattern = re.compile(key["schema"]["pattern"])
        for k, ok in [("a/b.c_d-1", True), ("a b", False), ("/a", False), ("é", False)]:
            assert bool(pattern.search(k)) is ok, (op, k)
    (rid,) = [p for p in kv["put"]["parameters"] if p["name"] == "X-X0-Request-Id"]
    assert re.compile(rid["schema"]["pattern"]).search("x" * 65) is None
    r = httpx.put(agent.url + "/kv/a%20b", content=b"v", headers=auth)
    assert r.status_code == 400 and "invalid key" in r.json()["detail"]
    r = httpx.put(agent.url + "/kv/a/b.c_d-1", content=b"v", headers={**auth, "X-X0-Request-Id": "x" * 65})
    assert r.status_code == 400, r.text
    r = httpx.put(agent.url + "/kv/a/b.c_d-1", content=b"v", headers={**auth, "X-X0-Request-Id": "id-1"})
    # Past validation: this agent runs without Raft.
    assert r.status_code == 503 and "Raft is disabled" in r.json()["detail"], r.text
