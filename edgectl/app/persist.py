"""Durable state of the daemon: energy counters and the green-share window, in SQLite.

One file, `<state_dir>/edgectl.sqlite`, in WAL mode with synchronous=NORMAL: a commit is one
append to the log, a crash (kill -9, power loss) loses at most the last commit and never
corrupts what was committed before. The daemon saves every SAVE_EVERY_S and when it stops,
so a restart resumes the counters from at most that long ago. A state directory that cannot
be written degrades to counting in memory (logged), it never stops the control loop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import structlog

from edgectl.errors import InputError, Problem

SAVE_EVERY_S = 10.0
FILE_NAME = "edgectl.sqlite"

log = structlog.get_logger("edgectl.persist")


class StateStore:
    """Key -> JSON document, with the time each was saved."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS state "
                "(key TEXT PRIMARY KEY, value TEXT NOT NULL, saved_unix REAL NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            raise InputError(
                [Problem(str(self.path), "", f"cannot open the state database: {exc}")]
            ) from None
        self._failing = False

    def load(self, key: str) -> dict[str, Any] | None:
        """The document saved under key; None when there is none or it is unreadable."""
        try:
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            log.error("state database unreadable", path=str(self.path), error=str(exc))
            return None
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):  # not JSON, or JSON that is not a document
            log.error("state document corrupt, starting it afresh", key=key)
            return None
        return value

    def save(self, documents: dict[str, dict[str, Any]]) -> bool:
        """Save every document in one transaction; False (logged once) if it failed."""
        now = time.time()
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO state (key, value, saved_unix) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                    "saved_unix = excluded.saved_unix",
                    [(k, json.dumps(v, separators=(",", ":")), now) for k, v in documents.items()],
                )
        except sqlite3.Error as exc:
            if not self._failing:
                log.error(
                    "cannot save state; counting in memory only",
                    path=str(self.path),
                    error=str(exc),
                )
            self._failing = True
            return False
        if self._failing:
            log.info("state saved again", path=str(self.path))
        self._failing = False
        return True

    def close(self) -> None:
        self._db.close()
