"""The daemon's status API over real HTTP, on 127.0.0.1 port 0 and on a unix socket, with
a provider that answers documents built here, read back with edgectl's own client: the
documents as given, errors as one line of JSON, a provider failure answered and survived,
and the addresses it refuses to listen on."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from edgectl.app.api import StatusApi
from edgectl.errors import EXIT_USAGE, DeviceUnreachable, ProtocolError, UsageError
from edgectl.transport.local_api import fetch_json, format_listen, parse_listen

STATUS: dict[str, Any] = {
    "site": "test-site",
    "version": "0.1.0",
    "state": "NORMAL",
    "state_reason": "every input valid",
    "cycle": {"count": 7, "last_ms": 1.5},
    "racks": {"r01": {"tier": 0, "p_w": 1000.0, "cap_w": 2000.0, "on": True}},
}
CYCLES: dict[str, Any] = {
    "format": "edgectl-cycles/1",
    "site": "test-site",
    "cycles": [{"cycle": n, "t_s": float(n), "state": "NORMAL", "reasons": []} for n in (5, 6, 7)],
}


class FakeProvider:
    """Answers the documents the test sets, fails when told to, and keeps what it was asked."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = dict(STATUS)
        self.fail: Exception | None = None
        self.asked_last: list[int | None] = []

    def status(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return self.document

    def cycles(self, last: int | None = None) -> dict[str, Any]:
        self.asked_last.append(last)
        if self.fail is not None:
            raise self.fail
        cycles = CYCLES["cycles"] if last is None else CYCLES["cycles"][-last:]
        return {**CYCLES, "cycles": cycles}


def address_of(api: StatusApi) -> str:
    """The bound API as a client's address: its url without the scheme."""
    return api.url.removeprefix("http://")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get(url: str, path: str, **kwargs: Any) -> tuple[int, Any, str]:
    """Status, decoded JSON and raw text of one GET (a unix socket: url "unix:/path")."""
    connector: aiohttp.BaseConnector | None = None
    if url.startswith("unix:"):
        connector = aiohttp.UnixConnector(path=url.removeprefix("unix:"))
        url = "http://localhost"
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url + path, **kwargs) as response,
    ):
        text = await response.text()
        assert response.content_type == "application/json"
        return response.status, await response.json(), text


@pytest.fixture
def provider() -> FakeProvider:
    return FakeProvider()


@pytest_asyncio.fixture
async def api(provider: FakeProvider) -> AsyncIterator[StatusApi]:
    async with StatusApi(provider, "127.0.0.1:0") as running:
        yield running


async def test_port_0_binds_a_free_port_and_serves_the_documents(
    api: StatusApi, provider: FakeProvider
) -> None:
    host, port = parse_listen(address_of(api))  # type: ignore[misc]
    assert host == "127.0.0.1" and 0 < port < 65536
    assert api.url == f"http://127.0.0.1:{port}"
    assert await fetch_json(address_of(api), "/v1/status") == STATUS
    assert await fetch_json(address_of(api), "/v1/cycles") == CYCLES
    last_two = await fetch_json(address_of(api), "/v1/cycles?last=2")
    assert [c["cycle"] for c in last_two["cycles"]] == [6, 7]
    assert provider.asked_last == [None, 2]


async def test_a_unix_socket_is_made_for_owner_and_group_and_removed_at_stop(
    tmp_path: Path, provider: FakeProvider
) -> None:
    path = tmp_path / "status.sock"
    async with StatusApi(provider, f"unix:{path}") as api:
        assert api.url == f"unix:{path}"
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert await fetch_json(f"unix:{path}", "/v1/status") == STATUS
        status, body, _ = await get(api.url, "/v1/health")
        assert status == 200
        assert body == {"state": "NORMAL", "reason": "every input valid", "ok": True}
    assert not path.exists()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path, provider: FakeProvider) -> None:
    path = tmp_path / "status.sock"
    with socket.socket(socket.AF_UNIX) as left_behind:  # bound, then its daemon gone
        left_behind.bind(str(path))
    assert path.exists()
    async with StatusApi(provider, f"unix:{path}"):
        assert (await fetch_json(f"unix:{path}", "/v1/status"))["site"] == "test-site"


