"""`x0dash serve` (issue 12, the web view): the dashboard in a real headless Chromium through textual-serve. The
page loads, the overview shows the mesh, a key press reaches the app; the screenshot is kept as a test artifact
(test-artifacts/, or $X0_TEST_ARTIFACTS). A non-loopback bind needs the access token and refuses requests without
it. Chromium is driven over the DevTools protocol (aiohttp, which textual-serve brings), no extra test package.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from .conftest import closed_port

pytestmark = [pytest.mark.slow, pytest.mark.yggdrasil]

ARTIFACTS = Path(os.environ.get("X0_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,800",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]
# Every frame the app sends the page, as text without terminal escapes: what the terminal in the page shows.
TAP = r"""
(() => {
  window.__x0 = "";
  const decoder = new TextDecoder();
  const Real = window.WebSocket;
  const strip = (s) => s
    .replace(/\x1b\[[0-9;?<=>]*[ -\/]*[@-~]/g, "")
    .replace(/\x1b[\]P_][^\x07\x1b]*(\x07|\x1b\\)/g, "");
  function Tapped(...args) {
    const ws = new Real(...args);
    ws.addEventListener("message", (ev) => {
      if (ev.data instanceof ArrayBuffer) window.__x0 += strip(decoder.decode(ev.data, { stream: true }));
    });
    return ws;
  }
  Tapped.prototype = Real.prototype;
  Object.assign(Tapped, Real);
  window.WebSocket = Tapped;
})();
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium not found (apt-get install chromium; ./dev.sh installs it as root)")
    return found


def _free_port() -> int:
    return closed_port()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with _suppress():
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError)  # type: ignore[arg-type]


def _serve(
    args: list[str], port: int, log: Path, env: dict[str, str] | None = None, within: float = 20
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard.cli", *args, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its browser tabs' dashboards are its children: stopped with it
            env=env,
        )
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/css/xterm.css", timeout=1, trust_env=False)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise AssertionError(f"x0dash serve exited {proc.returncode}: {log.read_text()}") from None
            time.sleep(0.2)
    _stop(proc)
    raise AssertionError(f"x0dash serve did not listen within {within:g} s: {log.read_text()}")


