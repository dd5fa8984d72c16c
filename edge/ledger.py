"""Ledger: the single source of truth for counts and for every message not yet acknowledged.

One SQLite file (WAL, ``synchronous=FULL``: a committed sort survives a power
cut). Each sorted item is one transaction: the bin's count, the event, and the
outbox rows that telemetry will publish. A row leaves the outbox only when
telemetry acknowledges it (the broker's PUBACK).

Every move is written ahead: the item is *moving* (``begin_move``) before the
servo is commanded, and the transaction that counts it (``record``) also ends
the move. A move still open at start is one the process did not see finish (a
power cut); the daemon resolves it from the controller and the tray
(``moving``, then ``record`` or ``end_move``), so each item is counted once.

Outbox policy (documented in the config reference):
- ``count`` rows are retained values: a newer count for a bin replaces an
  unsent older one, so counts are never dropped and never pile up.
- ``event`` rows are bounded by ``max_pending_events``; past it the oldest
  unsent events are dropped first, and how many were dropped is itself kept
  (``dropped_events``) for the state topic.
- a row that cannot be read (not UTF-8: a damaged card) or sent (see ``set_aside``) is moved to
  the ``dead_letters`` table, kept for inspection, never deleted, and logged with its ``seq``, so
  that it does not hold back every row behind it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from edge.config import LedgerConfig
from edge.errors import SmartbinError
from edge.fill import crossing
from edge.paths import ledger_file

log = logging.getLogger(__name__)


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Statements one by one: ``executescript`` would COMMIT the migration's transaction midway."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _schema_1(db: sqlite3.Connection) -> None:
    run_script(
        db,
        """
        CREATE TABLE counts (bin TEXT PRIMARY KEY, count INTEGER NOT NULL);
        CREATE TABLE events (
            id TEXT PRIMARY KEY, time REAL NOT NULL, item TEXT NOT NULL, bin TEXT NOT NULL,
            confidence REAL NOT NULL, uncertain INTEGER NOT NULL, latency_ms REAL NOT NULL,
            model_id TEXT NOT NULL
        );
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, key TEXT NOT NULL,
            payload TEXT NOT NULL
        );
        CREATE INDEX outbox_kind_key ON outbox (kind, key);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        """,
    )


def _schema_2(db: sqlite3.Connection) -> None:
    """Each event keeps the time of each stage (capture, classify, move, ...) in ms, as JSON."""
    db.execute("ALTER TABLE events ADD COLUMN stages TEXT NOT NULL DEFAULT '{}'")


def _schema_3(db: sqlite3.Connection) -> None:
    """Each event says which bin was most probable and whether the taxonomy's costs chose another."""
    db.execute("ALTER TABLE events ADD COLUMN most_probable_bin TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE events ADD COLUMN cost_rule INTEGER NOT NULL DEFAULT 0")


def _schema_4(db: sqlite3.Connection) -> None:
    """Write-ahead moves: an item is in ``moves`` from before the servo is commanded until it is
    counted or parked."""
    db.execute("CREATE TABLE moves (id TEXT PRIMARY KEY, time REAL NOT NULL, item TEXT NOT NULL)")


# MIGRATIONS[n] takes a database at version n to n + 1. Append; never edit a released step.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_schema_1, _schema_2, _schema_3, _schema_4]

# Tables that a release before them can ignore are added without a new version, so that a bin
# rolled back to that release (deploy/flash.sh --rollback, or a failed health check) still opens
# its ledger. The older release does not update them; the fill is then short by what it counted.
ADDITIVE_TABLES = (
    # fill per bin: items counted into it since it was last emptied, and when that was
    "CREATE TABLE IF NOT EXISTS fill (bin TEXT PRIMARY KEY, items INTEGER NOT NULL, emptied_at REAL)",
    # outbox rows that could not be read or sent, moved here as they were (bytes and all)
    "CREATE TABLE IF NOT EXISTS dead_letters (seq INTEGER PRIMARY KEY, kind, key, payload, "
    "reason TEXT NOT NULL, time REAL NOT NULL)",
)

OUTBOX_ROW = "SELECT seq, CAST(kind AS BLOB), CAST(key AS BLOB), CAST(payload AS BLOB) FROM outbox"


@dataclass(frozen=True)
class SortedItem:
    id: str
    time: float
    item: str
    bin: str
    confidence: float
    uncertain: bool
    latency_ms: float
    model_id: str
    stages: dict[str, float] = field(default_factory=dict)
    most_probable_bin: str = ""
    cost_rule: bool = False