async def test_a_socket_in_use_or_a_file_that_is_no_socket_is_left_alone(
    tmp_path: Path, provider: FakeProvider
) -> None:
    path = tmp_path / "status.sock"
    async with StatusApi(provider, f"unix:{path}"):
        with pytest.raises(UsageError) as caught:
            await StatusApi(provider, f"unix:{path}").start()
        assert str(caught.value) == (
            f"status API address 'unix:{path}': already in use "
            "(is another edgectl run serving there?)"
        )
        # The first server still has its socket and answers.
        assert (await fetch_json(f"unix:{path}", "/v1/status"))["state"] == "NORMAL"

    plain = tmp_path / "notes.txt"
    plain.write_text("keep me\n")
    with pytest.raises(UsageError, match="exists and is not a socket; refusing to replace it"):
        await StatusApi(provider, f"unix:{plain}").start()
    assert plain.read_text() == "keep me\n"


async def test_a_tcp_address_in_use_is_refused_in_one_line(
    api: StatusApi, provider: FakeProvider
) -> None:
    address = address_of(api)
    with pytest.raises(UsageError) as caught:
        await StatusApi(provider, address).start()
    message = str(caught.value)
    assert message == (
        f"status API address {address!r}: already in use (is another edgectl run serving there?)"
    )
    assert "\n" not in message and caught.value.exit_code == EXIT_USAGE
    assert (await fetch_json(address, "/v1/status"))["site"] == "test-site"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("0.0.0.0:8470", "the host 0.0.0.0 is not a loopback address"),
        ("192.168.1.20:8470", "the host 192.168.1.20 is not a loopback address"),
        ("[::]:8470", "the host :: is not a loopback address"),
        ("gateway.example:8470", "the host 'gateway.example' is not an IP address"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:http", "the port 'http' is not a number from 0 to 65535"),
        ("127.0.0.1:70000", "the port 70000 is not a number from 0 to 65535"),
        ("::1:8470", "an IPv6 host goes in brackets"),
        ("unix:", "unix: needs a socket path"),
        ("unix:/" + "d" * 120, "a unix socket path holds at most 107"),
    ],
)
async def test_an_address_that_is_bad_or_not_loopback_is_refused(
    provider: FakeProvider, listen: str, expected: str
) -> None:
    api = StatusApi(provider, listen)
    with pytest.raises(UsageError) as caught:
        await api.start()
    message = str(caught.value)
    assert message.startswith(f"status API address {listen!r}: ") and expected in message
    assert "\n" not in message
    with pytest.raises(RuntimeError, match="not started"):
        api.url  # noqa: B018


