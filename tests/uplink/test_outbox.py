"""The durable outbox: order, sequence numbers and cursors across reopening and kill -9, and
the full-disk policy on a database that is really full (SQLite's max_page_count raises the
same SQLITE_FULL as a full file system, without a mount, root, or a fixed disk size)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from uplink_peers import child_env

from edgectl.errors import InputError
from edgectl.uplink import outbox as outbox_module
from edgectl.uplink.outbox import DROP_BATCH, Entry, Outbox

SINKS = ("http", "mqtt")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.sqlite"


@pytest.fixture
def box(path: Path) -> Iterator[Outbox]:
    outbox = Outbox(path, sinks=SINKS)
    yield outbox
    outbox.close()


def drain(outbox: Outbox, sink: str) -> list[Entry]:
    """Everything pending for `sink`, acknowledged as it is read."""
    out: list[Entry] = []
    while batch := outbox.pending(sink, 7):
        out += batch
        outbox.ack(sink, batch[-1].seq)
    return out


def test_append_pending_ack_in_order(box: Outbox) -> None:
    seqs = [box.append("report", {"site": "s1", "n": i}) for i in range(10)]
    assert seqs == list(range(1, 11))
    first = box.pending("http", 4)
    assert [e.seq for e in first] == [1, 2, 3, 4]
    assert first[0].payload == {"site": "s1", "n": 0, "seq": 1}
    assert first[0].kind == "report"
    box.ack("http", 4)
    assert [e.seq for e in box.pending("http", 100)] == list(range(5, 11))
    assert box.backlog("http") == 6


def test_a_payload_keeps_its_own_seq(box: Outbox) -> None:
    seq = box.append("audit", {"seq": "interval-7"})
    assert box.pending("http", 1)[0].payload == {"seq": "interval-7"}
    assert box.pending("http", 1)[0].seq == seq


def test_order_seq_and_cursors_survive_reopening(path: Path) -> None:
    first = Outbox(path, sinks=SINKS)
    for i in range(5):
        first.append("report", {"n": i})
    first.append("audit", {"interval": 1})
    first.ack("http", 3)
    first.close()

    second = Outbox(path, sinks=SINKS)
    assert second.last_seq == 6
    assert [e.seq for e in second.pending("http", 100)] == [4, 5, 6]
    assert [e.seq for e in second.pending("mqtt", 100)] == [1, 2, 3, 4, 5, 6]
    assert second.append("report", {"n": 5}) == 7
    second.close()


def test_seq_never_goes_back_even_when_every_row_was_pruned(path: Path) -> None:
    first = Outbox(path, sinks=SINKS)
    for i in range(20):
        first.append("report", {"n": i})
    for sink in SINKS:
        first.ack(sink, 20)
    assert first.prune() == 20
    assert first.backlog("http") == 0
    first.close()
    second = Outbox(path, sinks=SINKS)
    assert second.append("report", {}) == 21
    second.close()


def test_two_sinks_have_separate_cursors(box: Outbox) -> None:
    for i in range(6):
        box.append("report", {"n": i})
    box.ack("http", 6)
    assert box.pending("http", 10) == []
    assert [e.seq for e in box.pending("mqtt", 10)] == [1, 2, 3, 4, 5, 6]
    box.ack("mqtt", 2)
    # Only what every sink delivered is pruned.
    assert box.prune() == 2
    assert [e.seq for e in box.pending("mqtt", 10)] == [3, 4, 5, 6]
    box.ack("http", 3)  # an ack behind the cursor changes nothing
    assert box.pending("http", 10) == []


def test_delivered_audit_rows_are_pruned_too(box: Outbox) -> None:
    box.append("audit", {"interval": 1})
    box.append("report", {})
    for sink in SINKS:
        box.ack(sink, 2)
    assert box.prune() == 2


def test_a_new_sink_gets_what_is_kept_and_a_removed_one_stops_holding_pruning(path: Path) -> None:
    first = Outbox(path, sinks=("http",))
    for i in range(4):
        first.append("report", {"n": i})
    first.ack("http", 2)
    first.prune()
    first.close()
    second = Outbox(path, sinks=("mqtt",))
    assert [e.seq for e in second.pending("mqtt", 10)] == [3, 4]
    second.ack("mqtt", 4)
    assert second.prune() == 2
    second.close()


def test_unknown_sink_and_ack_beyond_the_last_seq_are_refused(box: Outbox) -> None:
    box.append("report", {})
    with pytest.raises(ValueError, match="unknown sink"):
        box.pending("kafka", 1)
    with pytest.raises(ValueError, match="beyond"):
        box.ack("http", 2)
    with pytest.raises(ValueError, match="kind"):
        box.append("status", {})  # type: ignore[arg-type]


CHILD = """
import asyncio, sys
from pathlib import Path
from edgectl.uplink.delivery import Deliverer
from edgectl.uplink.outbox import Outbox