@dataclass(frozen=True)
class Pending:
    seq: int
    kind: str
    key: str
    payload: str


@dataclass(frozen=True)
class DeadLetter:
    """An outbox row set aside, its fields as the file holds them (they may not be text)."""

    seq: int
    kind: bytes
    key: bytes
    payload: bytes
    reason: str
    time: float


def decoded(seq: int, kind: bytes, key: bytes, payload: bytes) -> Pending | str:
    """The row as text, or why it cannot be read."""
    fields = {"kind": kind, "key": key, "payload": payload}
    try:
        return Pending(seq, *(value.decode("utf-8") for value in fields.values()))
    except UnicodeDecodeError:
        bad = next(name for name, value in fields.items() if not is_utf8(value))
        return f"its {bad} is not UTF-8 (a damaged disk or card leaves rows so)"


def log_set_aside(path: Path, seq: int, kind: bytes, key: bytes, reason: str) -> None:
    """One line a technician reading the journal can act on: which row, why, where it is kept."""
    what = f"{kind.decode('utf-8', 'backslashreplace')} {key.decode('utf-8', 'backslashreplace')[:64]}"
    log.error(
        "outbox: message %d (%s) set aside, not sent: %s. It is kept in the dead_letters table of %s; "
        "inspect it with: sqlite3 %s 'SELECT seq, kind, key, reason, length(payload), "
        "substr(payload, 1, 200) FROM dead_letters WHERE seq = %d'. The messages after it are sent",
        seq,
        what,
        reason,
        path,
        path,
        seq,
    )


def is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def open_ledger(cfg: LedgerConfig) -> Ledger:
    return Ledger(ledger_file(cfg), cfg.max_pending_events, cfg.keep_events)


@dataclass(frozen=True)
class LedgerSummary:
    """What a technician asks of the ledger: the counts, and what has not reached the broker."""

    path: Path
    counts: dict[str, int]
    waiting: int  # messages in the outbox, not yet acknowledged by the broker
    dropped: int  # events dropped after long outages (``max_pending_events``)
    set_aside: int = 0  # outbox rows that could not be read or sent, kept in ``dead_letters``

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def read_summary(cfg: LedgerConfig) -> LedgerSummary:
    """Open the configured ledger, read its summary, close it."""
    ledger = open_ledger(cfg)
    try:
        return LedgerSummary(
            ledger.path, ledger.counts(), ledger.waiting(), ledger.dropped_events(), ledger.set_aside_count()
        )
    finally:
        ledger.close()


