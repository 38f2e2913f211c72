"""Modbus client transport: one pymodbus client per endpoint, shared by its unit ids.

An endpoint is "host:port" (Modbus/TCP, port 502 if omitted) or a serial device path
for Modbus RTU with optional settings, "/dev/ttyUSB0?baudrate=9600&parity=E". Every
unit id behind an endpoint (devices behind a TCP gateway, or on one RS-485 line) shares
its one connection, and requests on it serialise: Modbus has one transaction in flight
per connection, so a dead unit delays the others on *its* endpoint by up to
timeout x (retries + 1) per request, and never a device on another endpoint. After a
request fails for want of an answer, its unit backs off: further requests to it fail at
once with DeviceUnreachable until the back-off expires (1 s doubling to 30 s by
default), so one dead unit cannot hold a shared line for every poll.

Timeouts and retries are per request (per device), enforced here rather than by
pymodbus, whose own are per client. Results are plain lists of ints; failures are
edgectl.errors: no answer -> DeviceTimeout, no connection -> DeviceUnreachable, a
Modbus exception response -> ModbusExceptionResponse (a ProtocolError) with its code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import parse_qsl

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from edgectl.errors import DeviceError, DeviceTimeout, DeviceUnreachable, ProtocolError

__all__ = [
    "EXCEPTION_MEANINGS",
    "MAX_READ_COUNT",
    "MAX_WRITE_COUNT",
    "Endpoint",
    "ModbusEndpoint",
    "ModbusExceptionResponse",
    "ModbusTransport",
    "RegisterIO",
    "SerialSettings",
    "parse_endpoint",
    "plan_reads",
]

log = logging.getLogger(__name__)

MAX_READ_COUNT = 125  # registers in one FC3 request (the PDU limit)
MAX_WRITE_COUNT = 123  # registers in one FC16 request
DEFAULT_TIMEOUT_S = 0.5
DEFAULT_RETRIES = 1
# pymodbus's own timeout only bounds a request this transport has not already abandoned.
_LIBRARY_TIMEOUT_S = 3600.0

EXCEPTION_MEANINGS: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# Exception codes that mean the unit itself did not answer: they count toward back-off.
_NO_ANSWER_CODES = frozenset({10, 11})


class ModbusExceptionResponse(ProtocolError):
    """The device answered with a Modbus exception."""

    def __init__(self, device: str, code: int, request: str) -> None:
        self.code = code
        self.meaning = EXCEPTION_MEANINGS.get(code, "unknown exception")
        super().__init__(device, f"{request}: Modbus exception {code} ({self.meaning})")


@dataclass(frozen=True, slots=True)
class SerialSettings:
    baudrate: int = 19200
    bytesize: int = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed endpoint: a TCP host and port, or a serial path and its settings."""

    text: str
    host: str = ""
    port: int = 502
    path: str = ""
    serial: SerialSettings | None = None

    @property
    def is_serial(self) -> bool:
        return self.serial is not None


def parse_endpoint(text: str) -> Endpoint:
    """ "host", "host:port", "[v6]:port", or "/dev/tty...?baudrate=9600&parity=E"."""
    text = text.strip()
    if text.startswith("/") or text.upper().startswith("COM"):
        path, _, query = text.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
        unknown = set(options) - {"baudrate", "bytesize", "parity", "stopbits"}
        if unknown:
            raise ValueError(f"endpoint {text!r}: unknown serial setting(s) {sorted(unknown)}")
        parity = options.get("parity", "N").upper()[:1]
        if parity not in ("N", "E", "O"):
            raise ValueError(f"endpoint {text!r}: parity must be N, E or O")
        try:
            settings = SerialSettings(
                baudrate=int(options.get("baudrate", 19200)),
                bytesize=int(options.get("bytesize", 8)),
                parity=parity,  # type: ignore[arg-type]  # checked just above
                stopbits=int(options.get("stopbits", 1)),
            )
        except ValueError:
            raise ValueError(f"endpoint {text!r}: serial settings must be integers") from None
        return Endpoint(text, path=path, serial=settings)
    host, port = text, 502
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(text, port_text)
    if not host:
        raise ValueError(f"endpoint {text!r}: no host")
    return Endpoint(text, host=host, port=port)


def _port(text: str, port_text: str) -> int:
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"endpoint {text!r}: port must be 1-65535")
    return int(port_text)


