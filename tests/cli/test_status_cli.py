"""`edgectl status` and `edgectl dump-cycles` against a real status API on 127.0.0.1 (and on
a unix socket) serving documents built here; and the view they share, on full documents,
on large sites, and on documents whose every value is unknown. Errors are one line with
their exit status and no traceback."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from rich.console import Console

from edgectl.app.api import StatusApi
from edgectl.cli import main
from edgectl.cli import status as status_cli
from edgectl.cli.view import MAX_WIDTH, render_status
from edgectl.errors import EXIT_DEVICE, EXIT_INPUT, EXIT_USAGE
from edgectl.transport import local_api

ROOT = Path(__file__).resolve().parents[2]
STATUS: dict[str, Any] = {
    "site": "demo-small",
    "version": "0.1.0",
    "state": "NORMAL",
    "state_reason": "every input valid",
    "state_since_s": 12.0,
    "uptime_s": 123.4,
    "transitions": [{"t_s": 3.0, "from": "STARTING", "to": "NORMAL", "reason": "inputs valid"}],
    "cycle": {
        "count": 120,
        "period_s": 1.0,
        "last_ms": 1.2,
        "p50_ms": 1.1,
        "p99_ms": 2.3,
        "max_ms": 3.0,
        "overruns": 0,
    },
    "bus": {
        "v_min_v": 792.1,
        "v_max_v": 801.0,
        "v_min_pu": 0.99,
        "v_max_pu": 1.001,
        "measured": True,
    },
    "sources": {
        "pv-1": {
            "kind": "pv",
            "device": "pv-1",
            "valid": True,
            "reason": "",
            "age_s": 0.3,
            "p_w": 300000.0,
            "available_w": 320000.0,
            "limit_w": 310000.0,
            "curtailed_w": 10000.0,
        },
        "wind-1": {
            "kind": "wind",
            "device": "wind-1",
            "valid": False,
            "reason": "no answer within 2 s",
            "age_s": 14.0,
            "p_w": 0.0,
            "available_w": None,
        },
        "bess-1": {
            "kind": "bess",
            "device": "bess-1",
            "valid": True,
            "reason": "",
            "age_s": 0.2,
            "p_w": -50000.0,
            "soc": 0.61,
            "mode": "droop",
        },
        "grid": {"kind": "grid", "device": None, "valid": False, "reason": "no device", "p_w": 0.0},
    },
    "racks": {
        "r01": {
            "tier": 0,
            "device": "r01",
            "valid": True,
            "reason": "",
            "age_s": 0.4,
            "p_w": 98000.0,
            "cap_w": 120000.0,
            "demand_w": 110000.0,
            "on": True,
            "capped": False,
        },
        "r12": {
            "tier": 3,
            "device": "r12",
            "valid": True,
            "reason": "",
            "age_s": 0.4,
            "p_w": 60000.0,
            "cap_w": 60000.0,
            "demand_w": 110000.0,
            "on": True,
            "capped": True,
        },
    },
    "green": {
        "share_rolling": 0.93,
        "window_s": 86400.0,
        "green_share_min": 0.8,
        "grid_budget_w": 20000.0,
        "energy_wh": {"pv": 1.0, "wind": 1.0, "grid": 1.0, "racks": 1.0},
    },
    "decision": {
        "cycle": 120,
        "supply_w": 1.2e6,
        "served_w": 1.1e6,
        "fixed_load_w": 0.0,
        "shed": ["r12"],
        "started": [],
        "reasons": ["tier 3 capped: supply 1.2 MW below demand 1.4 MW"],
        "verify": {
            "converged": True,
            "iterations": 1,
            "collapse_margin": 0.8,
            "violations": ["line l3 at 104 % of its ampacity"],
            "reduced_w": 0.0,
        },
    },
}
CYCLES: dict[str, Any] = {
    "format": "edgectl-cycles/1",
    "site": "demo-small",
    "cycles": [
        {
            "cycle": n,
            "t_s": float(n),
            "state": "NORMAL",
            "snapshot": {"racks": {"r01": {"demand_w": 110000.0}}},
            "dispatch": {"racks": {"r01": {"cap_w": 120000.0}}},
            "verified": {"converged": True},
            "reasons": [],
        }
        for n in range(1, 601)
    ],
}


class FakeProvider:
    """Answers the documents built here, and keeps what it was asked."""

    def __init__(self) -> None:
        self.document = copy.deepcopy(STATUS)
        self.asked_last: list[int | None] = []

    def status(self) -> dict[str, Any]:
        return self.document

    def cycles(self, last: int | None = None) -> dict[str, Any]:
        self.asked_last.append(last)
        cycles = CYCLES["cycles"] if last is None else CYCLES["cycles"][-last:]
        return {**CYCLES, "cycles": cycles}


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest_asyncio.fixture
async def daemon(provider: FakeProvider) -> AsyncIterator[str]:
    """The address of a status API serving `provider` on 127.0.0.1."""
    async with StatusApi(provider, "127.0.0.1:0") as api:
        yield api.url.removeprefix("http://")


@pytest.fixture(autouse=True)
def no_address_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(status_cli.ENV_ADDRESS, raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    yield


async def edgectl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the CLI as a user would (its own event loop, in a worker thread, while the API
    answers on this one); its exit status, stdout and stderr."""
    def run() -> int:
        try:
            return main(list(argv))
        except SystemExit as exc:  # argparse's usage errors
            return int(exc.code or 0)

    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plain(renderable: Any, width: int) -> str:
    console = Console(width=width, color_system=None, force_terminal=False, highlight=False)
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


