"""Outbox rows that cannot be read or sent are set aside in the ledger file: kept, never deleted, and
every row behind them still read in order."""

from __future__ import annotations

import logging
import sqlite3
import uuid

from edge import ledger as ledger_module
from edge.config import LedgerConfig
from edge.ledger import Ledger, SortedItem, read_summary


def record(ledger: Ledger, n: int) -> list[str]:
    ids = []
    for i in range(n):
        item = SortedItem(str(uuid.uuid4()), 1_700_000_000.0 + i, "paper", "recyclable", 0.9, False, 1.0, "m")
        ledger.record(item)
        ids.append(item.id)
    return ids


def corrupt_payload(path, key: str) -> int:
    """A payload that is no longer UTF-8, written by another connection (a bit flip on the card)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        seq = other.execute("SELECT seq FROM outbox WHERE key = ?", (key,)).fetchone()[0]
        other.execute("UPDATE outbox SET payload = CAST(X'7BFF7D' AS TEXT) WHERE seq = ?", (seq,))
        return seq
    finally:
        other.close()


def test_an_unreadable_row_is_set_aside_kept_as_it_was_and_the_rest_read_in_order(tmp_path, caplog):
    path = tmp_path / "l.db"
    ledger = Ledger(path)
    ids = record(ledger, 4)
    seq = corrupt_payload(path, ids[1])
    rows = ledger.pending()
    assert [row.key for row in rows] == [ids[0], ids[2], ids[3], "recyclable"]
    assert ledger.pending() == rows  # set aside once, not again
    [kept] = ledger.dead_letters()
    assert (kept.seq, kept.kind, kept.key, kept.payload) == (seq, b"event", ids[1].encode(), b"{\xff}")
    assert kept.reason == "its payload is not UTF-8 (a damaged disk or card leaves rows so)"
    assert ledger.waiting() == 4 and ledger.set_aside_count() == 1
    [line] = [r for r in caplog.records if r.name == "edge.ledger"]
    assert line.levelno == logging.ERROR
    assert line.getMessage() == (
        f"outbox: message {seq} (event {ids[1]}) set aside, not sent: its payload is not UTF-8 (a damaged "
        f"disk or card leaves rows so). It is kept in the dead_letters table of {path.absolute()}; inspect "
        f"it with: sqlite3 {path.absolute()} 'SELECT seq, kind, key, reason, length(payload), "
        f"substr(payload, 1, 200) FROM dead_letters WHERE seq = {seq}'. The messages after it are sent"
    )
    ledger.close()
    assert read_summary(LedgerConfig(path=str(path))).set_aside == 1
    assert Ledger(path).dead_letters() == [kept]  # kept across a restart


def test_a_row_set_aside_by_its_sender_is_kept_whole(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ids = record(ledger, 2)
    first = ledger.pending(1)[0]
    ledger.set_aside(first.seq, "too big")
    ledger.set_aside(first.seq, "too big")  # gone from the outbox already: nothing to do
    [kept] = ledger.dead_letters()
    assert (kept.seq, kept.payload.decode(), kept.reason) == (first.seq, first.payload, "too big")
    assert [row.key for row in ledger.pending()] == [ids[1], "recyclable"]


def test_a_ledger_written_before_dead_letters_gains_the_table_and_keeps_its_schema_version(
    tmp_path, monkeypatch
):
    """An existing ledger file gains the table when it is opened; its version stays, so that a release
    from before it (a rollback) still opens the file."""
    path = tmp_path / "l.db"
    with monkeypatch.context() as old_release:
        old_release.setattr(ledger_module, "ADDITIVE_TABLES", ledger_module.ADDITIVE_TABLES[:1])
        old = Ledger(path)
        ids = record(old, 3)
        old.close()
    raw = sqlite3.connect(path)
    tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    version = raw.execute("PRAGMA user_version").fetchone()[0]
    raw.close()
    assert "dead_letters" not in tables and version == len(ledger_module.MIGRATIONS)
    seq = corrupt_payload(path, ids[0])

    ledger = Ledger(path)
    assert [row.key for row in ledger.pending()] == [ids[1], ids[2], "recyclable"]
    assert [letter.seq for letter in ledger.dead_letters()] == [seq]
    assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == version
    assert ledger.counts() == {"recyclable": 3}
    ledger.close()