class Ledger:
    def __init__(
        self, path: str | Path, max_pending_events: int = 10_000, keep_events: int = 100_000
    ) -> None:
        self.path = Path(path)
        self.max_pending_events, self.keep_events = max_pending_events, keep_events
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise SmartbinError(
                f"ledger {self.path} cannot be opened: {exc}",
                "check the disk and the file's permissions; a corrupt file can be moved aside "
                "(counts restart from 0)",
            ) from None
        except OSError as exc:
            raise SmartbinError(f"ledger {self.path} cannot be created: {exc}", "check ledger.path") from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise SmartbinError(
                f"ledger {self.path} has schema version {version}, newer than this smartbin "
                f"({len(MIGRATIONS)})",
                "update smartbin (or roll back with its own ledger); the file is left untouched",
            )
        for step in range(version, len(MIGRATIONS)):
            with self._transaction():
                MIGRATIONS[step](self.db)
                self.db.execute(f"PRAGMA user_version = {step + 1}")
        with self._transaction():
            for statement in ADDITIVE_TABLES:
                self.db.execute(statement)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _put_count(self, bin_id: str, count: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE kind = 'count' AND key = ?", (bin_id,))
        self.db.execute(
            "INSERT INTO outbox (kind, key, payload) VALUES ('count', ?, ?)", (bin_id, str(count))
        )

    def begin_move(self, item: SortedItem) -> None:
        """The item is about to be moved: written before the servo is commanded."""
        with self._lock, self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO moves (id, time, item) VALUES (?, ?, ?)",
                (item.id, item.time, json.dumps(asdict(item))),
            )

    def moving(self) -> list[SortedItem]:
        """Moves begun and never ended: counted nor parked (the process stopped mid-move)."""
        with self._lock:
            rows = self.db.execute("SELECT item FROM moves ORDER BY time").fetchall()
        return [SortedItem(**json.loads(row[0])) for row in rows]

    def end_move(self, item_id: str, parked: bool) -> None:
        """The move ends without a count: the item is still on the tray (``parked`` counts it as left there
        for a person; otherwise it will be sorted again)."""
        with self._lock, self._transaction():
            self.db.execute("DELETE FROM moves WHERE id = ?", (item_id,))
            if parked:
                self._bump("parked_items")

    def record(self, item: SortedItem, capacity: int | None = None, nearly_full: float = 0.8) -> int:
        """Count one sorted item, end its move, add it to its bin's fill and queue its messages,
        atomically; returns the bin's new count. With the bin's ``capacity``, the fill crossing into
        ``nearly_full`` or ``full`` queues a fill event too."""
        with self._lock, self._transaction():
            before = self._fill_items(item.bin)
            self.db.execute(
                "INSERT INTO fill (bin, items) VALUES (?, 1) "
                "ON CONFLICT(bin) DO UPDATE SET items = items + 1",
                (item.bin,),
            )
            entered = crossing(before, before + 1, capacity, nearly_full) if capacity else None
            if entered:
                self._put_fill_event(item.bin, entered, item.time, before + 1, capacity, None)
            self.db.execute("DELETE FROM moves WHERE id = ?", (item.id,))
            self.db.execute(
                "INSERT INTO counts (bin, count) VALUES (?, 1) "
                "ON CONFLICT(bin) DO UPDATE SET count = count + 1",
                (item.bin,),
            )
            count = self.db.execute("SELECT count FROM counts WHERE bin = ?", (item.bin,)).fetchone()[0]
            self.db.execute(
                "INSERT INTO events (id, time, item, bin, confidence, uncertain, latency_ms, model_id, "
                "stages, most_probable_bin, cost_rule) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    item.time,
                    item.item,
                    item.bin,
                    item.confidence,
                    int(item.uncertain),
                    item.latency_ms,
                    item.model_id,
                    json.dumps(item.stages),
                    item.most_probable_bin,
                    int(item.cost_rule),
                ),
            )
            payload = json.dumps(asdict(item), separators=(",", ":"))
            self.db.execute(
                "INSERT INTO outbox (kind, key, payload) VALUES ('event', ?, ?)", (item.id, payload)
            )
            self._put_count(item.bin, count)
            self._enforce_bounds()
            return count

    def queue_held(self, item_id: str, payload: Mapping[str, object]) -> None:
        """Queue the ``held`` message of an item left on the tray, never tipped and never counted (not
        waste, or unknown): delivered like an event, bounded with them by ``max_pending_events``."""
        with self._lock, self._transaction():
            self.db.execute(
                "INSERT INTO outbox (kind, key, payload) VALUES ('held', ?, ?)",
                (item_id, json.dumps(dict(payload), separators=(",", ":"))),
            )
            self._enforce_bounds()

    def _enforce_bounds(self) -> None:
        pending = self.db.execute("SELECT COUNT(*) FROM outbox WHERE kind IN ('event', 'held')").fetchone()[0]
        excess = pending - self.max_pending_events
        if excess > 0:
            self.db.execute(
                "DELETE FROM outbox WHERE seq IN "
                "(SELECT seq FROM outbox WHERE kind IN ('event', 'held') ORDER BY seq LIMIT ?)",
                (excess,),
            )
            self._bump("dropped_events", excess)
        self.db.execute(
            "DELETE FROM events WHERE rowid IN "
            "(SELECT rowid FROM events ORDER BY time DESC LIMIT -1 OFFSET ?)",
            (self.keep_events,),
        )

    def _fill_items(self, bin_id: str) -> int:
        row = self.db.execute("SELECT items FROM fill WHERE bin = ?", (bin_id,)).fetchone()
        return row[0] if row else 0

    def _put_fill_event(
        self, bin_id: str, event: str, when: float, items: int, capacity: int | None, by: str | None
    ) -> None:
        payload = {"bin": bin_id, "event": event, "time": when, "items": items}
        payload |= {"capacity": capacity, "by": by}
        self.db.execute(
            "INSERT INTO outbox (kind, key, payload) VALUES ('fill_event', ?, ?)",
            (bin_id, json.dumps(payload, separators=(",", ":"))),
        )

    def fill(self) -> dict[str, tuple[int, float | None]]:
        """Per bin: items since it was last emptied, and when that was (None: never)."""
        with self._lock:
            rows = self.db.execute("SELECT bin, items, emptied_at FROM fill ORDER BY bin").fetchall()
        return {bin_id: (items, at) for bin_id, items, at in rows}

    def emptied(
        self, bins: Sequence[str], by: str, when: float, capacity: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """The bins were emptied: their fill restarts from 0, and an ``emptied`` fill event says who or
        what emptied each, when, and how many items it held. Returns those items per bin."""
        held = {}
        with self._lock, self._transaction():
            for bin_id in bins:
                held[bin_id] = self._fill_items(bin_id)
                self.db.execute(
                    "INSERT INTO fill (bin, items, emptied_at) VALUES (?, 0, ?) "
                    "ON CONFLICT(bin) DO UPDATE SET items = 0, emptied_at = excluded.emptied_at",
                    (bin_id, when),
                )
                cap = (capacity or {}).get(bin_id)
                self._put_fill_event(bin_id, "emptied", when, held[bin_id], cap, by)
        return held

    def reset_counts(self) -> None:
        with self._lock, self._transaction():
            for (bin_id,) in self.db.execute("SELECT bin FROM counts").fetchall():
                self._put_count(bin_id, 0)
            self.db.execute("UPDATE counts SET count = 0")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.db.execute("SELECT bin, count FROM counts ORDER BY bin").fetchall())

    def _bump(self, key: str, n: int = 1) -> None:
        self.db.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, n),
        )

    def _meta(self, key: str) -> int:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else 0

    def dropped_events(self) -> int:
        return self._meta("dropped_events")

    def parked_items(self) -> int:
        return self._meta("parked_items")

    def pending(self, limit: int = 100) -> list[Pending]:
        """Unacknowledged messages, oldest first. A row that cannot be read is set aside, not returned
        (read as bytes, else one such row fails the whole read, and every row behind it waits)."""
        with self._lock:
            while True:
                rows = self.db.execute(f"{OUTBOX_ROW} ORDER BY seq LIMIT ?", (limit,)).fetchall()
                found = [decoded(*row) for row in rows]
                unreadable = [(row[0], why) for row, why in zip(rows, found) if isinstance(why, str)]
                if not unreadable:
                    return [row for row in found if isinstance(row, Pending)]
                for seq, why in unreadable:
                    self._set_aside(seq, why)

    def set_aside(self, seq: int, reason: str) -> None:
        """Move an outbox row that cannot be sent (``reason``) to ``dead_letters``, and log it."""
        with self._lock:
            self._set_aside(seq, reason)

    def _set_aside(self, seq: int, reason: str) -> None:
        with self._transaction():
            row = self.db.execute(
                "SELECT CAST(kind AS BLOB), CAST(key AS BLOB) FROM outbox WHERE seq = ?", (seq,)
            ).fetchone()
            if row is None:
                return  # acknowledged meanwhile
            self.db.execute(
                "INSERT INTO dead_letters (seq, kind, key, payload, reason, time) "
                "SELECT seq, kind, key, payload, ?, ? FROM outbox WHERE seq = ?",
                (reason, time.time(), seq),
            )
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        log_set_aside(self.path.absolute(), seq, *row, reason)

    def set_aside_count(self) -> int:
        """How many outbox rows were set aside (``dead_letters``)."""
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]

    def dead_letters(self) -> list[DeadLetter]:
        """The outbox rows set aside, oldest first."""
        with self._lock:
            rows = self.db.execute(
                "SELECT seq, CAST(kind AS BLOB), CAST(key AS BLOB), CAST(payload AS BLOB), reason, time "
                "FROM dead_letters ORDER BY seq"
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def waiting(self) -> int:
        """How many messages are in the outbox."""
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def acknowledge(self, seq: int) -> None:
        """The broker has the message: it leaves the outbox."""
        with self._lock:
            self.db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def items_since(self, since: float) -> int:
        """Items counted at or after ``since`` (Unix time), from the events kept (``keep_events``)."""
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM events WHERE time >= ?", (since,)).fetchone()[0]

    def events(self, limit: int = 20) -> list[SortedItem]:
        with self._lock:
            rows = self.db.execute(
                "SELECT id, time, item, bin, confidence, uncertain, latency_ms, model_id, stages, "
                "most_probable_bin, cost_rule FROM events ORDER BY time DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [SortedItem(*r[:5], bool(r[5]), r[6], r[7], json.loads(r[8]), r[9], bool(r[10])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()
