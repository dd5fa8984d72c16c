"""Hand-written bugs, one per guarantee, of the kinds mutmut never makes.

mutmut changes operators and constants inside the functions of the modules it is given. People also
delete a line, turn a ``while`` into an ``if``, swap two arguments, leave a bound of a help text
unenforced, let a template stop escaping, or break a branch only a non-default setting reaches, in
any file, HTML and ``host_training/`` included. Each entry below is one such bug in the code as it is
(``find`` must occur exactly once in ``file``, which tests/test_catalogue.py checks in CI), with the
tests that must fail on it.

``scripts/mutation --catalogue [ID ...]`` applies each in turn to a copy of the checkout (the
checkout itself is never touched), runs its tests there, and prints which were caught. Every entry
must be caught; one that is not is a missing test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NO_ESCAPING = (
    '  children.forEach((c) => (typeof c === "string" ? node.insertAdjacentHTML("beforeend", c) '
    ": node.append(c)));"
)


@dataclass(frozen=True)
class Bug:
    id: str
    guarantee: str
    kind: str  # deleted line, while to if, swapped arguments, unenforced bound, no escaping, setting branch
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]


CATALOGUE: tuple[Bug, ...] = (
    Bug(
        "labelling-name-check",
        "the labelling page serves only files named like a frame",
        "deleted line",
        "edge/service/labelling.py",
        "        if not NAME.fullmatch(name):\n            raise Unreadable(\"not a frame's name",
        "        if False:\n            raise Unreadable(\"not a frame's name",
        ("tests/test_labelling_safety.py",),
    ),
    Bug(
        "labelling-escaping",
        "the labelling page shows a sidecar's or a label's text as text, never as markup",
        "no escaping",
        "edge/service/labelling.html",
        "  children.forEach((c) => node.append(c));",
        NO_ESCAPING,
        ("tests/test_labelling_safety.py",),
    ),
    Bug(
        "fleet-escaping",
        "the fleet page shows a bin's device id and faults as text, never as markup",
        "no escaping",
        "edge/service/fleet.html",
        "  children.forEach((c) => node.append(c));",
        NO_ESCAPING,
        ("tests/test_fleet_safety.py",),
    ),
    Bug(
        "web-host-check",
        "a page is read only through a name of this machine (no DNS rebinding)",
        "deleted line",
        "edge/service/web.py",
        '        why = host_refusal(self.headers.get("Host"), self.server.allowed, self.server.any_ip)\n'
        "        if why:",
        "        why = None\n        if why:",
        ("tests/test_labelling_safety.py", "tests/test_fleet_safety.py"),
    ),
    Bug(
        "stale-frames",
        "a sort just after a tip never counts the tipped item again",
        "deleted line",
        "edge/service/daemon.py",
        "        self.camera.drop_buffered()\n        self.trigger.handled()\n",
        "        self.trigger.handled()\n",
        ("tests/test_counting.py",),
    ),
    Bug(
        "sort-while-learning",
        "a sort while the empty tray is being learned is refused",
        "deleted line",
        "edge/service/daemon.py",
        "        if self.trigger.state is TriggerState.LEARNING:\n",
        "        if False:\n",
        ("tests/test_counting.py",),
    ),
    Bug(
        "retained-command",
        "a retained MQTT command is never carried out",
        "deleted line",
        "edge/mqtt/commands.py",
        "        if retained:\n            return self._refuse_retained(reply, payload, where)\n",
        "",
        ("tests/test_commands.py", "tests/test_commands_retained.py"),
    ),
    Bug(
        "outbox-while",
        "every readable outbox row is delivered though an unreadable one lies before it",
        "while to if",
        "edge/ledger.py",
        '            while True:\n                rows = self.db.execute(f"{OUTBOX_ROW}',
        '            if True:\n                rows = self.db.execute(f"{OUTBOX_ROW}',
        ("tests/test_ledger_dead_letters.py", "tests/test_telemetry_outbox.py"),
    ),
    Bug(
        "tray-adapts",
        "the learned empty tray follows slow lighting changes",
        "swapped arguments",
        "edge/camera/trigger.py",
        "cv2.accumulateWeighted(view, self.empty, cfg.adapt_rate)",
        "cv2.accumulateWeighted(self.empty, view, cfg.adapt_rate)",
        ("tests/test_trigger.py",),
    ),
    Bug(
        "unknown-fallback",
        "with sorting.unknown: fallback an unknown item goes to the fallback bin, never held",
        "setting branch",
        "edge/model/decision.py",
        '        if unknown == "fallback":\n            return unknown_item\n',
        "",
        ("tests/test_never_tip.py", "tests/test_held.py"),
    ),
    Bug(
        "interlock-hold",
        "with servo.interlock_stop: hold a move stopped by the lid stays where it is",
        "setting branch",
        "edge/servo/maestro.py",
        '    home = getattr(cfg, "interlock_stop", "home") == "home"\n',
        "    home = True\n",
        ("tests/test_interlock.py",),
    ),
    Bug(
        "calibration-applied",
        "the bin decides on calibrated probabilities (the bundle's temperature)",
        "deleted line",
        "edge/model/classifier.py",
        "        return calibrated(probabilities, self.temperature)",
        "        return probabilities",
        ("tests/test_calibration.py",),
    ),
    Bug(
        "parity-gate",
        "a training run whose int8 model disagrees with the float one writes no bundle",
        "deleted line",
        "host_training/train.py",
        "    if parity_gate_failures(check, settings):",
        "    if False:",
        ("tests/test_training.py::test_parity_failure_fails_loudly_and_writes_no_bundle",),
    ),
)


def checkout_copy(into: Path) -> Path:
    """The tracked and untracked (not ignored) files of the checkout, with ../shared linked beside."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    copy = into / REPO.name
    for name in filter(None, files):
        source, target = REPO / os.fsdecode(name), copy / os.fsdecode(name)
        if source.is_symlink() or source.is_file():  # a link (config/, models/) stays a link
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    shared = REPO.parent / "shared"
    if shared.exists():
        (into / "shared").symlink_to(shared)
    return copy


