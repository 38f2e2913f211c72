"""The state store in a temporary directory: round trip, WAL, corrupt rows, failures."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from edgectl.app.persist import FILE_NAME, StateStore
from edgectl.control.accounting import Accounts
from edgectl.errors import EXIT_INPUT, InputError

DOC = {"energy_wh": {"pv": 12.5}, "buckets": {"28333333": [1.0, 0.25]}, "ok": True}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    assert store.load("accounts") is None
    assert store.save({"accounts": DOC, "daemon": {"run": "abc"}}) is True
    assert store.load("accounts") == DOC
    assert store.save({"accounts": {"energy_wh": {}}}) is True  # replaces, keeps the rest
    assert store.load("accounts") == {"energy_wh": {}}
    assert store.load("daemon") == {"run": "abc"}
    store.close()
    again = StateStore(tmp_path / "state")  # a restart reads what was committed
    assert again.load("daemon") == {"run": "abc"}
    again.close()


def test_accounts_survive_a_restart(tmp_path: Path) -> None:
    accounts = Accounts()
    accounts.add(
        dt_s=3600.0,
        wall_s=1.7e9,
        window_s=86_400.0,
        source_kind_p_w={"pv": 1e3},
        rack_p_w={"r1": 900.0},
        grid_w=50.0,
        losses_w=1.0,
    )
    store = StateStore(tmp_path)
    store.save({"accounts": accounts.as_dict()})
    store.close()
    saved = StateStore(tmp_path).load("accounts")
    assert saved is not None and Accounts.from_dict(saved) == accounts


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save({"k": {"v": 1}})
    with sqlite3.connect(tmp_path / FILE_NAME) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / f"{FILE_NAME}-wal").exists()
    store.close()


def corrupt(tmp_path: Path, text: str) -> StateStore:
    """A store whose "accounts" row holds `text`; its "daemon" row is sound."""
    store = StateStore(tmp_path)
    store.save({"accounts": DOC, "daemon": {"run": "x"}})
    with sqlite3.connect(tmp_path / FILE_NAME) as other:
        other.execute("UPDATE state SET value = ? WHERE key = 'accounts'", (text,))
    return store


def test_a_corrupt_row_is_ignored_with_a_log(tmp_path: Path) -> None:
    store = corrupt(tmp_path, "{not json")
    with capture_logs() as logs:
        assert store.load("accounts") is None
    assert store.load("daemon") == {"run": "x"}  # the other rows are unharmed
    assert [(e["event"], e["key"], e["log_level"]) for e in logs] == [
        ("state document corrupt, starting it afresh", "accounts", "error")
    ]
    store.close()


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"'])
def test_a_row_that_is_not_a_document_is_ignored_with_a_log(tmp_path: Path, text: str) -> None:
    store = corrupt(tmp_path, text)
    with capture_logs() as logs:
        assert store.load("accounts") is None
    store.close()
    assert [e["event"] for e in logs] == ["state document corrupt, starting it afresh"]


def test_a_directory_that_cannot_be_created_is_an_input_error_naming_the_path(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    with pytest.raises(InputError) as caught:
        StateStore(blocker / "state")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{blocker / 'state' / FILE_NAME}: cannot open the state database")
    assert caught.value.exit_code == EXIT_INPUT


def test_a_database_file_that_is_not_sqlite_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"garbage " * 1024)
    with pytest.raises(InputError, match="cannot open the state database"):
        StateStore(tmp_path)


def test_a_failing_save_returns_false_logs_once_and_never_raises(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store._db.close()  # as if the database went away under the daemon
    with capture_logs() as logs:
        assert store.save({"accounts": DOC}) is False
        assert store.save({"accounts": DOC}) is False
        assert store.load("accounts") is None
    events = [e["event"] for e in logs]
    assert events.count("cannot save state; counting in memory only") == 1
    assert "state database unreadable" in events


def test_save_recovers_after_a_failure(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with sqlite3.connect(tmp_path / FILE_NAME) as other:
        other.execute("DROP TABLE state")  # the next save fails: no such table
    with capture_logs() as logs:
        assert store.save({"accounts": DOC}) is False
        store._db.execute(
            "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            "saved_unix REAL NOT NULL)"
        )
        assert store.save({"accounts": DOC}) is True
    assert [e["event"] for e in logs] == [
        "cannot save state; counting in memory only",
        "state saved again",
    ]
    assert store.load("accounts") == DOC
    store.close()