async def main():
    box = Outbox(Path(sys.argv[1]), sinks=("http", "mqtt"))
    async def send(entry):
        await asyncio.sleep(0.001)
        sys.stdout.write(f"sent {entry.seq}\\n")
        sys.stdout.flush()
    deliverer = Deliverer(box, "http", send)
    deliverer.start()
    n = 0
    while True:
        n += 1
        seq = box.append("audit" if n % 10 == 0 else "report", {"n": n})
        sys.stdout.write(f"appended {seq}\\n")
        sys.stdout.flush()
        deliverer.wake()
        await asyncio.sleep(0)

asyncio.run(main())
"""


def test_kill_9_during_delivery_loses_nothing_committed(path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        for line in child.stdout:
            lines.append(line)
            if len(lines) >= 800 and any(x.startswith("sent") for x in lines):
                child.send_signal(signal.SIGKILL)
                break
        lines += child.stdout.read().splitlines(keepends=True)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # A line the kill cut short says nothing: only whole lines count.
    whole = [x for x in lines if x.endswith("\n")]
    appended = [int(x.split()[1]) for x in whole if x.startswith("appended")]
    sent = [int(x.split()[1]) for x in whole if x.startswith("sent")]
    assert appended == list(range(1, len(appended) + 1))
    assert sent == list(range(1, len(sent) + 1))

    box = Outbox(path, sinks=SINKS)
    # Every record the child saw committed is there, in order, under its own number.
    everything = drain(box, "mqtt")
    assert [e.seq for e in everything][: len(appended)] == appended
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))
    assert all(e.payload["n"] == e.seq for e in everything)
    # The http cursor never passed a record that was not sent: at worst the last one sent
    # is sent again.
    rest = box.pending("http", 1)
    if rest:
        assert rest[0].seq <= sent[-1] + 1
    assert box.append("report", {}) == len(everything) + 1
    box.close()


def test_corrupt_file_is_an_input_error_naming_it(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is no database\n" * 500)
    with pytest.raises(InputError) as caught:
        Outbox(path, sinks=SINKS)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message


def test_damaged_pages_are_found_at_open(path: Path) -> None:
    box = Outbox(path, sinks=SINKS)
    for i in range(2000):
        box.append("report", {"n": i, "pad": "x" * 200})
    box.close()
    with path.open("r+b") as f:
        f.seek(4096 * 20)
        f.write(b"\xff" * 4096 * 3)
    with pytest.raises(InputError, match=r"outbox\.sqlite"):
        Outbox(path, sinks=SINKS)


def test_unreadable_path_is_an_input_error_naming_it(path: Path) -> None:
    path.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(InputError) as caught:
        Outbox(path, sinks=SINKS)
    assert str(path) in str(caught.value)


def test_a_newer_schema_is_refused(path: Path) -> None:
    Outbox(path, sinks=SINKS).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(InputError, match="schema version 99"):
        Outbox(path, sinks=SINKS)


PAD = "x" * 120


def full_box(path: Path, clock: list[float]) -> Outbox:
    # 24 pages of 4 KiB: room for a few hundred small records.
    return Outbox(path, sinks=SINKS, max_bytes=24 * 4096, clock=lambda: clock[0])


def test_full_disk_drops_oldest_reports_never_audits(path: Path) -> None:
    clock = [1000.0]
    box = full_box(path, clock)
    audits = [box.append("audit", {"interval": i, "pad": PAD}) for i in range(5)]
    with capture_logs() as logs:
        reports = [box.append("report", {"n": i, "pad": PAD}) for i in range(3000)]
    assert box.dropped_reports > 0
    kept = drain(box, "http")
    kept_reports = [e.seq for e in kept if e.kind == "report"]
    # The oldest went: what is kept is the newest run of reports, in order, and every
    # report is either kept or counted as dropped.
    assert kept_reports == reports[-len(kept_reports) :]
    assert len(kept_reports) + box.dropped_reports == len(reports)
    assert box.dropped_reports % DROP_BATCH == 0
    assert [e.seq for e in kept if e.kind == "audit"] == audits
    # One warning for the whole episode, not one per batch.
    dropping = [x for x in logs if x["event"].startswith("outbox has no room")]
    assert len(dropping) == 1
    assert dropping[0]["log_level"] == "warning"
    assert dropping[0]["dropped"] == DROP_BATCH
    assert dropping[0]["path"] == str(path)
    box.close()


def test_full_disk_episode_ends_with_the_count(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_module, "EPISODE_QUIET_S", 60.0)
    clock = [1000.0]
    box = full_box(path, clock)
    for i in range(1000):
        box.append("report", {"n": i, "pad": PAD})
    dropped = box.dropped_reports
    assert dropped > 0
    for sink in SINKS:
        drain(box, sink)
    box.prune()
    clock[0] += 61.0
    with capture_logs() as logs:
        box.append("report", {"pad": PAD})
    (again,) = [x for x in logs if x["event"] == "outbox has room again"]
    assert again["dropped_in_episode"] == dropped
    box.close()


def test_no_room_for_audit_holds_it_in_memory_until_there_is(path: Path) -> None:
    clock = [1000.0]
    box = full_box(path, clock)
    with capture_logs() as logs:
        audits = [box.append("audit", {"interval": i, "pad": PAD}) for i in range(600)]
        # Reports keep coming while audits wait: none may overtake them.
        reports = [box.append("report", {"n": i, "pad": PAD}) for i in range(10)]
    assert box.held > 0
    errors = [x for x in logs if x["log_level"] == "error"]
    assert len(errors) == 1
    assert "holding them in memory" in errors[0]["event"]
    stored = box.backlog("http") - box.held
    assert stored > 0

    # Deliveries free room: what was held is written, in order, before anything newer.
    seen: dict[str, list[Entry]] = {sink: [] for sink in SINKS}
    for _ in range(100):
        for sink in SINKS:
            batch = box.pending(sink, 50)
            seen[sink] += batch
            if batch:
                box.ack(sink, batch[-1].seq)
        if not box.held and not any(box.pending(s, 1) for s in SINKS):
            break
    assert box.held == 0
    later = box.append("report", {"n": "after"})
    for sink in SINKS:
        seen[sink] += drain(box, sink)
        got = [e.seq for e in seen[sink]]
        assert got == sorted(got)
        assert [s for s in got if s in set(audits)] == audits
        assert got[-1] == later
        assert set(got) - set(audits) <= set(reports) | {later}
    box.close()


def test_append_never_raises_when_nothing_can_be_written(path: Path) -> None:
    box = Outbox(path, sinks=SINKS)
    box.append("report", {})
    # Every write now fails with an error that is not "full": the control loop goes on.
    box._db.execute("PRAGMA query_only = ON")
    with capture_logs() as logs:
        for i in range(300):
            box.append("report", {"n": i})
        box.append("audit", {"interval": 1})
    assert box.held <= outbox_module.MAX_HELD_REPORTS + 1
    assert any(x["event"] == "cannot write to the outbox" for x in logs)
    box._db.execute("PRAGMA query_only = OFF")
    seq = box.append("report", {"n": "back"})
    assert box.held == 0
    got = drain(box, "http")
    assert got[-1].seq == seq
    assert [e.kind for e in got].count("audit") == 1
    box.close()


def test_report_row_cap_drops_the_oldest(path: Path) -> None:
    box = Outbox(path, sinks=SINKS, max_report_rows=250)
    audit = box.append("audit", {})
    for i in range(1000):
        box.append("report", {"n": i})
    kept = drain(box, "mqtt")
    assert kept[0].seq == audit
    reports = [e.seq for e in kept if e.kind == "report"]
    assert len(reports) <= 250
    assert reports[-1] == 1001
    assert reports == list(range(reports[0], 1002))
    box.close()


def test_entry_body_is_the_json_sent(box: Outbox) -> None:
    box.append("report", {"site": "s", "p_w": 1.5})
    (entry,) = box.pending("http", 1)
    assert json.loads(entry.body) == {"site": "s", "p_w": 1.5, "seq": 1}


def test_backlog_stays_exact_through_appends_acks_drops_and_prunes(path: Path) -> None:
    rng = random.Random(7)
    box = Outbox(path, sinks=SINKS, max_report_rows=60)
    for _ in range(2000):
        action = rng.random()
        if action < 0.6:
            box.append("audit" if rng.random() < 0.05 else "report", {"pad": PAD})
        elif action < 0.9:
            sink = rng.choice(SINKS)
            batch = box.pending(sink, rng.randint(1, 5))
            if batch:
                box.ack(sink, batch[-1].seq)
        else:
            box.prune()
        for sink in SINKS:
            stored = len(box.pending(sink, 10_000))
            assert box.backlog(sink) == stored + box.held
    assert box.dropped_reports > 0
    box.close()
    reopened = Outbox(path, sinks=SINKS)
    for sink in SINKS:
        assert reopened.backlog(sink) == len(reopened.pending(sink, 10_000))
    reopened.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: the file system itself runs out of room, write-ahead log and all."""
    mountpoint = tmp_path / "small-fs"
    mountpoint.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        # Lazy: a file a failed test left open must not keep the mount behind.
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill_disk(directory: Path) -> None:
    """Another program takes every byte left."""
    # Unbuffered, so that closing it has nothing left to write.
    with (directory / "hog").open("wb", buffering=0) as hog, contextlib.suppress(OSError):
        while True:
            hog.write(b"\0" * 65536)