async def test_status_json_is_the_document(
    daemon: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await edgectl(capsys, "status", "--status", daemon, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == STATUS


async def test_status_text_shows_state_racks_and_green_share_without_escape_codes(
    daemon: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # piped output stays plain all the same
    code, out, err = await edgectl(capsys, "status", "--status", daemon)
    assert (code, err) == (0, "")
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0].startswith("demo-small  NORMAL  every input valid")
    assert "cycle 120  1.2 ms, p99 2.3 ms  0 overruns" in lines[0]
    assert re.search(r"PV\s+300\.0 kW\s+of 320\.0 kW available\s+curtailed 10\.0 kW", out)
    assert re.search(r"bess-1\s+charging 50\.0 kW\s+█{6}░{4} 61 % SOC\s+droop", out)
    assert re.search(r"Grid\s+-\s+of 20\.0 kW budget\s+no device", out)
    assert re.search(r"Bus\s+792\.1 to 801\.0 V\s+0\.990 to 1\.001 pu", out)
    assert re.search(r"Green\s+93\.0 %\s+over 24 h, minimum 80\.0 %", out)
    assert "not reporting: wind-1 (no answer within 2 s)" in out
    assert "r01 98/120" in out and "r12 60/60*" in out
    assert "- tier 3 capped: supply 1.2 MW below demand 1.4 MW" in out
    assert "! line l3 at 104 % of its ampacity" in out
    assert max(len(line) for line in lines) <= MAX_WIDTH


async def test_the_address_comes_from_the_environment_and_may_be_a_unix_socket(
    provider: FakeProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "status.sock"
    async with StatusApi(provider, f"unix:{path}"):
        monkeypatch.setenv(status_cli.ENV_ADDRESS, f"unix:{path}")
        code, out, _ = await edgectl(capsys, "status", "--json")
        assert code == 0 and json.loads(out)["site"] == "demo-small"
        code, out, _ = await edgectl(capsys, "status")
        assert code == 0 and "NORMAL" in out and "r12" in out


async def test_no_daemon_is_exit_4_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code, out, err = await edgectl(capsys, "status", "--status", f"127.0.0.1:{port}")
    assert (code, out) == (EXIT_DEVICE, "")
    assert one_line(err) == (
        f"edgectl status: status API 127.0.0.1:{port}: connection refused: is the daemon "
        "running? (edgectl run --config SITE serves its status API there)"
    )
    code, _, err = await edgectl(capsys, "status", "--status", "unix:/nonexistent/status.sock")
    assert code == EXIT_DEVICE
    assert "no socket at /nonexistent/status.sock: is the daemon running?" in one_line(err)


async def test_a_bad_address_is_a_usage_error_naming_where_it_came_from(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = await edgectl(capsys, "status", "--status", "10.0.0.7:8470")
    assert code == EXIT_USAGE
    assert one_line(err).startswith(
        "edgectl status: --status '10.0.0.7:8470': the host 10.0.0.7 is not a loopback address"
    )
    monkeypatch.setenv(status_cli.ENV_ADDRESS, "8470")
    code, _, err = await edgectl(capsys, "dump-cycles")
    assert code == EXIT_USAGE
    assert one_line(err) == (
        "edgectl dump-cycles: EDGECTL_STATUS '8470': expected HOST:PORT (such as "
        "127.0.0.1:8470) or unix:/path/to/socket"
    )


def test_the_default_address_is_the_daemons() -> None:
    assert status_cli.DEFAULT_ADDRESS == local_api.DEFAULT_ADDRESS


async def test_watch_refreshes_until_ctrl_c_and_outlives_a_daemon_restart(
    provider: FakeProvider, tmp_path: Path
) -> None:
    path = tmp_path / "status.sock"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    api = StatusApi(provider, f"unix:{path}")
    await api.start()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgectl",
        "status",
        "--status",
        f"unix:{path}",
        "--watch",
        "0.1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    seen = ""

    async def until(text: str) -> None:
        """Read the views until `text` shows (wrapped lines joined again)."""
        nonlocal seen
        words = " ".join(text.split())
        async with asyncio.timeout(20):
            while words not in " ".join(seen.split()):
                seen += (await process.stdout.readline()).decode()  # type: ignore[union-attr]

    try:
        await until("every input valid")
        provider.document["state"] = "DEGRADED"
        provider.document["state_reason"] = "wind-1 silent"
        await until("DEGRADED  wind-1 silent")
        await api.stop()
        await until("no socket at")
        await api.start()
        provider.document["state"] = "SAFE"
        await until("SAFE")
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
        err = (await process.stderr.read()).decode()
        await api.stop()
    assert (code, err) == (0, "")
    assert "\x1b" not in seen
    assert "every 0.1 s; Ctrl-C to stop" in seen


async def test_watch_json_prints_one_document_a_line(
    daemon: str, provider: FakeProvider
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "edgectl",
        "status",
        "--status",
        daemon,
        "--json",
        "--watch",
        "0.1",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            first = json.loads(await process.stdout.readline())
            provider.document["cycle"]["count"] = 121
            while json.loads(await process.stdout.readline())["cycle"]["count"] != 121:
                pass
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
    assert first == STATUS and code == 0


async def test_watch_needs_a_daemon_at_first(capsys: pytest.CaptureFixture[str]) -> None:
    port = closed_port()
    code, _, err = await edgectl(capsys, "status", "--status", f"127.0.0.1:{port}", "--watch")
    assert code == EXIT_DEVICE and "connection refused" in one_line(err)
    code, _, err = await edgectl(capsys, "status", "--watch", "0")
    assert code == EXIT_USAGE and err.splitlines()[-1].endswith("'0': must be at least 0.1 s")


async def test_dump_cycles_writes_the_recorder_document(
    daemon: str, provider: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "cycles.json"
    target.write_text("an older dump\n")
    code, out, err = await edgectl(capsys, "dump-cycles", "--status", daemon, "-o", str(target))
    assert (code, out) == (0, "")
    assert one_line(err) == (
        f"wrote 600 cycles (cycle 1 to 600) to {target}; replay one with: "
        f"edgectl dispatch SITE --snapshot {target} --cycle N"
    )
    text = target.read_text()
    assert text.startswith('{\n "format": "edgectl-cycles/1"')  # indent 1
    document = json.loads(text)
    assert document["format"] == "edgectl-cycles/1" and document == CYCLES
    assert [p.name for p in tmp_path.iterdir()] == ["cycles.json"]  # nothing left beside it

    code, out, err = await edgectl(capsys, "dump-cycles", "--status", daemon, "--last", "2")
    assert (code, err) == (0, "")
    assert [c["cycle"] for c in json.loads(out)["cycles"]] == [599, 600]
    assert provider.asked_last == [None, 2]


async def test_dump_cycles_refuses_what_it_cannot_write_in_one_line(
    daemon: str, provider: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "cycles.json"
    code, out, err = await edgectl(capsys, "dump-cycles", "--status", daemon, "-o", str(missing))
    assert (code, out) == (EXIT_INPUT, "")
    assert one_line(err) == (
        f"edgectl dump-cycles: {missing}: cannot write: no directory {missing.parent}"
    )
    code, _, err = await edgectl(capsys, "dump-cycles", "--status", daemon, "-o", str(tmp_path))
    assert code == EXIT_INPUT
    assert one_line(err) == f"edgectl dump-cycles: {tmp_path}: is a directory; give a file name"
    assert provider.asked_last == []  # refused before asking the daemon

    kept = tmp_path / "cycles.json"
    kept.write_text("an older dump\n")
    port = closed_port()
    argv = ["dump-cycles", "--status", f"127.0.0.1:{port}", "-o", str(kept)]
    code, _, err = await edgectl(capsys, *argv)
    assert code == EXIT_DEVICE and "connection refused" in one_line(err)
    assert kept.read_text() == "an older dump\n"

    code, _, err = await edgectl(capsys, "dump-cycles", "--status", daemon, "--last", "0")
    assert code == EXIT_USAGE and err.splitlines()[-1].endswith("'0': must be 1 or more")


def test_the_commands_load_without_aiohttp_or_rich() -> None:
    # `edgectl --help` builds every command's parser: their heavy imports wait for run().
    probe = (
        "import sys, edgectl.cli.status, edgectl.cli.dump_cycles; "
        "print(sorted(m for m in ('aiohttp', 'rich') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("width", [80, 100])
def test_the_view_fits_100_and_80_columns(width: int) -> None:
    text = plain(render_status(STATUS), width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "NORMAL" in text and "r01 98/120" in text and "93.0 %" in text
    assert "cycle 120" in text  # the header's timing is kept, on its own line if need be


def test_the_view_is_no_wider_than_100_on_a_wide_terminal() -> None:
    text = plain(render_status(STATUS), 160)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= MAX_WIDTH


def test_the_state_is_coloured() -> None:
    console = Console(width=100, color_system="standard", force_terminal=True)
    for state, colour in [("NORMAL", "green"), ("DEGRADED", "yellow"), ("SAFE", "red")]:
        segments = list(console.render(render_status({**STATUS, "state": state})))
        styles = [s.style for s in segments if s.text == state]
        assert styles and styles[0] is not None and styles[0].color is not None
        assert styles[0].color.name == colour


def test_a_large_site_shows_only_the_tiers() -> None:
    racks = {
        f"rack-{n:03d}": {
            "tier": n % 4,
            "valid": True,
            "p_w": 50000.0,
            "cap_w": 60000.0,
            "demand_w": 70000.0 if n % 4 == 3 else 50000.0,
            "on": n % 10 != 0,
            "capped": None,  # unknown: capped below demand is then read from cap and demand
        }
        for n in range(40)
    }
    text = plain(render_status({**STATUS, "racks": racks}), 100)
    assert "rack-0" not in text
    rows = {row[1]: row[2:] for row in (line.split() for line in text.splitlines()) if "kW" in row}
    assert rows["3"][:2] == ["10/10", "10"]  # tier 3: all on, every one capped
    assert rows["0"][:2] == ["8/10", "0"]  # tier 0: racks 0 and 20 off
    assert rows["0"][2:4] == ["500.0", "kW"]  # the draw of its ten racks


def nulled(value: Any) -> Any:
    """`value` with every leaf null, its shape kept."""
    if isinstance(value, dict):
        return {k: nulled(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nulled(v) for v in value]
    return None


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))
    else:
        yield path


def test_the_view_copes_with_unknown_values() -> None:
    documents: list[Any] = [nulled(STATUS), {}, {"racks": None, "sources": None, "cycle": None}]
    for path in leaves(STATUS):
        for replacement in (None, "?", float("nan"), [], {}):
            document = copy.deepcopy(STATUS)
            holder = document
            for key in path[:-1]:
                holder = holder[key]
            holder[path[-1]] = replacement
            documents.append(document)
    for document in documents:
        for width in (80, 100):
            plain(render_status(document), width)
    text = plain(render_status(nulled(STATUS)), 100)
    assert "state unknown" in text and "cycle -" in text


def test_the_upstream_backlog_and_its_error_are_shown() -> None:
    uplink = {
        "last_seq": 812,
        "http": {"backlog": 37, "delivered": 775, "last_error": "scheduler: connection refused"},
        "mqtt": {"backlog": 0, "delivered": 812, "last_error": None},
    }
    text = plain(render_status({**STATUS, "uplink": uplink}), 100)
    line = next(x for x in text.splitlines() if "Upstream" in x)
    assert "37 queued" in line and "http 37, mqtt 0; last seq 812" in line
    assert "http: scheduler: connection refused" in text
    # A daemon with no scheduler and no broker configured has no such line.
    assert "Upstream" not in plain(render_status({**STATUS, "uplink": {"last_seq": 3}}), 100)