def test_parse_listen_reads_both_forms() -> None:
    assert parse_listen("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_listen("127.1.2.3:0") == ("127.1.2.3", 0)
    assert parse_listen("localhost:9000") == ("127.0.0.1", 9000)
    assert parse_listen("[::1]:8470") == ("::1", 8470)
    assert parse_listen("unix:/run/edgectl/status.sock") == "/run/edgectl/status.sock"
    assert parse_listen("unix:status.sock") == "status.sock"
    for where in [("127.0.0.1", 8470), ("::1", 8470), "/run/edgectl/status.sock"]:
        assert parse_listen(format_listen(where)) == where


async def test_unknown_paths_wrong_methods_and_bad_last_get_one_line_of_json(
    api: StatusApi, provider: FakeProvider
) -> None:
    status, body, text = await get(api.url, "/v1/nothing")
    assert status == 404 and text.count("\n") == 1
    assert body == {
        "error": "no such resource: /v1/nothing (the API serves /v1/status, /v1/cycles, "
        "/v1/health)"
    }
    async with aiohttp.ClientSession() as session, session.post(api.url + "/v1/status") as r:
        assert r.status == 405
        assert await r.json() == {"error": "method POST not allowed on /v1/status (GET only)"}
    for bad in ["x", "0", "-1", "1.5", "", "9999999999"]:
        status, body, _ = await get(api.url, "/v1/cycles", params={"last": bad})
        assert status == 400, bad
        assert body == {"error": f"last: expected a whole number of cycles from 1, got {bad!r}"}
    assert provider.asked_last == []
    with pytest.raises(ProtocolError) as caught:
        await fetch_json(address_of(api), "/v1/cycles?last=x")
    assert str(caught.value) == (
        f"status API {address_of(api)}: GET /v1/cycles?last=x: HTTP 400: "
        "last: expected a whole number of cycles from 1, got 'x'"
    )


async def test_a_failing_provider_gets_a_500_and_a_warning_and_the_server_goes_on(
    api: StatusApi, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    provider.fail = KeyError("racks")
    with caplog.at_level(logging.WARNING, logger="edgectl.app.api"):
        for path in ["/v1/status", "/v1/cycles?last=1", "/v1/health"]:
            status, body, _ = await get(api.url, path)
            assert status == 500
            assert body == {"error": "could not build the answer: KeyError: 'racks'"}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and "GET /v1/status failed: KeyError" in warnings[0].getMessage()
    provider.fail = None
    assert await fetch_json(address_of(api), "/v1/status") == STATUS


async def test_health_is_ok_while_the_cycle_trusts_its_inputs(
    api: StatusApi, provider: FakeProvider
) -> None:
    answers = {}
    for state in ["STARTING", "NORMAL", "DEGRADED", "SAFE", "STOPPING", None]:
        provider.document = {**STATUS, "state": state, "state_reason": f"why {state}"}
        status, body, _ = await get(api.url, "/v1/health")
        assert body["state"] == state and body["reason"] == f"why {state}"
        assert status == (200 if body["ok"] else 503)
        answers[state] = body["ok"]
    assert answers == {
        "STARTING": False,
        "NORMAL": True,
        "DEGRADED": True,
        "SAFE": False,
        "STOPPING": False,
        None: False,
    }


async def test_values_json_has_not_are_served_as_null(
    api: StatusApi, provider: FakeProvider
) -> None:
    provider.document = {**STATUS, "uptime_s": math.nan, "bus": {"v_max_v": math.inf}}
    answer = await fetch_json(address_of(api), "/v1/status")
    assert answer["uptime_s"] is None and answer["bus"] == {"v_max_v": None}


async def test_a_request_addressed_to_another_name_is_refused(api: StatusApi) -> None:
    status, body, _ = await get(api.url, "/v1/status", headers={"Host": "rebound.example"})
    assert status == 403
    assert body == {
        "error": "Host 'rebound.example' refused: the status API answers requests to "
        "loopback only"
    }
    status, _, _ = await get(api.url, "/v1/status", headers={"Host": "localhost:8470"})
    assert status == 200


async def test_ipv6_loopback(provider: FakeProvider) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with StatusApi(provider, "[::1]:0") as api:
        assert api.url.startswith("http://[::1]:")
        assert (await fetch_json(address_of(api), "/v1/status"))["site"] == "test-site"


async def test_the_client_says_when_no_daemon_is_there(tmp_path: Path) -> None:
    port = closed_port()
    with pytest.raises(DeviceUnreachable) as caught:
        await fetch_json(f"127.0.0.1:{port}", "/v1/status")
    assert str(caught.value).startswith(
        f"status API 127.0.0.1:{port}: connection refused: is the daemon running?"
    )
    missing = tmp_path / "none.sock"
    with pytest.raises(DeviceUnreachable) as caught:
        await fetch_json(f"unix:{missing}", "/v1/status")
    assert str(caught.value).startswith(
        f"status API unix:{missing}: no socket at {missing}: is the daemon running?"
    )
    with pytest.raises(ValueError, match="not a loopback address"):
        await fetch_json("10.0.0.1:8470", "/v1/status")


async def test_the_client_gives_up_on_a_silent_server() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never answers

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DeviceUnreachable) as caught:
            await fetch_json(f"127.0.0.1:{port}", "/v1/status", timeout_s=0.2)
        assert str(caught.value).startswith(
            f"status API 127.0.0.1:{port}: GET /v1/status: no answer within 0.2 s: "
            "is the daemon running?"
        )
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_client_refuses_an_answer_that_is_not_json() -> None:
    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProtocolError) as caught:
            await fetch_json(f"127.0.0.1:{port}", "/v1/status")
        assert str(caught.value) == (
            f"status API 127.0.0.1:{port}: GET /v1/status: HTTP 200, answer is not JSON: "
            "'hello\\n' (is something other than the edgectl status API serving there?)"
        )
    finally:
        server.close()
        await server.wait_closed()
