"""The durable outbox: records waiting to go upstream, in order, each sink with its cursor.

One SQLite file (`<state_dir>/outbox.sqlite`) in WAL mode with synchronous=NORMAL: a
commit is one append to the log, so a kill -9 loses nothing committed and a power loss at
most the last commits, never what came before. Every record gets the next global sequence
number, which never goes back, not across restarts nor after every row was deleted (the
table is AUTOINCREMENT: SQLite keeps its high-water mark). Each sink ("http", "mqtt")
has a cursor, the last sequence number it delivered; a record is pending for a sink while
its number is above that sink's cursor; the sinks are named when the outbox is opened, and
the cursor of a sink no longer named is dropped so that it cannot hold back pruning. Every
call is one small transaction (a few when room must be made), cheap enough to make from the
event loop: with synchronous=NORMAL a commit does not wait for the disk, and the one thing
that does, the checkpoint that copies the log into the file (two fsyncs, milliseconds on
eMMC), runs in a thread of its own with its own connection, every CHECKPOINT_EVERY commits
(during a burst of writes that outruns it, the caller checkpoints when the log passes
WAL_LIMIT_PAGES).

Policies:

- Pruning: a record every sink has delivered is deleted, audit records too: the audit
  ledger is their durable home, the outbox only carries them upstream. Prune runs every
  PRUNE_EVERY appends, whenever room is needed, and when the daemon calls `prune()`.
- Room: at most `max_report_rows` report rows are kept (the default, 100 000, is almost
  six days of reports at one per 5 s), and `max_bytes` (when given) caps the file. When a
  write finds no room (that cap, the row cap, or a full disk: SQLITE_FULL), delivered rows
  are pruned, then the oldest undelivered *report* rows are deleted in batches of
  DROP_BATCH (counted in `dropped_reports`; logged when dropping starts and, with the
  episode's count, once it has stopped for EPISODE_QUIET_S) and the write is tried again.
  Reports are snapshots: a newer one supersedes them.
- Audit records are never deleted undelivered. One that still finds no room is held in
  memory, in order (logged as an error), and written before anything newer as soon as a
  write succeeds; later reports queue behind it, at most MAX_HELD_REPORTS of them (the
  newest). Held records are lost if the daemon stops before they are written (logged); at
  most MAX_HELD_AUDITS audit records (over 100 days of 15-minute intervals) are held.
- A full disk needs room even to delete: a delete is written to the write-ahead log, and
  the checkpoint that resets the log may need to grow the file. So the file stops growing
  for reports while the disk has less than `min_free_bytes` free: a report then goes into
  pages that dropping older reports freed, and only audit records may use the space below
  that mark. The log is checkpointed often, so that it cycles through space it already
  holds. Should the disk fill up all the same (another program filling it), a reserve,
  `<path>.reserve` (`reserve_bytes`, allocated on disk), is released when even a delete
  finds no room, and made again once the disk has had room for EPISODE_QUIET_S.
- `append` never raises for a full or failing disk: the control loop must go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from edgectl.errors import InputError, Problem

__all__ = [
    "CHECKPOINT_EVERY",
    "DROP_BATCH",
    "EPISODE_QUIET_S",
    "FILE_NAME",
    "MAX_HELD_AUDITS",
    "MAX_HELD_REPORTS",
    "MIN_FREE_BYTES",
    "PRUNE_EVERY",
    "RESERVE_BYTES",
    "Entry",
    "Kind",
    "Outbox",
]

FILE_NAME = "outbox.sqlite"
Kind = Literal["report", "audit"]
KINDS: tuple[Kind, ...] = ("report", "audit")
SCHEMA_VERSION = 1
PRUNE_EVERY = 100  # appends
PRUNE_BATCH = 1000  # rows deleted by one prune
DROP_BATCH = 100  # undelivered reports deleted at once to make room
MAX_HELD_REPORTS = 100
MAX_HELD_AUDITS = 10_000
MIN_FREE_BYTES = 32 * 1024 * 1024
RESERVE_BYTES = 2 * 1024 * 1024
CHECKPOINT_EVERY = 32  # commits
# A log past this size is checkpointed by the caller, and cut back to it when it restarts.
WAL_LIMIT_PAGES = 1024
# A drop episode is over once no report had to be dropped for this long: a full disk
# drops a batch, writes fit for a while, then drops again, and that is one episode.
EPISODE_QUIET_S = 900.0
# Attempts to make room within one call, so that a call stays short even when the
# database is full of records that may not be dropped.
_ROOM_ATTEMPTS = 20

log = structlog.get_logger("edgectl.uplink.outbox")


@dataclass(frozen=True, slots=True)
class Entry:
    """One record as stored: its sequence number, kind, creation time and JSON body."""

    seq: int
    kind: Kind
    created_unix: float
    body: bytes  # the payload as UTF-8 JSON, sent as it is

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON object of the body."""
        value: dict[str, Any] = json.loads(self.body)
        return value