def plan_reads(
    spans: Iterable[tuple[int, int]], *, max_count: int = MAX_READ_COUNT, max_gap: int = 0
) -> list[tuple[int, int]]:
    """Merge (address, count) spans into few (address, count) reads.

    Spans closer than `max_gap` unused registers join one read as long as it stays within
    `max_count` registers; gaps are read and discarded, so allow them only where the
    device serves every register in between (a SunSpec chain does, many vendor maps not).
    A span is read whole, in one request, unless it is longer than `max_count`.
    """
    reads: list[tuple[int, int]] = []
    start = end = -1
    for address, count in sorted(s for s in spans if s[1] > 0):
        if (
            start >= 0
            and address <= end + max_gap
            and max(end, address + count) - start <= max_count
        ):
            end = max(end, address + count)
            continue
        if start >= 0:
            reads.append((start, end - start))
        start, end = address, address + count
        while end - start > max_count:
            reads.append((start, max_count))
            start += max_count
    if start >= 0:
        reads.append((start, end - start))
    return reads


class RegisterIO(Protocol):
    """What a driver needs from an endpoint (the test doubles implement it too)."""

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> list[int]: ...

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None: ...


@dataclass
class _UnitHealth:
    failures: int = 0
    until_s: float = 0.0
    last_error: str = ""


@dataclass
class _Response:
    """What is kept of a pymodbus response: its exception code or its registers."""

    code: int | None
    registers: list[int] = field(default_factory=list)


