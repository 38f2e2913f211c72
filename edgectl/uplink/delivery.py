"""Delivery of the outbox to one sink: one asyncio task, in order, at least once.

The task sends the sink's oldest pending entry and acknowledges it in the outbox only
once `send` returned, so entry N+1 never leaves before N was accepted, and an entry whose
acknowledgement a crash lost is sent again (with the same sequence number: receivers
drop duplicates by it). A failed send is retried forever with capped exponential
back-off and jitter; the task never raises into the daemon.

Logging: the first failure of an outage is a warning and the recovery an info line,
with the retries in between at debug, so an outage of hours costs two lines. An error
the sink marks as not retryable (an HTTP 400, an untrusted certificate) will not go away
by itself: it is logged as an error once for each entry it holds up, and retried like
any other, because skipping the entry would break at-least-once delivery.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from edgectl.aio import STOP_TIMEOUT_S, cancel_and_wait
from edgectl.errors import EdgeError
from edgectl.uplink.outbox import Entry, Outbox

__all__ = ["BATCH", "Deliverer", "DeliveryStats"]

# Entries read from the outbox at once; each is still sent and acknowledged alone.
BATCH = 100

log = structlog.get_logger("edgectl.uplink.delivery")

Send = Callable[[Entry], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """What a deliverer has done since it started."""

    sink: str
    delivered: int
    retries: int
    backlog: int
    last_seq: int | None  # the last sequence number delivered
    last_latency_s: float | None  # from the entry's creation to its acknowledgement
    last_error: str | None  # None once an entry went through after it
    failing_since_unix: float | None


class Deliverer:
    """Sends the outbox's entries for one sink, oldest first, one at a time."""

    def __init__(
        self,
        outbox: Outbox,
        sink: str,
        send: Send,
        *,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(
                f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}"
            )
        outbox.backlog(sink)  # refuses a sink the outbox does not have
        self.outbox = outbox
        self.sink = sink
        self._send = send
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._delivered = 0
        self._retries = 0
        self._last_seq: int | None = None
        self._last_latency_s: float | None = None
        self._last_error: str | None = None
        self._failing_since: float | None = None
        self._outage_retries = 0
        self._reported: tuple[int, str] | None = None  # (seq, error) logged as an error

    def start(self) -> None:
        """Start the delivery task (it runs until stop())."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"uplink-{self.sink}")

    async def stop(self) -> None:
        """Stop the task; an entry in flight is sent again after the next start."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], STOP_TIMEOUT_S)

    def wake(self) -> None:
        """New entries were appended: look for them now."""
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stats(self) -> DeliveryStats:
        """A snapshot of the counters, with the backlog read from the outbox now."""
        try:
            backlog = self.outbox.backlog(self.sink)
        except Exception:
            # A statistic must not fail its caller; -1 says the outbox could not be read.
            backlog = -1
        return DeliveryStats(
            sink=self.sink,
            delivered=self._delivered,
            retries=self._retries,
            backlog=backlog,
            last_seq=self._last_seq,
            last_latency_s=self._last_latency_s,
            last_error=self._last_error,
            failing_since_unix=self._failing_since,
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            # Cleared before reading, so an append between the read and the wait still
            # wakes the task.
            self._wake.clear()
            try:
                entries = self.outbox.pending(self.sink, BATCH)
            except Exception as exc:
                # The task outlives a failing outbox: it waits and reads again.
                attempt += 1
                self._note_failure(None, exc)
                await asyncio.sleep(self._backoff(attempt))
                continue
            attempt = 0
            if not entries:
                await self._wake.wait()
                continue
            for entry in entries:
                await self._deliver(entry)

    async def _deliver(self, entry: Entry) -> None:
        """Send `entry` until it is accepted, then acknowledge it."""
        attempt = 0
        while True:
            try:
                await self._send(entry)
            except Exception as exc:
                # Whatever the sink raises, the entry is retried: nothing escapes the task.
                attempt += 1
                self._retries += 1
                self._note_failure(entry, exc)
                delay = self._backoff(attempt)
                hint = getattr(exc, "retry_after_s", None)
                if isinstance(hint, int | float) and hint > delay:
                    delay = min(float(hint), self.backoff_max_s)
                await asyncio.sleep(delay)
                continue
            break
        try:
            self.outbox.ack(self.sink, entry.seq)
        except Exception as exc:
            # Delivered all the same; the entry goes again if the cursor is lost.
            log.error(
                "cannot acknowledge a delivery", sink=self.sink, seq=entry.seq, error=str(exc)
            )
        now = self._clock()
        self._delivered += 1
        self._last_seq = entry.seq
        self._last_latency_s = max(0.0, now - entry.created_unix)
        if self._failing_since is not None:
            log.info(
                "uplink delivering again",
                sink=self.sink,
                seq=entry.seq,
                retries=self._outage_retries,
                outage_s=round(now - self._failing_since, 1),
            )
        self._failing_since = None
        self._outage_retries = 0
        self._last_error = None
        self._reported = None

    def _note_failure(self, entry: Entry | None, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        self._last_error = message
        self._outage_retries += 1
        seq = entry.seq if entry is not None else None
        first = self._failing_since is None
        if first:
            self._failing_since = self._clock()
        if entry is None:
            if first:
                log.error("cannot read the outbox; retrying", sink=self.sink, error=message)
            return
        if not isinstance(exc, EdgeError):
            # Not an error the sink raised on purpose: a bug, worth its traceback once.
            if self._reported != (entry.seq, type(exc).__name__):
                log.error(
                    "uplink send failed unexpectedly; retrying",
                    sink=self.sink,
                    seq=seq,
                    exc_info=exc,
                )
                self._reported = (entry.seq, type(exc).__name__)
        elif not exc.retryable:
            if self._reported != (entry.seq, message):
                log.error(
                    "uplink refused a record; retrying it, it will not be skipped",
                    sink=self.sink,
                    seq=seq,
                    kind=entry.kind,
                    error=message,
                )
                self._reported = (entry.seq, message)
        elif first:
            log.warning(
                "uplink unavailable; records wait in the outbox",
                sink=self.sink,
                seq=seq,
                error=message,
            )
        else:
            log.debug("uplink still unavailable", sink=self.sink, seq=seq, error=message)

    def _backoff(self, attempt: int) -> float:
        # Equal jitter: at least half the capped delay, so that retries of many sites
        # spread out yet never hammer a sink that is down.
        capped = min(self.backoff_max_s, self.backoff_min_s * 2.0 ** min(attempt - 1, 30))
        return capped / 2 + random.uniform(0, capped / 2)
