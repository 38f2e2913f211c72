"""The systemd units pass `systemd-analyze verify`, their MemoryDenyWriteExecute= holds for
the numeric and wire libraries, and the sd_notify client speaks the protocol to real
datagram sockets."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgectl.app.sdnotify import Notifier

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("edgectl.service", "edgectl-sim.service")
INSTALLED_BINARY = "/opt/edgectl/venv/bin/edgectl"
# The console script next to the running interpreter: the one this checkout installed.
CONSOLE_SCRIPT = Path(sys.executable).parent / "edgectl"

# A unit name, as systemd spells one, anywhere in a line.
_UNIT_NAME = re.compile(
    r"[A-Za-z0-9:_.\\@-]+\.(?:service|socket|target|mount|automount|swap|timer|path|slice|scope|device)\b"
)


def systemd_analyze() -> str:
    """The systemd-analyze binary; a missing one fails in CI and skips elsewhere."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        message = "systemd-analyze not found (Debian package: systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run must install it")
        pytest.skip(message)
    return tool


def unit_copy(unit: str, directory: Path, binary: Path = CONSOLE_SCRIPT) -> Path:
    """The unit with ExecStart= pointed at `binary` and every other line unchanged."""
    text = (ROOT / "systemd" / unit).read_text(encoding="utf-8")
    prefix = f"ExecStart={INSTALLED_BINARY} "
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(starts) == 1, f"{unit}: expected one ExecStart= line"
    assert lines[starts[0]].startswith(prefix), f"{unit}: ExecStart= must run {INSTALLED_BINARY}"
    lines[starts[0]] = f"ExecStart={binary} " + lines[starts[0]][len(prefix) :]
    path = directory / unit
    path.write_text("".join(lines), encoding="utf-8")
    return path


def verify(path: Path) -> tuple[int, list[str], list[str]]:
    """Run `systemd-analyze verify`: its status, the lines about this unit, the others."""
    env = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="cat")
    result = subprocess.run(
        [systemd_analyze(), "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    ours: list[str] = []
    others: list[str] = []
    for line in (result.stderr + result.stdout).splitlines():
        if not line.strip():
            continue
        names = {Path(name).name for name in _UNIT_NAME.findall(line)}
        # Only a line that names some other unit, and not this one, is another unit's
        # business (this host's own units); a line naming no unit counts as ours.
        if names and path.name not in names and str(path) not in line:
            others.append(line)
        else:
            ours.append(line)
    return result.returncode, ours, others


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT}: the edgectl console script is missing"
    status, ours, others = verify(unit_copy(unit, tmp_path))
    assert not ours, "systemd-analyze verify:\n" + "\n".join(ours)
    assert status == 0, "systemd-analyze verify failed:\n" + "\n".join(others)


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    # Guards the check itself: a misspelt key and a missing binary must show up as ours.
    path = unit_copy("edgectl.service", tmp_path, binary=tmp_path / "no-such-edgectl")
    path.write_text(
        path.read_text(encoding="utf-8").replace("LockPersonality=", "LockPersonalty="),
        encoding="utf-8",
    )
    status, ours, _ = verify(path)
    assert status != 0
    assert any("LockPersonalty" in line for line in ours), ours
    assert any("no-such-edgectl" in line for line in ours), ours


# Linux's per-process counterpart of MemoryDenyWriteExecute= (prctl PR_SET_MDWE, 6.3+):
# memory never becomes writable and executable at once, nor executable after the fact.
_MDWE_CHILD = textwrap.dedent(
    """
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError:
        pass
    else:
        sys.exit("a writable and executable mapping was allowed: the rule is not in force")
    import argparse, importlib
    import aiohttp, asyncua, cryptography.hazmat.primitives.asymmetric.ec as ec
    import numpy, pymodbus.client, scipy.sparse.linalg, structlog
    from edgectl import kernels
    if not kernels.COMPILED:
        sys.exit("the compiled kernels are not built")
    ec.generate_private_key(ec.SECP256R1())
    site, snapshot = sys.argv[1:3]
    for command, argv in (("powerflow", [site]), ("dispatch", [site, "--snapshot", snapshot])):
        module = importlib.import_module(f"edgectl.cli.{command}")
        parser = argparse.ArgumentParser(prog=command)
        module.add_arguments(parser)
        if module.run(parser.parse_args(argv)) != 0:
            sys.exit(f"edgectl {command} failed")
    """
)


def test_kernels_need_no_writable_executable_memory() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _MDWE_CHILD,
            str(ROOT / "examples" / "small_site.toml"),
            str(ROOT / "examples" / "small_snapshot.json"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, EDGECTL_REQUIRE_CEXT="1"),
        check=False,
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound as systemd's would be, and its $NOTIFY_SOCKET value."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        name = str(path)
    else:
        name = f"@edgectl-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name[1:].encode())
    sock.settimeout(5.0)
    try:
        yield sock, name
    finally:
        sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_messages_arrive_as_sent(receiver: tuple[socket.socket, str]) -> None:
    sock, name = receiver
    with Notifier.from_environment({"NOTIFY_SOCKET": name}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert received(sock) == "READY=1"
        assert notifier.ready("NORMAL, cycle 12 ms")
        assert received(sock) == "READY=1\nSTATUS=NORMAL, cycle 12 ms"
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1"
        assert notifier.status("DEGRADED, cycle 40 ms")
        assert received(sock) == "STATUS=DEGRADED, cycle 40 ms"
        assert notifier.stopping()
        assert received(sock) == "STOPPING=1"
        assert notifier.notify(STATUS="x", ERRNO=5)
        assert received(sock) == "STATUS=x\nERRNO=5"


def test_reloading_carries_the_monotonic_time(receiver: tuple[socket.socket, str]) -> None:
    sock, name = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    assert notifier.reloading()
    reloading, stamp = received(sock).split("\n")
    assert reloading == "RELOADING=1"
    assert re.fullmatch(r"MONOTONIC_USEC=\d+", stamp)


def test_a_status_text_cannot_forge_an_assignment(receiver: tuple[socket.socket, str]) -> None:
    sock, name = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    assert notifier.status("bad\nREADY=1")
    assert received(sock) == "STATUS=bad READY=1"


def test_the_environment_is_read_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, name = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", name)
    assert Notifier.from_environment().watchdog()
    assert received(sock) == "WATCHDOG=1"


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_notify_socket_nothing_is_sent(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (Notifier.from_environment(env), Notifier.from_environment()):
        assert not notifier.enabled
        assert not notifier.ready("NORMAL")
        assert not notifier.watchdog()
        assert not notifier.status("NORMAL")
        assert not notifier.reloading()
        assert not notifier.stopping()
        notifier.close()


def test_an_address_that_is_no_unix_socket_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgectl.app.sdnotify"):
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:9999"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert "vsock:2:9999" in caplog.text


def test_a_vanished_socket_is_logged_once_and_never_raises(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, name = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    sock.close()
    if not name.startswith("@"):
        Path(name).unlink()
    with caplog.at_level(logging.WARNING, logger="edgectl.app.sdnotify"):
        assert not notifier.ready()
        for _ in range(5):
            assert not notifier.watchdog()
        assert not notifier.stopping()
    warnings = [r for r in caplog.records if r.name == "edgectl.app.sdnotify"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING
    assert name in warnings[0].getMessage()


@pytest.mark.timeout(30)
def test_a_full_queue_drops_messages_without_blocking(
    receiver: tuple[socket.socket, str],
) -> None:
    # Nobody reads: the kernel queue of an AF_UNIX datagram socket fills after a few
    # messages, where a blocking send would hang for good.
    _, name = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    sent = [notifier.status("x" * 1000) for _ in range(2000)]
    assert sent[0]
    assert not all(sent)


def test_a_bad_key_is_refused_even_when_disabled() -> None:
    with pytest.raises(ValueError, match="ready"):
        Notifier.from_environment({}).notify(ready=1)


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    here = str(os.getpid())
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": here})
    assert notifier.watchdog_timeout_s == 10.0
    assert notifier.watchdog_interval_s == 5.0
    assert Notifier.from_environment({"WATCHDOG_USEC": "3000000"}).watchdog_interval_s == 1.5


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "ten seconds"},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)},
        {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "main"},
    ],
    ids=["unset", "zero", "negative", "garbage", "other-pid", "bad-pid"],
)
def test_no_watchdog_unless_it_is_meant_for_this_process(env: dict[str, str]) -> None:
    notifier = Notifier.from_environment(env)
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog_timeout_s is None