class ModbusEndpoint:
    """One connection (TCP or serial) and the unit ids behind it."""

    def __init__(
        self,
        endpoint: str | Endpoint,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else parse_endpoint(endpoint)
        self._clock = clock
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._health: dict[int, _UnitHealth] = {}
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    @property
    def name(self) -> str:
        return self.endpoint.text

    def backed_off_s(self, unit: int) -> float:
        """Seconds until `unit` may be asked again (0: now)."""
        health = self._health.get(unit)
        return max(0.0, health.until_s - self._clock()) if health else 0.0

    async def read_holding_registers(
        self,
        unit: int,
        address: int,
        count: int,
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> list[int]:
        """FC3: `count` holding registers from 0-based `address`."""
        if not 1 <= count <= MAX_READ_COUNT:
            raise ValueError(f"read of {count} registers: Modbus allows 1-{MAX_READ_COUNT}")
        what = f"read {count} at {address}"

        async def call(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> _Response:
            rr = await client.read_holding_registers(address, count=count, device_id=unit)
            if rr.isError():
                return _Response(int(getattr(rr, "exception_code", 0)))
            return _Response(None, list(rr.registers))

        response = await self._request(unit, device, what, timeout_s, retries, call, count)
        return response.registers

    async def write_registers(
        self,
        unit: int,
        address: int,
        values: Sequence[int],
        *,
        device: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        """FC6 for one register, FC16 for several."""
        words = [int(v) for v in values]
        if not 1 <= len(words) <= MAX_WRITE_COUNT or not all(0 <= w <= 0xFFFF for w in words):
            raise ValueError(f"write of {len(words)} registers: 1-{MAX_WRITE_COUNT} 16-bit values")
        what = f"write {len(words)} at {address}"

        async def call(client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> _Response:
            if len(words) == 1:
                rr = await client.write_register(address, words[0], device_id=unit)
            else:
                rr = await client.write_registers(address, words, device_id=unit)
            if rr.isError():
                return _Response(int(getattr(rr, "exception_code", 0)))
            return _Response(None)

        await self._request(unit, device, what, timeout_s, retries, call, None)

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def _request(
        self,
        unit: int,
        device: str,
        what: str,
        timeout_s: float,
        retries: int,
        call: Callable[[AsyncModbusTcpClient | AsyncModbusSerialClient], Awaitable[_Response]],
        expect_count: int | None,
    ) -> _Response:
        if timeout_s <= 0 or retries < 0:
            raise ValueError(f"{device}: timeout must be > 0 and retries >= 0")
        self._refuse_if_backed_off(unit, device)
        async with self._lock:
            # A request queued behind the one that just failed fails fast too.
            self._refuse_if_backed_off(unit, device)
            where = f"unit {unit} at {self.name}"
            error: DeviceError = DeviceTimeout(device, f"{what}: no answer from {where}")
            for attempt in range(1, retries + 2):
                tries = f"(attempt {attempt} of {retries + 1}, timeout {timeout_s} s)"
                try:
                    async with asyncio.timeout(timeout_s):
                        client = await self._connected(device)
                        response = await call(client)
                except TimeoutError:
                    error = DeviceTimeout(device, f"{what}: no answer from {where} {tries}")
                    continue
                except DeviceUnreachable as exc:
                    error = exc
                    continue
                except ConnectionException as exc:
                    self._drop()
                    error = DeviceUnreachable(
                        device, f"{what}: connection to {self.name} lost: {exc}"
                    )
                    continue
                except ModbusIOException as exc:
                    error = DeviceTimeout(device, f"{what}: no valid answer from {where}: {exc}")
                    continue
                except ModbusException as exc:
                    self._healthy(unit)
                    raise ProtocolError(device, f"{what}: {exc}") from None
                except OSError as exc:
                    self._drop()
                    error = DeviceUnreachable(device, f"{what}: {self.name}: {exc}")
                    continue
                if response.code is not None:
                    exc_response = ModbusExceptionResponse(device, response.code, what)
                    if response.code in _NO_ANSWER_CODES:
                        self._failed(unit, str(exc_response))
                    else:
                        self._healthy(unit)
                    raise exc_response
                if expect_count is not None and len(response.registers) != expect_count:
                    # A late answer to an earlier request (RTU has no transaction id).
                    error = DeviceTimeout(
                        device,
                        f"{what}: answer with {len(response.registers)} registers from {where}",
                    )
                    continue
                self._healthy(unit)
                return response
            self._failed(unit, str(error))
            raise error

    async def _connected(self, device: str) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            self._client = self._new_client()
        if not self._client.connected and not await self._client.connect():
            raise DeviceUnreachable(device, f"cannot connect to {self.name}")
        return self._client

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # retries=0 and reconnect_delay=0: retries, timeouts and reconnects are this
        # class's, per device, not the client's.
        ep = self.endpoint
        if ep.serial is not None:
            return AsyncModbusSerialClient(
                ep.path,
                framer=FramerType.RTU,
                baudrate=ep.serial.baudrate,
                bytesize=ep.serial.bytesize,
                parity=ep.serial.parity,
                stopbits=ep.serial.stopbits,
                timeout=_LIBRARY_TIMEOUT_S,
                retries=0,
                reconnect_delay=0,
            )
        return AsyncModbusTcpClient(
            ep.host,
            port=ep.port,
            timeout=_LIBRARY_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
        )

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _refuse_if_backed_off(self, unit: int, device: str) -> None:
        remaining = self.backed_off_s(unit)
        if remaining > 0:
            health = self._health[unit]
            raise DeviceUnreachable(
                device,
                f"unit {unit} at {self.name} backed off for {remaining:.1f} s more after "
                f"{health.failures} failed request(s); last: {health.last_error}",
            )

    def _healthy(self, unit: int) -> None:
        self._health.pop(unit, None)

    def _failed(self, unit: int, error: str) -> None:
        health = self._health.setdefault(unit, _UnitHealth())
        health.failures += 1
        delay = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (health.failures - 1))
        health.until_s = self._clock() + delay
        health.last_error = error
        log.info("%s: unit %d backs off %.1f s: %s", self.name, unit, delay, error)


class ModbusTransport:
    """The endpoints of a site, one ModbusEndpoint (one connection) per endpoint string."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
    ) -> None:
        self._clock = clock
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._endpoints: dict[str, ModbusEndpoint] = {}

    def endpoint(self, endpoint: str) -> ModbusEndpoint:
        """The shared ModbusEndpoint for `endpoint`, created on first use."""
        parsed = parse_endpoint(endpoint)
        key = parsed.path if parsed.is_serial else f"{parsed.host}:{parsed.port}"
        found = self._endpoints.get(key)
        if found is None:
            found = ModbusEndpoint(
                parsed,
                clock=self._clock,
                backoff_initial_s=self._backoff[0],
                backoff_max_s=self._backoff[1],
            )
            self._endpoints[key] = found
        elif found.endpoint.serial != parsed.serial:
            raise ValueError(
                f"endpoint {endpoint!r}: {key} is already open as {found.endpoint.text!r}"
            )
        return found

    async def close(self) -> None:
        for endpoint in self._endpoints.values():
            await endpoint.close()
        self._endpoints.clear()