class _NoRoom(Exception):
    """A write found no room: the reason is said once, when reports start to be dropped."""


class Outbox:
    """Durable, ordered store-and-forward of upstream records for a fixed set of sinks."""

    def __init__(
        self,
        path: Path,
        *,
        sinks: Sequence[str],
        max_report_rows: int = 100_000,
        max_bytes: int | None = None,
        min_free_bytes: int = MIN_FREE_BYTES,
        reserve_bytes: int = RESERVE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not sinks or len(set(sinks)) != len(sinks) or not all(sinks):
            raise ValueError(f"sinks must be distinct non-empty names, got {list(sinks)}")
        if max_report_rows < 1:
            raise ValueError(f"max_report_rows must be at least 1, got {max_report_rows}")
        self.path = path
        self.reserve_path = path.with_name(path.name + ".reserve")
        self.reserve_bytes = max(0, reserve_bytes)
        self.min_free_bytes = max(0, min_free_bytes)
        self._room_reason = ""
        self.sinks = tuple(sinks)
        self.max_report_rows = max_report_rows
        self._clock = clock
        self._held: deque[Entry] = deque()
        self._dropped = 0
        self._episode_dropped = 0
        self._last_drop_at: float | None = None
        self._last_full_at: float | None = None
        self._failing = False
        self._holding_audit = False
        self._appends = 0
        self._commits = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise _unusable(path, exc) from None
        try:
            self._open(max_bytes)
        except sqlite3.Error as exc:
            self._db.close()
            raise _unusable(path, exc) from None
        self._wal_path = path.with_name(path.name + "-wal")
        self._wal_limit_bytes = WAL_LIMIT_PAGES * self._page_size
        self._checkpointer = _Checkpointer(path, self._wal_limit_bytes)
        self._checkpointer.start()
        if not self._make_reserve():
            log.warning(
                "no room on disk for the outbox's reserve",
                path=str(self.reserve_path),
                bytes=self.reserve_bytes,
            )

    def _open(self, max_bytes: int | None) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            self._db.close()
            raise InputError(
                [
                    Problem(
                        str(self.path),
                        "",
                        f"outbox schema version {version}, this edgectl reads {SCHEMA_VERSION}",
                    )
                ]
            )
        # quick_check reads every page once: a corrupt file is refused at start, not
        # discovered in the middle of an outage.
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {check}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints run in the checkpointer's thread, not in a commit on the event loop.
        db.execute("PRAGMA wal_autocheckpoint=0")
        page_size = self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_PAGES * page_size}")
        if max_bytes is not None:
            db.execute(f"PRAGMA max_page_count={max(1, max_bytes // page_size)}")
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "kind TEXT NOT NULL, created_unix REAL NOT NULL, body BLOB NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)"
            )
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
            self._last_seq = int(row[0]) if row else 0
            cursors = dict(db.execute("SELECT sink, seq FROM cursors").fetchall())
            gone = sorted(set(cursors) - set(self.sinks))
            if gone:
                # A sink no longer configured would hold back pruning forever.
                db.executemany("DELETE FROM cursors WHERE sink = ?", [(s,) for s in gone])
                log.info("outbox cursors of removed sinks dropped", path=str(self.path), sinks=gone)
            oldest = db.execute("SELECT min(seq) FROM entries").fetchone()[0]
            # A new sink gets every record still kept.
            start = (int(oldest) - 1) if oldest is not None else self._last_seq
            self._cursors: dict[str, int] = {}
            for sink in self.sinks:
                if sink in cursors:
                    self._cursors[sink] = int(cursors[sink])
                else:
                    db.execute("INSERT INTO cursors (sink, seq) VALUES (?, ?)", (sink, start))
                    self._cursors[sink] = start
            self._report_rows = int(
                db.execute("SELECT count(*) FROM entries WHERE kind = 'report'").fetchone()[0]
            )
            # Kept up to date by every write, so that backlog() costs no count of the table.
            self._behind: dict[str, int | None] = {s: self._count_after(s) for s in self.sinks}
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @property
    def last_seq(self) -> int:
        """The sequence number given to the newest record."""
        return self._last_seq

    @property
    def dropped_reports(self) -> int:
        """Reports deleted undelivered to make room, since this outbox was opened."""
        return self._dropped

    @property
    def held(self) -> int:
        """Records waiting in memory for room on disk."""
        return len(self._held)

    def append(self, kind: Kind, payload: dict[str, Any]) -> int:
        """Store a record under the next sequence number (also its "seq" unless it has one)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        seq = self._last_seq + 1
        document = payload if "seq" in payload else {**payload, "seq": seq}
        body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
        self._last_seq = seq
        self._held.append(Entry(seq, kind, self._clock(), body))
        self._appends += 1
        if self._appends % PRUNE_EVERY == 0:
            self.prune()
            self._restore_reserve()
        self._write_held()
        return seq

    def pending(self, sink: str, limit: int = 100) -> list[Entry]:
        """The oldest records not yet delivered to `sink`, in sequence order."""
        cursor = self._cursor(sink)
        rows = self._db.execute(
            "SELECT seq, kind, created_unix, body FROM entries WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, limit),
        ).fetchall()
        return [Entry(int(s), k, float(c), bytes(b)) for s, k, c, b in rows]

    def ack(self, sink: str, seq: int) -> None:
        """Mark every record up to `seq` delivered to `sink`."""
        if seq > self._last_seq:
            raise ValueError(f"{sink}: ack of seq {seq}, beyond the last one ({self._last_seq})")
        old = self._cursor(sink)
        if seq <= old:
            return
        self._cursors[sink] = seq
        behind = self._behind[sink]
        try:
            if behind is not None:
                passed = self._db.execute(
                    "SELECT count(*) FROM entries WHERE seq > ? AND seq <= ?", (old, seq)
                ).fetchone()[0]
                self._behind[sink] = behind - int(passed)
            self._db.execute("UPDATE cursors SET seq = ? WHERE sink = ?", (seq, sink))
            self._committed()
        except sqlite3.Error as exc:
            # The cursor in memory goes on; on disk it is saved with the next ack that
            # succeeds, and until then a restart only delivers a few records again.
            self._rollback()
            self._behind[sink] = None
            self._note_failure("cannot save a delivery cursor", exc)
            return
        if self._held:
            # Deliveries free room: what waited in memory may fit now.
            self.prune()
            self._write_held()

    def backlog(self, sink: str) -> int:
        """Records not yet delivered to `sink`, those held in memory included."""
        self._cursor(sink)
        behind = self._behind[sink]
        if behind is None:
            behind = self._behind[sink] = self._count_after(sink)
        return behind + len(self._held)

    def prune(self) -> int:
        """Delete up to PRUNE_BATCH rows every sink has delivered; the number deleted."""
        try:
            return self._prune()
        except sqlite3.Error as exc:
            self._note_failure("cannot prune the outbox", exc)
            return 0

    def _prune(self) -> int:
        done = min(self._cursors.values())
        self._db.execute("BEGIN IMMEDIATE")
        try:
            kinds = self._db.execute(
                "DELETE FROM entries WHERE seq IN "
                "(SELECT seq FROM entries WHERE seq <= ? ORDER BY seq LIMIT ?) RETURNING kind",
                (done, PRUNE_BATCH),
            ).fetchall()
            self._db.execute("COMMIT")
            if kinds:
                self._committed()
        except BaseException:
            self._rollback()
            raise
        self._report_rows -= sum(1 for (k,) in kinds if k == "report")
        return len(kinds)

    def close(self) -> None:
        """Write what is held in memory if there is room now, then close the file."""
        if self._held:
            self.prune()
            self._write_held()
        if self._held:
            log.error(
                "outbox closed with records held in memory; they are lost",
                path=str(self.path),
                records=len(self._held),
                audit=sum(1 for e in self._held if e.kind == "audit"),
                first_seq=self._held[0].seq,
            )
            self._held.clear()
        self._checkpointer.stop()
        # The last connection to close checkpoints the log and removes it.
        self._db.close()

    def _cursor(self, sink: str) -> int:
        try:
            return self._cursors[sink]
        except KeyError:
            raise ValueError(f"unknown sink {sink!r}, the outbox has {list(self.sinks)}") from None

    def _count_after(self, sink: str) -> int:
        cursor = self._cursors[sink]
        row = self._db.execute("SELECT count(*) FROM entries WHERE seq > ?", (cursor,)).fetchone()
        return int(row[0])

    def _write_held(self) -> None:
        """Write the records held in memory, oldest first, making room when there is none."""
        # All in one transaction first; when that finds no room, one by one, so that as
        # many as fit are written and the rest stay in order behind them.
        one_by_one = False
        rooms_made = 0
        while self._held:
            batch = [self._held[0]] if one_by_one else list(self._held)
            try:
                self._insert(batch)
            except _NoRoom as no_room:
                self._room_reason = str(no_room)
                if len(batch) > 1:
                    one_by_one = True
                    continue
                if rooms_made < _ROOM_ATTEMPTS and self._make_room():
                    rooms_made += 1
                    continue
                break
            except sqlite3.Error as exc:
                self._note_failure("cannot write to the outbox", exc)
                break
            for _ in batch:
                self._held.popleft()
            if self._failing:
                log.info("outbox writing again", path=str(self.path))
                self._failing = False
        if self._held:
            self._bound_held()
            return
        if self._holding_audit:
            log.warning("audit records held in memory are written now", path=str(self.path))
        self._holding_audit = False
        self._end_episode_if_quiet()

    def _insert(self, entries: Iterable[Entry]) -> None:
        batch = list(entries)
        reports = sum(1 for e in batch if e.kind == "report")
        if reports and self._report_rows + reports > self.max_report_rows:
            raise _NoRoom(f"max_report_rows ({self.max_report_rows}) reached")
        if reports == len(batch) and self._disk_low() and not self._has_free_pages(batch):
            raise _NoRoom(f"less than min_free_bytes ({self.min_free_bytes}) free on the disk")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO entries (seq, kind, created_unix, body) VALUES (?, ?, ?, ?)",
                [(e.seq, e.kind, e.created_unix, e.body) for e in batch],
            )
            self._db.execute("COMMIT")
            self._committed()
        except sqlite3.Error as exc:
            self._rollback()
            if _is_full(exc):
                self._last_full_at = self._clock()
                raise _NoRoom(str(exc)) from None
            raise
        self._report_rows += reports
        for sink, behind in self._behind.items():
            if behind is not None:
                cursor = self._cursors[sink]
                self._behind[sink] = behind + sum(1 for e in batch if e.seq > cursor)

    def _make_room(self) -> bool:
        """Prune, else drop the oldest undelivered reports, else release the disk reserve;
        False when nothing could go."""
        try:
            if self._prune() or self._drop_reports(DROP_BATCH) > 0:
                return True
        except sqlite3.Error as exc:
            if not _is_full(exc):
                self._note_failure("cannot make room in the outbox", exc)
                return False
            self._last_full_at = self._clock()
        return self._release_reserve()

    def _committed(self) -> None:
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY != 0:
            return
        try:
            wal_bytes = self._wal_path.stat().st_size
        except OSError:
            wal_bytes = 0
        # The log restarts at its head only at a write that finds it all copied, and not
        # while the thread is copying. Records that come one every few seconds find it so;
        # a burst (a replay after an outage) outruns the thread, and on a disk that is
        # short of room the log must not grow at all: then the caller checkpoints itself.
        if wal_bytes > self._wal_limit_bytes or self._disk_low() or not self._checkpointer.poke():
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _disk_low(self) -> bool:
        # A disk that was full a moment ago is short of room, whatever it says now.
        if self._last_full_at is not None and (
            self._clock() - self._last_full_at < EPISODE_QUIET_S
        ):
            return True
        if self.min_free_bytes == 0:
            return False
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < self.min_free_bytes

    def _has_free_pages(self, batch: list[Entry]) -> bool:
        """Whether the file's free pages hold `batch` without growing it."""
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        # A page holds a few records; two more for the table's index pages that split.
        need = sum(len(e.body) + 64 for e in batch) // self._page_size + 2
        return free >= need

    def _make_reserve(self) -> bool:
        """Allocate the reserve on disk unless it is there; False when there is no room."""
        if self.reserve_bytes == 0 or self.reserve_path.exists():
            return True
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return False
        try:
            # Blocks really allocated, not a sparse file that frees nothing when deleted.
            os.posix_fallocate(fd, 0, self.reserve_bytes)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            return False
        os.close(fd)
        return True

    def _restore_reserve(self) -> None:
        if self.reserve_bytes == 0 or self.reserve_path.exists() or self._disk_low():
            return
        if self._last_full_at is not None and (
            self._clock() - self._last_full_at < EPISODE_QUIET_S
        ):
            return
        if self._make_reserve():
            log.info("outbox reserve made again", path=str(self.reserve_path))

    def _release_reserve(self) -> bool:
        try:
            self.reserve_path.unlink()
        except OSError:
            return False
        log.warning(
            "disk full: outbox reserve released to make room",
            path=str(self.reserve_path),
            bytes=self.reserve_bytes,
        )
        try:
            # With room again, the checkpoint completes and the log restarts at its head.
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            self._note_failure("cannot checkpoint the outbox", exc)
        return True

    def _drop_reports(self, count: int) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            dropped = self._db.execute(
                "DELETE FROM entries WHERE seq IN (SELECT seq FROM entries "
                "WHERE kind = 'report' ORDER BY seq LIMIT ?) RETURNING seq",
                (count,),
            ).fetchall()
            self._db.execute("COMMIT")
            self._committed()
        except BaseException:
            self._rollback()
            raise
        if dropped:
            self._report_rows -= len(dropped)
            for sink, behind in self._behind.items():
                if behind is not None:
                    cursor = self._cursors[sink]
                    self._behind[sink] = behind - sum(1 for (s,) in dropped if s > cursor)
            self._count_dropped(len(dropped), min(s for (s,) in dropped))
        return len(dropped)

    def _bound_held(self) -> None:
        """Keep what waits in memory within its bounds: the newest reports, and audits."""
        audits = [e for e in self._held if e.kind == "audit"]
        reports = [e for e in self._held if e.kind == "report"]
        if len(reports) > MAX_HELD_REPORTS:
            gone = reports[: len(reports) - MAX_HELD_REPORTS]
            self._count_dropped(len(gone), gone[0].seq)
            reports = reports[len(gone) :]
        if len(audits) > MAX_HELD_AUDITS:
            lost = audits[: len(audits) - MAX_HELD_AUDITS]
            audits = audits[len(lost) :]
            log.critical(
                "outbox: audit records lost, no room on disk for too long",
                path=str(self.path),
                records=len(lost),
                first_seq=lost[0].seq,
                last_seq=lost[-1].seq,
            )
        self._held = deque(sorted(audits + reports, key=lambda e: e.seq))
        if audits and not self._holding_audit:
            log.error(
                "no room in the outbox for audit records; holding them in memory",
                path=str(self.path),
                first_seq=audits[0].seq,
                held=len(self._held),
            )
            self._holding_audit = True

    def _count_dropped(self, count: int, first_seq: int) -> None:
        if self._episode_dropped == 0:
            log.warning(
                "outbox has no room: dropping the oldest undelivered reports",
                path=str(self.path),
                dropped=count,
                first_seq=first_seq,
                report_rows=self._report_rows,
                reason=self._room_reason,
            )
        self._dropped += count
        self._episode_dropped += count
        self._last_drop_at = self._clock()

    def _end_episode_if_quiet(self) -> None:
        if self._episode_dropped == 0 or self._last_drop_at is None:
            return
        if self._clock() - self._last_drop_at >= EPISODE_QUIET_S:
            log.warning(
                "outbox has room again",
                path=str(self.path),
                dropped_in_episode=self._episode_dropped,
                dropped_total=self._dropped,
            )
            self._episode_dropped = 0

    def _note_failure(self, what: str, exc: sqlite3.Error) -> None:
        if not self._failing:
            log.error(what, path=str(self.path), error=str(exc))
        self._failing = True

    def _rollback(self) -> None:
        # SQLite may have rolled back on its own already (SQLITE_FULL can do that).
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


