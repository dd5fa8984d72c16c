"""The ledger: counts and unsent messages survive restarts, kills and migrations."""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from edge import ledger as ledger_module
from edge import paths
from edge.config import LedgerConfig
from edge.errors import SmartbinError
from edge.ledger import Ledger, LedgerSummary, SortedItem, open_ledger, read_summary
from tests.conftest import REPO


def item(bin_id: str = "kitchen", n: int = 0) -> SortedItem:
    return SortedItem(
        str(uuid.uuid4()),
        1_700_000_000.0 + n,
        "banana-peel",
        bin_id,
        0.93,
        False,
        412.5,
        "m1",
        {"capture_ms": 1.0, "move_ms": 2.0},
    )


def test_a_sort_is_counted_and_queued(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    sorted_item = item("kitchen")
    assert ledger.record(sorted_item) == 1
    assert ledger.record(item("kitchen")) == 2
    ledger.record(item("hazardous"))
    assert ledger.counts() == {"hazardous": 1, "kitchen": 2}
    pending = ledger.pending()
    events = [p for p in pending if p.kind == "event"]
    assert [p.key for p in events][0] == sorted_item.id
    assert json.loads(events[0].payload)["bin"] == "kitchen"
    counts = [(p.key, p.payload) for p in pending if p.kind == "count"]
    assert counts == [("kitchen", "2"), ("hazardous", "1")]  # retained values coalesce
    assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_acknowledged_messages_leave_the_outbox_in_order(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    for n in range(3):
        ledger.record(item("other", n))
    pending = ledger.pending()
    assert [p.seq for p in pending] == sorted(p.seq for p in pending)
    for p in pending[:2]:
        ledger.acknowledge(p.seq)
    assert [p.seq for p in ledger.pending()] == [p.seq for p in pending[2:]]


def test_the_summary_counts_what_waits_for_the_broker(tmp_path):
    cfg = LedgerConfig(path=str(tmp_path / "l.db"), max_pending_events=2)
    ledger = open_ledger(cfg)
    for n, bin_id in enumerate(["kitchen", "kitchen", "other", "other"]):
        ledger.record(item(bin_id, n))
    # 2 events (2 dropped past the bound) and the newest count of each of 2 bins
    assert ledger.waiting() == len(ledger.pending(1000)) == 4
    ledger.acknowledge(ledger.pending(1)[0].seq)
    ledger.close()
    found = read_summary(cfg)
    assert found == LedgerSummary(tmp_path / "l.db", {"kitchen": 2, "other": 2}, waiting=3, dropped=2)
    assert found.total == 4


def test_acknowledging_one_message_leaves_every_other_pending(tmp_path):
    """PUBACKs arrive out of order: one in the middle of the outbox takes that row only, not the older."""
    ledger = Ledger(tmp_path / "l.db")
    for n, bin_id in enumerate(("kitchen", "other", "hazardous", "recyclable", "kitchen")):
        ledger.record(item(bin_id, n))
    before = ledger.pending()
    assert len(before) == 9  # five events, four bins' counts
    middle = before[4]
    ledger.acknowledge(middle.seq)
    assert ledger.pending() == [p for p in before if p.seq != middle.seq]
    ledger.acknowledge(before[-1].seq)  # the newest: still nothing older goes with it
    assert ledger.pending() == [p for p in before[:-1] if p.seq != middle.seq]
    ledger.acknowledge(middle.seq)  # a duplicate PUBACK changes nothing
    assert len(ledger.pending()) == 7


def test_counts_survive_a_restart(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    for n in range(5):
        ledger.record(item("recyclable", n))
    ledger.close()
    again = Ledger(tmp_path / "l.db")
    assert again.counts() == {"recyclable": 5}
    assert len([p for p in again.pending() if p.kind == "event"]) == 5


def test_a_failed_sort_records_nothing(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    first = item("kitchen")
    ledger.record(first)
    with pytest.raises(sqlite3.IntegrityError):
        ledger.record(first)  # the same event id twice: the whole transaction rolls back
    assert ledger.counts() == {"kitchen": 1}
    assert len(ledger.pending()) == 2


def test_outbox_bound_drops_oldest_events_and_counts_them_never_counts(tmp_path):
    ledger = Ledger(tmp_path / "l.db", max_pending_events=3)
    items = [item("other", n) for n in range(5)]
    for it in items:
        ledger.record(it)
    assert ledger.counts() == {"other": 5}
    events = [p.key for p in ledger.pending() if p.kind == "event"]
    assert events == [it.id for it in items[2:]]
    assert ledger.dropped_events() == 2
    assert [p.payload for p in ledger.pending() if p.kind == "count"] == ["5"]


def test_event_history_is_bounded(tmp_path):
    ledger = Ledger(tmp_path / "l.db", keep_events=4)
    for n in range(6):
        ledger.record(item("other", n))
    assert [e.time for e in ledger.events()] == [1_700_000_000.0 + n for n in (5, 4, 3, 2)]


def test_reset_counts_queues_zeroes(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record(item("kitchen"))
    ledger.record(item("other"))
    ledger.reset_counts()
    assert ledger.counts() == {"kitchen": 0, "other": 0}
    assert sorted((p.key, p.payload) for p in ledger.pending() if p.kind == "count") == [
        ("kitchen", "0"),
        ("other", "0"),
    ]


def test_a_migration_keeps_the_counts(tmp_path, monkeypatch):
    """A later schema step that rebuilds the counts table must carry every count across."""
    ledger = Ledger(tmp_path / "l.db")
    for n in range(3):
        ledger.record(item("hazardous", n))
    ledger.close()

    def rebuild_counts(db):
        ledger_module.run_script(
            db,
            """
            CREATE TABLE counts_new (bin TEXT PRIMARY KEY, count INTEGER NOT NULL, since REAL);
            INSERT INTO counts_new (bin, count) SELECT bin, count FROM counts;
            DROP TABLE counts;
            ALTER TABLE counts_new RENAME TO counts;
            """,
        )

    monkeypatch.setattr(ledger_module, "MIGRATIONS", [*ledger_module.MIGRATIONS, rebuild_counts])
    migrated = Ledger(tmp_path / "l.db")
    assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == len(ledger_module.MIGRATIONS) == 5
    assert migrated.counts() == {"hazardous": 3}


def test_a_version_1_ledger_gains_stage_times_and_keeps_its_events(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "MIGRATIONS", ledger_module.MIGRATIONS[:1])
    old = Ledger(tmp_path / "l.db")
    old.db.execute("INSERT INTO events VALUES ('e1', 1.0, 'battery', 'hazardous', 0.9, 0, 12.0, 'm')")
    old.close()
    monkeypatch.undo()
    new = Ledger(tmp_path / "l.db")
    (event,) = new.events()
    assert (event.id, event.item, event.stages) == ("e1", "battery", {})
    new.record(item("kitchen"))
    assert new.events()[0].stages == {"capture_ms": 1.0, "move_ms": 2.0}
    assert (event.most_probable_bin, event.cost_rule) == ("", False)


def test_the_cost_rule_travels_with_the_event(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record(dataclasses.replace(item("hazardous"), most_probable_bin="recyclable", cost_rule=True))
    (event,) = ledger.events()
    assert (event.bin, event.most_probable_bin, event.cost_rule) == ("hazardous", "recyclable", True)
    payload = json.loads(next(p.payload for p in ledger.pending(10) if p.kind == "event"))
    assert payload["most_probable_bin"] == "recyclable" and payload["cost_rule"] is True


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(SmartbinError, match="schema version 99, newer") as err:
        Ledger(path)
    assert "update smartbin" in err.value.fix


def test_a_corrupt_file_is_one_clear_error(tmp_path):
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SmartbinError, match="cannot be opened") as err:
        Ledger(path)
    assert "moved aside" in err.value.fix


WRITER = """
import sys, uuid
from edge.ledger import Ledger, SortedItem
ledger = Ledger(sys.argv[1])
n = 0
while True:
    bin_id = ("kitchen", "other")[n % 2]
    ledger.record(SortedItem(str(uuid.uuid4()), float(n), "x", bin_id, 0.9, False, 1.0, "m"))
    n += 1
    if n % 50 == 0:
        print(n, flush=True)
"""


def test_sigkill_mid_run_leaves_a_consistent_ledger(tmp_path):
    """Power cut stand-in: the writer is killed at an arbitrary point between and inside transactions."""
    path = tmp_path / "l.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    for line in writer.stdout:
        if int(line) >= 300:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    ledger = Ledger(path)
    counts = ledger.counts()
    total = sum(counts.values())
    assert total >= 300
    events = ledger.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    queued = [p for p in ledger.pending(10_000) if p.kind == "event"]
    assert events == total == len(queued)
    assert {p.key: int(p.payload) for p in ledger.pending(10_000) if p.kind == "count"} == counts


def test_a_failing_migration_leaves_the_old_schema_and_counts(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record(item("kitchen"))
    ledger.close()

    def broken(db):
        db.execute("DROP TABLE counts")
        db.execute("THIS IS NOT SQL")

    monkeypatch.setattr(ledger_module, "MIGRATIONS", [*ledger_module.MIGRATIONS, broken])
    with pytest.raises(SmartbinError):
        Ledger(tmp_path / "l.db")
    monkeypatch.undo()
    again = Ledger(tmp_path / "l.db")
    assert again.db.execute("PRAGMA user_version").fetchone()[0] == len(ledger_module.MIGRATIONS)
    assert again.counts() == {"kitchen": 1}


def test_counts_cli(tmp_path, capsys):
    from edge.service.cli import main

    path = tmp_path / "state" / "ledger.db"
    ledger = Ledger(path)
    for n in range(3):
        ledger.record(item("kitchen", n))
    ledger.close()
    config = tmp_path / "smartbin.yaml"
    config.write_text(f"ledger:\n  path: {path}\n")
    assert main(["counts", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "counts": {"kitchen": 3},
        "total": 3,
        "pending": 4,
        "dropped": 0,
    }
    assert main(["counts", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "kitchen" in out and "4 messages wait for the broker" in out


def test_the_ledger_is_found_where_the_service_keeps_it(tmp_path, monkeypatch):
    """systemd's $STATE_DIRECTORY; else, for a technician on the bin, the service's folder; else here."""
    service = tmp_path / "var-lib-smartbin"
    monkeypatch.setattr(paths, "SERVICE_STATE", service)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert paths.ledger_file(LedgerConfig()) == Path("ledger.db")
    service.mkdir()
    assert paths.ledger_file(LedgerConfig()) == service / "ledger.db"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "systemd"))
    assert paths.ledger_file(LedgerConfig()) == tmp_path / "systemd" / "ledger.db"
    # several StateDirectory= entries: systemd joins them with ':'; the ledger goes in the first
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'first'}:{tmp_path / 'second'}")
    assert paths.ledger_file(LedgerConfig()) == tmp_path / "first" / "ledger.db"


def test_a_move_is_written_ahead_and_ended_by_its_count_or_by_parking(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    first, second, third = item("kitchen", 2), item("hazardous", 1), item("other", 3)
    for it in (first, second, third):
        ledger.begin_move(it)
    ledger.begin_move(first)  # written again (a retried move): still one open move
    assert ledger.moving() == [second, first, third]  # oldest first, the whole item kept
    assert ledger.counts() == {} and ledger.pending() == []  # a move is not a count
    ledger.record(first)
    ledger.end_move(second.id, parked=True)
    ledger.end_move(third.id, parked=False)  # still on the tray: it will be sorted again
    again = Ledger(tmp_path / "l.db")
    assert again.moving() == [] and again.counts() == {"kitchen": 1} and again.parked_items() == 1


def test_the_outbox_bound_drops_nothing_at_the_bound_and_one_past_it(tmp_path):
    ledger = Ledger(tmp_path / "l.db", max_pending_events=2)
    ledger.record(item("other", 0))
    ledger.record(item("other", 1))
    assert ledger.dropped_events() == 0 and len([p for p in ledger.pending() if p.kind == "event"]) == 2
    ledger.record(item("other", 2))
    assert ledger.dropped_events() == 1 and len([p for p in ledger.pending() if p.kind == "event"]) == 2


def test_events_read_back_as_they_were_recorded(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    recorded = [
        dataclasses.replace(item("hazardous", 1), uncertain=True, most_probable_bin="other", cost_rule=True),
        item("kitchen", 2),
    ]
    for it in recorded:
        ledger.record(it)
    assert ledger.events() == recorded[::-1]  # newest first
    assert ledger.events(limit=1) == [recorded[1]]
    event = json.loads(next(p.payload for p in ledger.pending() if p.key == recorded[0].id))
    assert event == dataclasses.asdict(recorded[0])


def test_open_ledger_takes_the_configured_bounds_and_makes_its_folder(tmp_path):
    from edge.config import LedgerConfig
    from edge.ledger import open_ledger

    path = tmp_path / "state" / "nested" / "ledger.db"
    ledger = open_ledger(LedgerConfig(path=str(path), max_pending_events=7, keep_events=9))
    assert ledger.path == path and path.exists()
    assert (ledger.max_pending_events, ledger.keep_events) == (7, 9)


def test_a_ledger_that_cannot_be_created_names_it_and_the_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SmartbinError) as err:
        Ledger(blocker / "ledger.db")
    assert str(blocker / "ledger.db") in err.value.problem and "ledger.path" in err.value.fix


def test_the_ledger_is_written_from_another_thread(tmp_path):
    """Telemetry acknowledges from its own thread."""
    import threading

    ledger = Ledger(tmp_path / "l.db")
    ledger.record(item())
    seq = ledger.pending()[0].seq
    worker = threading.Thread(target=ledger.acknowledge, args=(seq,))
    worker.start()
    worker.join()
    assert [p.seq for p in ledger.pending()] == [seq + 1]


def test_a_lowered_bound_drops_every_event_past_it_at_once(tmp_path):
    ledger = Ledger(tmp_path / "l.db", max_pending_events=10)
    for n in range(5):
        ledger.record(item("other", n))
    lowered = Ledger(tmp_path / "l.db", max_pending_events=2)
    lowered.record(item("other", 5))
    assert lowered.dropped_events() == 4