@pytest.fixture
def loopback_mesh(require_yggdrasil: str, tmp_path: Path) -> Iterator[Any]:
    from agent.localmesh import LocalMesh, MeshOptions

    with LocalMesh(MeshOptions(nodes=2, mode="loopback", run_dir=tmp_path / "mesh")) as mesh:
        yield mesh


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def shown(self) -> str:
        result = await self("Runtime.evaluate", expression="window.__x0 || ''", returnByValue=True)
        return str(result.get("result", {}).get("value", ""))

    async def until_shown(self, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while text not in (shown := await self.shown()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {text!r}; last output: {shown[-600:]!r}")
            await asyncio.sleep(0.25)

    async def press(self, key: str) -> None:
        code = f"Key{key.upper()}" if key.isalpha() else ""
        common = {"key": key, "code": code, "windowsVirtualKeyCode": ord(key.upper())}
        await self("Input.dispatchKeyEvent", type="keyDown", text=key, **common)
        await self("Input.dispatchKeyEvent", type="keyUp", **common)


async def _page(port: int) -> tuple[aiohttp.ClientSession, DevTools]:
    session = aiohttp.ClientSession()
    targets = await (await session.get(f"http://127.0.0.1:{port}/json/list")).json()
    page = next(t for t in targets if t.get("type") == "page")
    ws = await session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
    return session, DevTools(ws)


async def _drive(devtools_port: int, url: str) -> dict[str, bytes]:
    """Open the dashboard, wait for the mesh, press `d`; the screenshots taken on the way."""
    session, cdp = await _page(devtools_port)
    shots: dict[str, bytes] = {}
    try:
        await cdp("Page.enable")
        await cdp("Page.addScriptToEvaluateOnNewDocument", source=TAP)
        await cdp("Page.navigate", url=url)
        # The page loads, a dashboard process starts for it, and the overview shows the mesh whole.
        await cdp.until_shown("nodes 2/2 up", within=60)
        await cdp.until_shown("node-b", within=5)
        await asyncio.sleep(0.5)  # let the page draw what it received
        shots["overview"] = base64.b64decode((await cdp("Page.captureScreenshot", format="png"))["data"])
        # A key press in the page reaches the app: `d` opens the drills screen.
        await cdp("Runtime.evaluate", expression="window.__x0 = ''")
        await cdp("Input.dispatchMouseEvent", type="mousePressed", x=640, y=400, button="left", clickCount=1)
        await cdp("Input.dispatchMouseEvent", type="mouseReleased", x=640, y=400, button="left", clickCount=1)
        await cdp.press("d")
        await cdp.until_shown("no drill yet: pick kind, target and duration", within=15)
        await asyncio.sleep(0.5)
        shots["drills"] = base64.b64decode((await cdp("Page.captureScreenshot", format="png"))["data"])
    finally:
        await session.close()
    return shots


def test_dashboard_in_headless_chromium(loopback_mesh: Any, tmp_path: Path) -> None:
    chromium = _chromium()
    port = _free_port()
    args = ["--inventory", str(loopback_mesh.inventory_path), "--interval", "0.5", "serve"]
    server = _serve(args, port, tmp_path / "serve.log")
    profile = tmp_path / "chromium-profile"  # fresh: no state from another run
    browser = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert browser.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port within 30 s"
            time.sleep(0.1)
        shots = asyncio.run(_drive(int(port_file.read_text().split()[0]), f"http://127.0.0.1:{port}/"))
    finally:
        _stop(browser)
        _stop(server)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, png in shots.items():
        assert png[:4] == b"\x89PNG" and len(png) > 5000, name
        (ARTIFACTS / f"web-view-{name}.png").write_bytes(png)


def test_non_loopback_bind_needs_the_token(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "X0DASH_TOKEN"}
    server = _serve(
        ["--inventory", str(tmp_path / "none.json"), "serve", "--host", "0.0.0.0"],
        port,
        tmp_path / "serve.log",
        env=env,
    )
    try:
        log = (tmp_path / "serve.log").read_text()
        printed = next(line for line in log.splitlines() if "?token=" in line)
        token = printed.split("?token=", 1)[1].strip()
        assert len(token) >= 16
        base = f"http://127.0.0.1:{port}/"
        with httpx.Client(trust_env=False, timeout=5) as c:
            assert c.get(base).status_code == 403
            assert c.get(base, params={"token": "wrong" * 5}).status_code == 403
            ok = c.get(base, params={"token": token})
            assert ok.status_code == 200 and "textual" in ok.text.lower()
            assert c.get(f"http://127.0.0.1:{port}/static/css/xterm.css").status_code == 200  # cookie set above
        with httpx.Client(trust_env=False, timeout=5) as fresh:
            assert fresh.get(f"http://127.0.0.1:{port}/ws").status_code == 403  # the app's socket too
    finally:
        _stop(server)


def test_a_short_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from dashboard.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


ESCAPES = re.compile(r"\x1b\[[0-9;?<=>]*[ -/]*[@-~]|\x1b[\]P_][^\x07\x1b]*(?:\x07|\x1b\\)")


async def _tab(port: int, shown: str, within: float) -> aiohttp.ClientWebSocketResponse:
    """A browser tab as textual-serve sees one: its websocket, read until the app shows `shown`."""
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"ws://127.0.0.1:{port}/ws?width=120&height=40", max_msg_size=0)
    ws._x0_session = session  # type: ignore[attr-defined]
    ws._x0_text = ""  # type: ignore[attr-defined]
    ws._x0_decoder = codecs.getincrementaldecoder("utf-8")("replace")  # type: ignore[attr-defined]
    try:
        await _until_shown(ws, shown, within)
    except BaseException:
        await session.close()
        raise
    return ws


async def _until_shown(ws: aiohttp.ClientWebSocketResponse, shown: str, within: float) -> None:
    """Read what the app sends the page (terminal output, escapes stripped) until `shown` is in it."""
    deadline = time.monotonic() + within
    while shown not in ESCAPES.sub("", ws._x0_text):  # type: ignore[attr-defined]
        left = deadline - time.monotonic()
        text = ESCAPES.sub("", ws._x0_text)  # type: ignore[attr-defined]
        if left <= 0:
            raise AssertionError(f"the tab never showed {shown!r}: {text[-400:]!r}")
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            continue
        if msg.type == aiohttp.WSMsgType.BINARY:
            ws._x0_text += ws._x0_decoder.decode(msg.data)  # type: ignore[attr-defined]
        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            raise AssertionError(f"the tab's socket closed: {text[-400:]!r}")


def _group(pgid: int) -> list[int]:
    """Processes of a process group (serve, its shells and its tabs' dashboards)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_serve_local_is_one_mesh_for_every_tab_and_stops_with_serve(
    sig: str, require_yggdrasil: str, tmp_path: Path
) -> None:
    """`x0dash serve --local N` started a mesh per browser tab (textual-serve runs the app per connection): one
    mesh for the server, every tab reads it, and it goes when serve goes. SIGHUP as a closing terminal sends it
    (to the whole process group), SIGTERM as `kill` does (to serve alone)."""
    from agent.localmesh import registry
    from tests.localmesh.support import leftovers

    port = _free_port()
    run_dir = tmp_path / "run"
    args = ["--local", "2", "--mode", "loopback", "--run-dir", str(run_dir), "--interval", "0.5", "serve"]
    log = tmp_path / "serve.log"
    server = _serve(args, port, log, within=60)
    try:
        [mesh_dir] = sorted(run_dir.glob("local-*"))  # serve started it before it listened
        [record] = [r for r in registry.load_all() if Path(r.mesh_dir) == mesh_dir]
        assert record.owner_pid == server.pid  # serve owns it

        async def two_tabs() -> None:
            tabs = []
            try:
                for _ in range(2):  # each tab's dashboard shows that mesh (its name is in the source line)
                    tabs.append(await _tab(port, mesh_dir.name, within=60))
                await asyncio.gather(*(_until_shown(ws, "node-b", within=30) for ws in tabs))
                meshes = sorted(run_dir.glob("local-*"))
                assert meshes == [mesh_dir], f"one mesh for the server, not one per tab: {meshes}"
                mine = [r.id for r in registry.load_all() if Path(r.mesh_dir).parent == run_dir]
                assert mine == [record.id]
                # The tabs are still open when serve stops, as browser tabs would be.
                if sig == "SIGHUP":
                    os.killpg(server.pid, signal.SIGHUP)  # a closing terminal: the whole foreground group
                else:
                    os.kill(server.pid, signal.SIGTERM)
            finally:
                for ws in tabs:
                    await ws._x0_session.close()  # type: ignore[attr-defined]

        asyncio.run(two_tabs())
        code = server.wait(60)
    finally:
        _stop(server)
    text = log.read_text()
    assert code == 128 + signal.Signals[sig].value, text
    assert f"{sig} received; stopped cleanly" in text, text
    assert leftovers(record.id, mesh_dir) == [], text
    deadline = time.monotonic() + 10  # its tabs' dashboards end with it
    while _group(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group(server.pid) == [], "processes of serve's group outlived it"


def test_a_port_in_use_is_said_before_a_local_mesh_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    from dashboard.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run_dir = tmp_path / "run"
        code = main(
            ["--local", "2", "--mode", "loopback", "--run-dir", str(run_dir), "serve", "--port", str(port)]
        )
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert not run_dir.exists() or not any(run_dir.iterdir())  # no mesh started for nothing