def apply(copy: Path, bug: Bug) -> str:
    """The file's text before the bug (to put back)."""
    path = copy / bug.file
    text = path.read_text(encoding="utf-8")
    if text.count(bug.find) != 1:
        raise SystemExit(f"{bug.id}: its text occurs {text.count(bug.find)} times in {bug.file}, not once")
    path.write_text(text.replace(bug.find, bug.replace), encoding="utf-8")
    return text


def run_tests(copy: Path, bug: Bug, timeout_s: float) -> tuple[str, float]:
    """``caught`` (a test failed, or it hung past ``timeout_s``), ``missed`` or ``error`` (none ran)."""
    started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *bug.tests]
    try:
        done = subprocess.run(command, cwd=copy, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "caught (timeout)", time.monotonic() - started
    outcome = {0: "missed", 1: "caught"}.get(done.returncode, f"error (pytest exit {done.returncode})")
    if outcome.startswith("error"):
        print(done.stdout[-2000:] + done.stderr[-2000:])
    return outcome, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scripts/mutation --catalogue",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("ids", nargs="*", help="entries to apply (default: all); --list shows them")
    p.add_argument("--list", action="store_true", help="print the catalogue and exit")
    p.add_argument(
        "--timeout", type=float, default=900, help="seconds one entry's tests may run (default 900)"
    )
    p.add_argument("--json", metavar="FILE", help="also write the outcome of each entry to FILE")
    args = p.parse_args(argv)
    chosen = [b for b in CATALOGUE if not args.ids or b.id in args.ids]
    unknown = set(args.ids) - {b.id for b in CATALOGUE}
    if unknown:
        p.error(f"no such entry: {', '.join(sorted(unknown))} (--list shows them)")
    if args.list:
        for bug in chosen:
            print(f"{bug.id:22} {bug.kind:18} {bug.file}: {bug.guarantee}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="smartbin-catalogue-") as tmp:
        copy = checkout_copy(Path(tmp))
        for bug in chosen:
            before = apply(copy, bug)
            try:
                outcome, seconds = run_tests(copy, bug, args.timeout)
            finally:
                (copy / bug.file).write_text(before, encoding="utf-8")
            print(f"{outcome:18} {seconds:6.0f} s  {bug.id}: {bug.guarantee}", flush=True)
            results.append(
                {"id": bug.id, "kind": bug.kind, "file": bug.file, "outcome": outcome, "s": round(seconds)}
            )
    caught = sum(r["outcome"].startswith("caught") for r in results)
    print(f"\n{caught} of {len(results)} hand-written bugs caught")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
