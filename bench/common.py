"""What every benchmark shares: the machine it ran on, timing, the printed table and the JSON file.

Figures are only compared within one run, side by side: each script prints
ratios to a reference measured in the same process, on the same frames.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python bench/x.py` from a checkout, without installing

SHARED = Path(os.environ.get("SMARTBIN_DATA", REPO.parent / "shared" / "datasets"))
BUNDLE = REPO / "models" / "household38-mnv2"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", default=str(REPO / "bench" / "results"), help="folder for the JSON (default bench/results)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a handful of frames: checks that it runs, measures nothing"
    )
    return p


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    """Milliseconds per call, after ``warmup`` calls that are not counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "n": len(ordered),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [
        [f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_result(name: str, out: str | Path, data: dict[str, Any]) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=1) + "\n")
    print(f"\nwrote {path}")
    return path


def test_photos(n: int) -> list[Path]:
    """Held-out test photos of the shipped model, spread over the labels; [] without ../shared."""
    split = json.loads((BUNDLE / "test_split.json").read_text())
    root = SHARED / "garbage12"
    if not root.is_dir():
        return []
    by_label: dict[str, list[Path]] = {}
    for photo in split:
        by_label.setdefault(photo["label"], []).append(SHARED / photo["source"] / photo["path"])
    picked, i = [], 0
    while len(picked) < n and any(i < len(v) for v in by_label.values()):
        picked += [v[i] for v in by_label.values() if i < len(v)]
        i += 1
    return picked[:n]
