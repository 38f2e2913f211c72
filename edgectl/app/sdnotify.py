"""sd_notify: tell systemd how the daemon is doing, over the datagram socket $NOTIFY_SOCKET.

The protocol is one AF_UNIX SOCK_DGRAM datagram per message, holding newline-separated
`KEY=VALUE` assignments (READY=1, WATCHDOG=1, STATUS=..., STOPPING=1, RELOADING=1). A
socket name starting with '@' lives in the abstract namespace. Without $NOTIFY_SOCKET
(run by hand, in tests) every method does nothing. Sending never blocks, and a failed send
never raises: the control cycle calls it, and a lost notification must not cost a cycle.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


class Notifier:
    """Sends sd_notify messages to one socket, or nothing when there is none."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_timeout_s: float | None = None,
    ) -> None:
        self._address = address
        self._target = _socket_address(address) if address else None
        self._watchdog_timeout_s = watchdog_timeout_s
        self._sock: socket.socket | None = None
        # One warning per kind of failure: a vanished socket fails on every cycle.
        self._warned: set[int] = set()
        if self._target is None:
            if address:
                log.warning("NOTIFY_SOCKET=%s: not a unix socket address; not notifying", address)
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        except OSError as exc:
            log.warning("sd_notify socket: %s; not notifying", exc)
            return
        sock.setblocking(False)
        self._sock = sock

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for $NOTIFY_SOCKET and $WATCHDOG_USEC of `env` (default os.environ)."""
        env = os.environ if env is None else env
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_timeout_s=_watchdog_timeout_s(env),
        )

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._sock is not None

    @property
    def watchdog_timeout_s(self) -> float | None:
        """The service's watchdog timeout (WatchdogSec=), when it applies to this process."""
        return self._watchdog_timeout_s

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3) advises."""
        if self._watchdog_timeout_s is None:
            return None
        return self._watchdog_timeout_s / 2.0

    def ready(self, status: str | None = None) -> bool:
        """Startup is complete (READY=1), with an optional status line in the same message."""
        if status is None:
            return self.notify(READY=1)
        return self.notify(READY=1, STATUS=status)

    def watchdog(self) -> bool:
        """Kick the watchdog (WATCHDOG=1)."""
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """Set the line `systemctl status` shows (STATUS=)."""
        return self.notify(STATUS=text)

    def reloading(self) -> bool:
        """A reload has begun (RELOADING=1); send ready() when it is done."""
        # systemd 253 and later want the monotonic time of the reload start with it.
        return self.notify(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)

    def stopping(self) -> bool:
        """Shutdown has begun (STOPPING=1)."""
        return self.notify(STOPPING=1)

    def notify(self, **fields: str | int) -> bool:
        """Send one message of KEY=VALUE assignments; True when the socket took it."""
        lines = []
        for key, value in fields.items():
            # Checked even when disabled, so that a bad key fails in tests, not on a site.
            if not _KEY.fullmatch(key):
                raise ValueError(f"sd_notify key {key!r}: expected upper-case A-Z, 0-9, _")
            # A newline would start a new assignment: a status text must not forge READY=1.
            text = str(value).replace("\r", " ").replace("\n", " ")
            lines.append(f"{key}={text}")
        if self._sock is None or self._target is None or not lines:
            return False
        return self._send("\n".join(lines).encode("utf-8"))

    def close(self) -> None:
        """Release the socket; later messages are dropped."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier({self._address!r}, enabled={self.enabled})"

    def _send(self, message: bytes) -> bool:
        assert self._sock is not None and self._target is not None
        try:
            self._sock.sendto(message, self._target)
        except OSError as exc:
            # EAGAIN: systemd's queue is full; ENOENT, ECONNREFUSED: the socket is gone.
            code = exc.errno or 0
            if code not in self._warned:
                self._warned.add(code)
                log.warning(
                    "sd_notify to %s failed: %s; message dropped, further such failures "
                    "are not logged",
                    self._address,
                    exc.strerror or exc,
                )
            return False
        return True


def _socket_address(address: str) -> bytes | None:
    """The AF_UNIX address for a $NOTIFY_SOCKET value, or None if it names no unix socket."""
    if address.startswith("@"):
        return b"\0" + os.fsencode(address[1:])
    if address.startswith("/"):
        return os.fsencode(address)
    # Newer systemd may also hand out vsock: addresses (to virtual machines); not for us.
    return None


def _watchdog_timeout_s(env: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC in seconds, if set, valid and meant for this process (WATCHDOG_PID)."""
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000.0
