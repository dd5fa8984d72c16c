"""How full each bin is: the items counted into it since it was last emptied, against its capacity.

The items are kept in the ledger, in the same transaction as the count (exactly once, through
restarts); this module only turns them into what a dashboard shows and acts on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

OK, NEARLY_FULL, FULL = "ok", "nearly_full", "full"


def fill_state(items: int, capacity: int, nearly_full: float) -> str:
    """``full`` at the capacity, ``nearly_full`` from ``nearly_full`` of it, else ``ok``."""
    if items >= capacity:
        return FULL
    return NEARLY_FULL if items >= nearly_full * capacity else OK


def crossing(before: int, after: int, capacity: int, nearly_full: float) -> str | None:
    """The state a bin has just entered when its fill goes from ``before`` to ``after`` items (None if
    it stayed in the same one, or went down: emptying is its own event)."""
    old, new = fill_state(before, capacity, nearly_full), fill_state(after, capacity, nearly_full)
    return new if new != old and after > before else None


def fill_report(
    fill: Mapping[str, tuple[int, float | None]], capacity: Mapping[str, int], nearly_full: float
) -> dict[str, dict[str, Any]]:
    """Per tracked bin: items, capacity, percent, state and when it was last emptied (a Unix time, or
    None if never), from the ledger's ``{bin: (items, emptied_at)}``."""
    report = {}
    for bin_id, cap in capacity.items():
        items, emptied_at = fill.get(bin_id, (0, None))
        report[bin_id] = {
            "items": items,
            "capacity": cap,
            "percent": round(100 * items / cap, 1),
            "state": fill_state(items, cap, nearly_full),
            "emptied_at": None if emptied_at is None else round(emptied_at, 3),
        }
    return report


def full_bins(report: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [bin_id for bin_id, fill in report.items() if fill["state"] == FULL]


def full_fault(report: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The state's fault while any bin is full, naming each and what to do."""
    full = full_bins(report)
    if not full:
        return None
    return (
        "full: "
        + ", ".join(f"{b} ({report[b]['items']} of {report[b]['capacity']} items)" for b in full)
        + f"; empty it and send emptied (smartbin emptied {full[0]}, or MQTT cmd/emptied)"
    )


def bins_to_empty(requested: str | None, known: Sequence[str]) -> list[str]:
    """The bins an ``emptied`` names: one bin id, or ``all`` (also when none is named)."""
    if requested in (None, "", "all"):
        return list(known)
    if requested not in known:
        raise ValueError(f"no bin {str(requested)[:40]!r}; the bins are: {', '.join(known)}, or all")
    return [requested]