@pytest.mark.parametrize(
    ("min_free_bytes", "hog_at", "records"),
    [(2 << 20, None, 30_000), (2 << 20, 5000, 30_000), (0, None, 45_000)],
    ids=["below-the-low-water-mark", "another-program-fills-it", "to-the-last-byte"],
)
def test_a_really_full_file_system(
    small_fs: Path, min_free_bytes: int, hog_at: int | None, records: int
) -> None:
    box = Outbox(
        small_fs / "outbox.sqlite",
        sinks=SINKS,
        min_free_bytes=min_free_bytes,
        reserve_bytes=512 * 1024,
    )
    audits: list[int] = []
    try:
        with capture_logs() as logs:
            for n in range(records):
                if n % 180 == 0:
                    audits.append(box.append("audit", {"interval": n // 180, "pad": PAD}))
                box.append("report", {"n": n, "pad": PAD})
                if n == hog_at:
                    fill_disk(small_fs)
        assert box.dropped_reports > 0
        assert box.held == 0
        events = {x["event"] for x in logs}
        assert "outbox has no room: dropping the oldest undelivered reports" in events
        if min_free_bytes == 0:
            # Filled to the last byte, even a delete needs the reserve.
            assert "disk full: outbox reserve released to make room" in events
        # Nothing but reports went, the newest stayed, and it all still drains in order.
        got = drain(box, "http")
        assert [e.seq for e in got if e.kind == "audit"] == audits
        assert [e.seq for e in got] == sorted(e.seq for e in got)
        assert got[-1].seq == box.last_seq
        later = box.append("report", {"n": "after"})
        assert box.pending("http", 1)[0].seq == later
    finally:
        box.close()
