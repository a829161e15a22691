"""No request can make a real agent answer 500: a batch of malformed requests against the `x0-agent` process.

The agent runs beside a real daemon (so handlers take their normal paths). Mutating routes are found in the
served OpenAPI document, so routes added later (drills, MAPE-K) are covered without editing this test.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from agent.localmesh import LocalMesh, MeshOptions

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


class Agent:
    def __init__(self, mesh: LocalMesh) -> None:
        node = mesh.node("node-a")
        self.url, self.port, self.log_path = node.agent_url, node.agent_port, node.log_path
        self.token = mesh.api_token

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def agent(require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    options = MeshOptions(nodes=1, mode="loopback", run_dir=tmp_path_factory.mktemp("x0t-h2-malformed"))
    with LocalMesh(options) as mesh:  # one node: an agent beside a real daemon, healthy when this returns
        yield Agent(mesh)


def raw(port: int, payload: bytes) -> bytes:
    """Send bytes, return whatever comes back before the server closes (or 2 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400 and r.content and r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        assert set(body) == {"status_code", "detail"} and body["status_code"] == r.status_code, (what, body)


def test_malformed_requests_never_get_a_500(agent: Agent) -> None:
    spec = httpx.get(agent.url + "/schema/openapi.json", timeout=5).json()
    paths = list(spec["paths"])
    mutating = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m in ("post", "put", "delete")]
    with httpx.Client(base_url=agent.url, timeout=5) as c:
        # every documented route with every method, odd query strings and trailing junk
        for path in paths:
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE", "FROB"]:
                check(c.request(method, path), f"{method} {path}")
            for query in ["?a=%ZZ", "?%00=%00", "?since=yesterday&since=1", "?" + "x=1&" * 2000, "?since=1e999"]:
                check(c.get(path + query), f"GET {path}{query[:40]}")
            check(c.get(path + "/extra/../junk"), f"{path}/extra")
        # hostile paths
        for path in [
            "/%00",
            "/../../etc/passwd",
            "/mesh/%ff%fe",
            "//health",
            "/health/",
            "/mesh/peers/x",
            "/" + "a" * 8000,
            "/mesh/" + "%2e%2e/" * 200,
            "/\u00e9\u00e8",
            "/schema/../metrics",
        ]:
            check(c.get(path), f"GET {path[:40]}")
        # bodies to every mutating route (none in the base agent; drills/MAPE-K add some)
        bodies = [
            b"",
            b"{",
            b"null",
            b"[]",
            b'{"kind": 1}',
            b'{"kind": "partition", "duration_s": -1}',
            b'{"kind": "partition", "duration_s": 1e309}',
            b"\xff\xfe\x00",
            b"x" * 200_000,
        ]
        assert mutating, "no mutating route in the OpenAPI document"
        codes: dict[str, set[int]] = {}
        for method, path in mutating:
            concrete = path.replace("{", "").replace("}", "")  # path params as literal garbage
            # The guard first: a wrong token is refused before the body is read (so the bodies below carry the
            # real one, or they would never reach a parser).
            r = c.request(method, concrete, content=b"{", headers={"authorization": "Bearer nope"})
            assert r.status_code == 401, f"{method} {path} with a wrong token: {r.status_code}"
            for body in bodies:
                for ctype in ["application/json", "text/plain", "multipart/form-data; boundary=x"]:
                    what = f"{method} {path} {ctype} {body[:20]!r}"
                    r = c.request(
                        method,
                        concrete,
                        content=body,
                        headers={"content-type": ctype, "authorization": f"Bearer {agent.token}"},
                    )
                    check(r, what)
                    assert r.status_code not in (401, 403), f"{what}: the real token was refused"
                    codes.setdefault(f"{method} {path}", set()).add(r.status_code)
        # A route that declares a JSON body parsed every one of these and refused it as malformed (none is a valid
        # request); one that takes no body (or raw bytes, /kv) only had to stay below 500.
        parsed = [
            f"{m} {p}"
            for m, p in mutating
            if "application/json" in (spec["paths"][p][m.lower()].get("requestBody") or {}).get("content", {})
        ]
        assert parsed, "no route declares a JSON body: the parser checks below would test nothing"
        for route in parsed:
            assert 400 in codes[route] and codes[route] <= {400, 413, 415}, (route, codes[route])
        # odd headers
        check(c.get("/health", headers={"host": "bad host\\name"}), "bad host")
        check(c.get("/health", headers={"x-junk": "y" * 6000}), "big header")
        check(c.get("/health", headers={"accept": "application/xml"}), "accept xml")
    # not HTTP at all: the server may answer 400 or close, never 5xx
    for payload in [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
        b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]:
        answer = raw(agent.port, payload)
        assert not answer.startswith(b"HTTP/1.1 5"), (payload, answer[:200])
    # the agent is still healthy, and it never counted a 5xx
    r = httpx.get(agent.url + "/health", timeout=5)
    assert r.status_code == 200, r.text
    metrics = httpx.get(agent.url + "/metrics", timeout=5).text
    assert 'status="500"' not in metrics  # (503 is legitimate: /health before the first snapshot)
    assert "Traceback" not in agent.log(), agent.log()