class _Checkpointer(threading.Thread):
    """Copies the write-ahead log into the database file when poked, off the event loop."""

    def __init__(self, path: Path, wal_limit_bytes: int) -> None:
        super().__init__(name=f"outbox-checkpoint-{path.name}", daemon=True)
        self._path = path
        self._wal_limit_bytes = wal_limit_bytes
        self._wake = threading.Event()
        self._stopping = False
        self._failing = False

    def poke(self) -> bool:
        """Ask for a checkpoint; False when the thread is not running."""
        if not self.is_alive():
            return False
        self._wake.set()
        return True

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self.is_alive():
            self.join(timeout=10.0)

    def run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None)
            db.execute(f"PRAGMA journal_size_limit={self._wal_limit_bytes}")
        except sqlite3.Error as exc:
            log.error("outbox checkpoints fall back to the caller", error=str(exc))
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    # PASSIVE never waits for the writer: what it cannot copy now, the
                    # next checkpoint does.
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    if not self._failing:
                        log.error("outbox checkpoint failed", path=str(self._path), error=str(exc))
                    self._failing = True
                else:
                    self._failing = False
        finally:
            db.close()


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_FULL)
    return "database or disk is full" in str(exc)


def _unusable(path: Path, exc: Exception) -> InputError:
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return InputError([Problem(str(path), "", f"cannot use as the outbox: {reason}")])
