"""daemon_config (real `yggdrasil -genconf`, `-address`, `-subnet`) and DaemonProcess on real daemons."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.yggdrasil import daemon_config
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.daemon import DaemonProcess, DaemonStartError
from agent.yggdrasil.daemon_config import (
    DaemonConfigError,
    YggdrasilBinaryMissing,
    build_config,
    create_config,
    find_yggdrasil_binary,
    public_key_of,
    read_identity,
    write_config,
)
from agent.yggdrasil.errors import AdminUnavailable
from tests.agent.yggdrasil.support import short_tmp_dir

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Every DaemonProcess a test registers here is stopped even if the test fails."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop(timeout=2)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- daemon_config ---------------------------------------------------------------------------------------------


def test_create_config_writes_private_file_and_identity(require_yggdrasil: str, run_dir: Path) -> None:
    path = run_dir / "n.conf"
    ident = create_config(
        path,
        "node-x",
        admin_listen=f"unix://{run_dir}/n.sock",
        listen=["tls://127.0.0.1:0"],
        binary=require_yggdrasil,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = json.loads(path.read_text())
    assert config["Listen"] == ["tls://127.0.0.1:0"]
    assert config["AdminListen"] == f"unix://{run_dir}/n.sock"
    assert (config["IfName"], config["Peers"], config["MulticastInterfaces"]) == ("none", [], [])
    assert config["NodeInfo"] == {"name": "node-x"}
    # 0.4.7 layout: both keys; the public key is the second half of the private one.
    assert ident.public_key == config["PublicKey"] == config["PrivateKey"][64:]
    assert ident.address.startswith(("200:", "201:", "202:", "203:")) or ident.address[0] == "2"
    assert ident.subnet.startswith("3") and ident.subnet.endswith("::/64")
    # Same prefix: the subnet is derived from the same key bits as the address.
    assert ident.subnet.split(":")[1:4] == ident.address.split(":")[1:4]
    assert read_identity(path, require_yggdrasil) == ident


def test_two_configs_have_different_keys(require_yggdrasil: str, run_dir: Path) -> None:
    one = create_config(run_dir / "1.conf", "n1", admin_listen="none", binary=require_yggdrasil)
    two = create_config(run_dir / "2.conf", "n2", admin_listen="none", binary=require_yggdrasil)
    assert one.public_key != two.public_key and one.address != two.address


def test_write_config_tightens_existing_file(run_dir: Path) -> None:
    path = run_dir / "loose.conf"
    path.write_text("{}")
    path.chmod(0o644)
    write_config({"PrivateKey": "00"}, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"PrivateKey": "00"}
    assert [p.name for p in run_dir.iterdir()] == ["loose.conf"]  # no temp file left


def test_build_config_options_and_validation() -> None:
    base = {"PrivateKey": "ab" * 64, "PublicKey": "ab" * 32, "Peers": ["tcp://x:1"], "IfName": "auto"}
    config = build_config(
        "n",
        admin_listen="tcp://127.0.0.1:9001",
        if_name="ygg0",
        peers=["tls://127.0.0.1:1"],
        base=base,
        extra={"IfMTU": 1280},
    )
    assert config["IfName"] == "ygg0" and config["Peers"] == ["tls://127.0.0.1:1"] and config["IfMTU"] == 1280
    assert base["Peers"] == ["tcp://x:1"]  # the base is not modified
    assert build_config("n", admin_listen="x", if_name="auto", base=base)["IfName"] == "auto"
    with pytest.raises(ValueError, match="IfName"):
        build_config("n", admin_listen="x", if_name="much-too-long-ifname", base=base)
    with pytest.raises(ValueError, match="IfName"):
        build_config("n", admin_listen="x", if_name="a b", base=base)
    with pytest.raises(ValueError, match="admin_listen"):
        build_config("n", admin_listen="", base=base)


def test_public_key_of_both_layouts() -> None:
    seed, pub = "11" * 32, "AB" * 32
    assert public_key_of({"PrivateKey": seed + pub, "PublicKey": pub}) == pub.lower()  # 0.4
    assert public_key_of({"PrivateKey": seed + pub}) == pub.lower()  # 0.5: no PublicKey key
    with pytest.raises(DaemonConfigError, match="PrivateKeyPath"):
        public_key_of({"PrivateKeyPath": "/etc/yggdrasil/key.pem"})
    with pytest.raises(DaemonConfigError, match="no usable"):
        public_key_of({"PrivateKey": "zz"})


def test_read_identity_reports_the_daemon_error(require_yggdrasil: str, run_dir: Path) -> None:
    bad = run_dir / "bad.conf"
    bad.write_text('{"PrivateKey": "1234", "PublicKey": "' + "ab" * 32 + '"}')
    with pytest.raises(DaemonConfigError) as info:
        read_identity(bad, require_yggdrasil)
    assert "failed (exit" in str(info.value) and "panic" in str(info.value)
    with pytest.raises(DaemonConfigError, match="cannot read config"):
        read_identity(run_dir / "absent.conf", require_yggdrasil)


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    with pytest.raises(YggdrasilBinaryMissing, match="not found"):
        find_yggdrasil_binary(str(run_dir / "no-such-yggdrasil"))
    monkeypatch.setenv("PATH", str(run_dir))
    monkeypatch.setattr(daemon_config, "DEBIAN_BINARY", str(run_dir / "nope"))
    with pytest.raises(YggdrasilBinaryMissing, match="apt-get install yggdrasil"):
        find_yggdrasil_binary()


# --- DaemonProcess ---------------------------------------------------------------------------------------------


def make_daemon(
    binary: str, run_dir: Path, name: str, daemons: list[DaemonProcess], **kw: object
) -> DaemonProcess:
    create_config(run_dir / f"{name}.conf", name, admin_listen=f"unix://{run_dir}/{name}.sock", binary=binary)
    daemon = DaemonProcess(run_dir / f"{name}.conf", log_path=run_dir / f"{name}.log", binary=binary, **kw)  # type: ignore[arg-type]
    daemons.append(daemon)
    return daemon


async def test_lifecycle_kill_restart_stop(
    require_yggdrasil: str, run_dir: Path, daemons: list[DaemonProcess]
) -> None:
    daemon = make_daemon(require_yggdrasil, run_dir, "life", daemons)
    ident = read_identity(daemon.config_path, require_yggdrasil)
    sock = run_dir / "life.sock"
    assert not daemon.is_running() and daemon.pid is None and daemon.stop() is None
    daemon.start()
    info = await daemon.wait_ready_async(10)
    assert daemon.is_running() and info.key == ident.public_key
    with pytest.raises(DaemonStartError, match="already running"):
        daemon.start()

    # Crash: the socket file stays behind, the client gets "connection refused" on it.
    assert daemon.kill() == -signal.SIGKILL
    assert not daemon.is_running() and sock.exists()
    with pytest.raises(AdminUnavailable, match="stale socket"):
        await AdminClient(f"unix://{sock}", 1.0).get_self()

    # The daemon clears its own stale socket on start.
    daemon.start()
    await daemon.wait_ready_async(10)
    assert daemon.stop(timeout=5) == 0  # SIGTERM: clean exit
    assert not sock.exists() and not daemon.is_running()
    assert "starting" in daemon.log_path.read_text() and "Stopped" in daemon.log_path.read_text()


def test_sync_wait_ready_and_context_manager(
    require_yggdrasil: str, run_dir: Path, daemons: list[DaemonProcess]
) -> None:
    daemon = make_daemon(require_yggdrasil, run_dir, "ctx", daemons)
    with daemon:
        assert daemon.wait_ready(10).address
        pid = daemon.pid
        assert pid is not None and pid_alive(pid)
    assert not daemon.is_running() and not (run_dir / "ctx.sock").exists()


async def test_wait_ready_reports_early_exit(
    require_yggdrasil: str, run_dir: Path, daemons: list[DaemonProcess]
) -> None:
    """A second daemon on a socket that is in use exits at once; wait_ready says so with the log."""
    first = make_daemon(require_yggdrasil, run_dir, "busy", daemons)
    first.start()
    await first.wait_ready_async(10)
    create_config(
        run_dir / "second.conf", "second", admin_listen=f"unix://{run_dir}/busy.sock", binary=require_yggdrasil
    )
    second = DaemonProcess(run_dir / "second.conf", log_path=run_dir / "second.log", binary=require_yggdrasil)
    daemons.append(second)
    second.start()
    with pytest.raises(DaemonStartError) as info:
        await second.wait_ready_async(10)
    assert "exited with" in str(info.value) and "in use" in str(info.value)
    second.stop()  # must not delete the socket: it is the first daemon's, and live
    assert first.is_running() and (run_dir / "busy.sock").exists()
    assert (await AdminClient(first.admin_endpoint, 2.0).get_self()).key == read_identity(
        first.config_path
    ).public_key


async def test_wait_ready_times_out(require_yggdrasil: str, run_dir: Path, daemons: list[DaemonProcess]) -> None:
    # Admin endpoint pointed somewhere the daemon does not listen: it runs, but never becomes "ready".
    create_config(
        run_dir / "deaf.conf", "deaf", admin_listen=f"unix://{run_dir}/real.sock", binary=require_yggdrasil
    )
    daemon = DaemonProcess(
        run_dir / "deaf.conf",
        log_path=run_dir / "deaf.log",
        binary=require_yggdrasil,
        admin_endpoint=f"unix://{run_dir}/elsewhere.sock",
    )
    daemons.append(daemon)
    daemon.start()
    start = time.monotonic()
    with pytest.raises(DaemonStartError, match=r"not answering after 0\.5 s"):
        await daemon.wait_ready_async(0.5)
    assert time.monotonic() - start < 2.0
    assert daemon.is_running()


def test_bad_config_fails_before_spawning(run_dir: Path) -> None:
    (run_dir / "noadmin.conf").write_text("{}")
    with pytest.raises(DaemonStartError, match="AdminListen"):
        DaemonProcess(run_dir / "noadmin.conf", log_path=run_dir / "x.log")
    (run_dir / "off.conf").write_text('{"AdminListen": "none"}')
    with pytest.raises(ValueError, match="disabled"):
        DaemonProcess(run_dir / "off.conf", log_path=run_dir / "x.log")


def test_daemon_dies_with_its_parent(require_yggdrasil: str, run_dir: Path) -> None:
    """SIGKILL the process that started the daemon: the kernel kills the daemon too (PR_SET_PDEATHSIG)."""
    create_config(
        run_dir / "orphan.conf", "orphan", admin_listen=f"unix://{run_dir}/o.sock", binary=require_yggdrasil
    )
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from agent.yggdrasil.daemon import DaemonProcess
        d = DaemonProcess(Path({str(run_dir / "orphan.conf")!r}), log_path=Path({str(run_dir / "o.log")!r}),
                          binary={require_yggdrasil!r})
        d.start()
        d.wait_ready(10)
        print(d.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    daemon_pid = None
    try:
        assert parent.stdout is not None
        daemon_pid = int(parent.stdout.readline())
        assert pid_alive(daemon_pid)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 3
        while pid_alive(daemon_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(daemon_pid), "daemon outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if daemon_pid is not None and pid_alive(daemon_pid):
            os.kill(daemon_pid, signal.SIGKILL)


@pytest.mark.root
def test_runs_inside_a_network_namespace(
    require_root: None, require_yggdrasil: str, run_dir: Path, daemons: list[DaemonProcess]
) -> None:
    ns = f"x0t-ygg-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        daemon = make_daemon(require_yggdrasil, run_dir, "ns", daemons, netns=ns)
        cmd = daemon.command()
        assert Path(cmd[0]).name == "ip" and os.access(cmd[0], os.X_OK), cmd
        assert cmd[1:4] == ["netns", "exec", ns], cmd
        assert Path(cmd[4]).name == "yggdrasil" and cmd[5:] == ["-useconffile", str(daemon.config_path)], cmd
        daemon.start()
        daemon.wait_ready(10)
        pid = daemon.pid
        assert pid is not None
        # The pid we hold is the daemon itself (ip netns exec execs), inside the namespace.
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert Path(f"/proc/{pid}/exe").resolve().name == "yggdrasil"
        assert daemon.stop() == 0
    finally:
        for daemon in daemons:
            daemon.stop(timeout=2)
        subprocess.run(["ip", "netns", "delete", ns], check=False)
