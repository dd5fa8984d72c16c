"""``smartbin run``: the sorting loop that runs on the bin for months.

camera → trigger → classifier (K frames) → decision → servo → ledger → telemetry

One thread runs the loop; telemetry has its own (edge.mqtt.telemetry). A fault in
one part (camera, servo controller, broker, ledger disk) never stops the
process: the part is retried with backoff, the state topic and the log say
which part is down, and the rest carries on. An exception in the loop itself is
a fault too (``loop``), logged with its traceback; the loop goes on.

Counting (docs/reliability.md): an item is written to the ledger as *moving*
before the servo is commanded, and counted the moment the controller confirms
the tip, before the dwell and the return home. A move left open by a power cut
is resolved at the next start from the controller's position and the tray. An
item the ledger cannot write is not tipped: it waits on the tray (a ``ledger``
fault) until the disk takes writes again. The learned empty tray is kept in the
state folder, so an item on the tray at start is sorted, and a manual sort of
an empty tray is refused.

Held items (docs/reliability.md): a decision that is held (a never-tip label such as a hand or a phone,
or an item the bundle's out-of-distribution score finds unknown) leaves the item on the tray, untipped
and never written to the ledger as a move: a ``tray`` fault names the reason and a ``held`` message is
queued in the ledger's outbox. The tray button and the sort command never tip a held item whose rule
forbids it (``override: false``: a hand); for the others a second press while the same item is held
sorts it, once. The item taken off the tray (the trigger sees the empty tray) clears the hold.

systemd: READY=1 once the camera, model, servo controller and ledger are up
(or after ``sorting.ready_timeout_s`` with the missing part reported),
WATCHDOG=1 from every turn of the loop, STATUS= with counts and faults.
Signals: SIGTERM/SIGINT finish a move under way (tip, count, dwell, return),
leave an item still being classified or waiting for the servo on the tray
(sorted after the restart, never half-counted), send the servo home, publish
``offline`` and exit 0; SIGHUP reloads the config and taxonomy (an invalid
one is refused and the running one kept); SIGUSR1, the MQTT sort command and the
controller's button sort what is on the tray now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import edge
from edge.camera.idle import IdlePace
from edge.camera.kinds import open_source
from edge.camera.sources import FrameSource
from edge.camera.supervisor import Camera
from edge.camera.trigger import (
    Trigger,
    TriggerState,
    analysis_view,
    changed_share,
    load_tray,
    make_trigger,
    save_tray,
)
from edge.config import Config, ServoConfig, TriggerConfig, load_config
from edge.errors import SmartbinError
from edge.fill import FULL, bins_to_empty, fill_report, full_bins, full_fault
from edge.ledger import Ledger, SortedItem, open_ledger
from edge.model.classifier import Classifier, load_classifier
from edge.model.decision import Decision, decide
from edge.mqtt.commands import CommandTable
from edge.mqtt.telemetry import Telemetry
from edge.paths import pid_file, review_folder, tray_file
from edge.service.commands import register_commands
from edge.service.notify import Notifier
from edge.service.review import review_reason, save_for_review
from edge.servo.link import ActuatorFault, LidOpen
from edge.servo.protocols import Controller, open_controller
from edge.servo.supervisor import Calibration, ServoSupervisor

log = logging.getLogger("smartbin.daemon")

STATUS_EVERY_S = 2.0
IDLE_WAIT_S = 0.05
LEDGER_RETRY_S = 2.0  # a ledger that refused a write is tried again this often
OVERRIDE_WINDOW_S = 30.0  # the second press that sorts a held item must come this soon after the first
LOOP_RETRY_S = 0.5  # pause after an exception in the loop, so a repeating one does not spin
LOOP_FAULT_HOLD_S = 30.0  # how long a loop exception stays on the state topic after the last one
TRAY_SAVE_EVERY_S = 600.0  # the remembered empty tray follows the lighting this often
VIEW_CHANGED_SHARE = 0.8  # a first frame this unlike the remembered tray: the camera moved; learn again


@dataclass
class Item:
    """An item classified and on its way to a bin (or waiting for the servo or the ledger)."""

    id: str
    decision: Decision
    probabilities: np.ndarray
    triggered_at: float
    record: SortedItem  # what the ledger gets: written ahead as moving, counted once tipped
    stages: dict[str, float] = field(default_factory=dict)
    attempts: int = 0
    written: bool = False  # the move is in the ledger


def local_midnight(now: float) -> float:
    """The Unix time at which the bin's local day of ``now`` began."""
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))


def resolve_move(at_bin: bool | None, tray_shows_item: bool | None) -> str:
    """What became of an item whose move was open when the process stopped (``None``: cannot tell).

    ``counted``: it fell into its bin; ``resort``: it is still on the tray and will be sorted again;
    ``parked``: nobody can say, or it was taken off by hand: not counted, a person should look.
    """
    if at_bin:
        return "counted"  # the controller holds the tray at the bin: the tip happened
    if tray_shows_item:
        return "resort"
    if at_bin is None and tray_shows_item is False:
        return "counted"  # the controller cannot say; the item has left the tray
    return "parked"


class Daemon:
    ledger: Ledger
    classifier: Classifier
    trigger: Trigger
    camera: Camera
    servo: ServoSupervisor
    telemetry: Telemetry

    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        *,
        opener: Callable[[Any], FrameSource] = open_source,
        connect: Callable[[ServoConfig], Controller] = open_controller,
        notifier: Notifier | None = None,
        on_sorted: Callable[[SortedItem], None] | None = None,
        on_held: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.config, self.config_path = config, config_path
        self.opener, self.connect, self.clock, self.draw = opener, connect, clock, draw
        self.notifier = notifier or Notifier()
        self.on_sorted = on_sorted
        self.on_held = on_held  # told of each item held on the tray (the demo's person takes it back)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._sort_now = threading.Event()
        self._wake = threading.Event()  # ends an idle rest early: a command, a stop
        self._held_lock = threading.Lock()  # the held item is read by the MQTT thread's sort command
        self.held: Item | None = None  # an item held on the tray (Decision.held), never tipped by itself
        self._held_presses = 0  # presses of sort since it was held
        self._first_press_at = 0.0
        self._override_now = False  # a person pressed twice: sort the held item
        self._held_fault: str | None = None  # the tray fault the hold set
        self._held_messages: list[dict[str, Any]] = []  # held messages the ledger refused, retried
        self._lid_tray: np.ndarray | None = None  # the empty tray, while an item waits for the lid
        self.started = False  # the parts below are built together by start(), or not at all
        self.pending: Item | None = None
        self.votes: list[np.ndarray] = []
        self.triggered_at = 0.0
        self.tray_fault: str | None = None
        self._refused_for: str | None = None  # the full bin an item on the tray was refused for
        self._fill_seen: dict[str, dict[str, Any]] = {}
        self._fill_told: dict[str, dict[str, Any]] = {}  # the fill the state was last published with
        self._day = 0.0  # the local midnight the state's items_today counts from
        self._today_seen = 0
        self.ledger_fault: str | None = None
        self._ledger_retry_at = 0.0
        self.unrecorded: SortedItem | None = None  # tipped; the ledger has not taken its count yet
        self.loop_fault: str | None = None
        self._loop_failed_at = 0.0
        self._tray_saved_at: float | None = None  # None: the learned tray of this view is not saved yet
        self._frame_shape: tuple[int, ...] | None = None
        self.sorted_this_run = 0
        self.last_item: dict[str, Any] | None = None
        self.ready = False
        self._view = 0
        self._faults: dict[str, str] = {}
        self._status_text = ""
        self._status_at = self._watchdog_at = 0.0

    # -- requests from signals, MQTT and the CLI (any thread) ------------------------

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()

    def request_sort(self, source: str = "sort command") -> str | None:
        """Classify and sort what is on the tray now, whatever the trigger says.

        Refused (the reason is returned) when the trigger sees an empty tray: sorting the bare tray
        would count an item that does not exist. A held item (see :meth:`hold`) is never sorted by a
        press when its rule forbids it (a hand); otherwise the second press while it is held sorts it."""
        refused = self._sort_refused()
        if refused is not None:
            log.warning("%s refused: %s", source, refused)
            return refused
        with self._held_lock:
            held = self.held
            if held is not None:
                decision = held.decision
                if not decision.override:
                    refused = f"{decision.held}: it is never tipped, take it off the tray"
                    log.warning("%s refused: %s", source, refused)
                    if self.trigger.shows_item is None:  # the camera cannot tell the tray is clear:
                        self._sort_now.set()  # the model looks again (held again while it is there)
                    return refused
                now = self.clock()
                if self._held_presses and now - self._first_press_at > OVERRIDE_WINDOW_S:
                    self._held_presses = 0  # a press long after the first starts again
                self._held_presses += 1
                if self._held_presses < 2:
                    self._first_press_at = now
                    refused = (
                        f"{decision.held}; press sort again within {OVERRIDE_WINDOW_S:g} s to sort it "
                        f"into {decision.override_bin}"
                    )
                    log.warning("%s refused: %s", source, refused)
                    return refused
                log.warning(
                    "%s pressed again: the model looks again, and sorts the held %s into %s if it still "
                    "sees it alone (a person checked it)",
                    source,
                    decision.item,
                    decision.override_bin,
                )
                self._override_now = True
                self._sort_now.set()
                return None
        log.info("%s: sorting what is on the tray now", source)
        self._sort_now.set()
        self._wake.set()
        return None

    def _sort_refused(self) -> str | None:
        """Why a sort command cannot be carried out now, or ``None``: the trigger sees the bare tray,
        or it is still learning it (a first start, a moved camera, a new frame size), when nothing
        tells an item from the tray and a queued command would count the bare tray as an item."""
        if not self.started:
            return None
        if self.trigger.state is TriggerState.LEARNING:
            return (
                "the empty tray is being learned (first start, or the camera's view changed): "
                "send sort again in a few seconds"
            )
        if self.trigger.shows_item is False:
            return "tray is empty"
        return None

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_sort("SIGUSR1 (smartbin sort)"))

    # -- the parts ------------------------------------------------------------------

    def _servo(self, cfg: ServoConfig) -> ServoSupervisor:
        return ServoSupervisor(lambda: self.connect(cfg), Calibration.from_config(cfg))

    def _telemetry(self, config: Config, ledger: Ledger, classifier: Classifier) -> Telemetry:
        """Built (credentials and TLS files read, which may raise) before anything is started."""
        commands = CommandTable()
        register_commands(commands, self, config.device_id)
        return Telemetry(
            config.mqtt,
            config.device_id,
            ledger,
            status=self.status,
            bins=classifier.bundle.taxonomy.bin_ids,
            commands=commands,
            fill_bins=[b for b in classifier.bundle.taxonomy.bin_ids if b in config.fill.capacity],
        )

    def start(self) -> None:
        """Build every part, or none: a part that must work (the ledger, the model, the broker's
        credentials) raises, and what was opened before it is closed again. The hardware parts
        (camera, servo controller, broker) never raise here: they become faults, retried."""
        config = self.config
        ledger = open_ledger(config.ledger)
        try:
            classifier = load_classifier(config.model)
            log.info(
                "model %s (%s, %d items, taxonomy %s)",
                classifier.bundle.model_id,
                classifier.runtime,
                len(classifier.labels),
                classifier.bundle.taxonomy.name,
            )
            telemetry = self._telemetry(config, ledger, classifier)
            trigger = make_trigger(config.trigger)
            idle = self._idle_pace(config.trigger)
            camera = Camera(config.camera, self.opener, self.clock)
            servo = self._servo(config.servo)
        except BaseException:
            ledger.close()
            raise
        self.ledger, self.classifier, self.telemetry = ledger, classifier, telemetry
        self.trigger, self.camera, self.servo, self.idle = trigger, camera, servo, idle
        self.started = True
        self.telemetry.start()
        self.started_at = self.clock()
        self.camera.open()
        self.resolve_moves()
        self._home()
        try:
            pid_file(config).write_text(f"{os.getpid()}\n")
        except OSError as exc:
            log.warning(
                "cannot write %s (smartbin sort will not find this process): %s", pid_file(config), exc
            )

    def _home(self) -> None:
        with contextlib.suppress(ActuatorFault):  # logged by the supervisor; retried from the loop
            self.servo.home()

    # -- moves a power cut left open ----------------------------------------------------

    def resolve_moves(self) -> None:
        """Count, re-sort or park each item whose move was open when the process stopped; before the
        servo is sent home, while the controller still holds the tray where the move left it."""
        try:
            moving = self.ledger.moving()
        except sqlite3.Error as exc:
            log.error(
                "cannot read the open moves from the ledger (%s); they are resolved at the next start", exc
            )
            return
        if not moving:
            return
        position = self.servo.position_us()
        shows_item = self._tray_shows_item_now()
        for record in moving:
            at_bin = None if position is None else self.servo.cal.at(position, record.bin)
            outcome = resolve_move(at_bin, shows_item)
            where = (
                "cannot say where the tray is" if position is None else f"holds the tray at {position:g} µs"
            )
            tray = {
                None: "the tray cannot be seen",
                True: "an item is on the tray",
                False: "the tray is empty",
            }
            log.warning(
                "item %s (%s → %s) was moving when smartbin stopped; the controller %s (%s), %s: %s",
                record.id[:8],
                record.item,
                record.bin,
                where,
                "the bin's position" if at_bin else "not the bin's",
                tray[shows_item],
                {
                    "counted": "counted once, now",
                    "resort": "not counted; it will be sorted again",
                    "parked": "not counted, recorded as parked: check the tray and the bin",
                }[outcome],
            )
            if outcome == "counted":
                self._write("counting an item tipped before the restart", lambda r=record: self.count(r))
            else:
                self._write(
                    "closing an open move",
                    lambda r=record, o=outcome: self.ledger.end_move(r.id, o == "parked"),
                )

    def _tray_shows_item_now(self) -> bool | None:
        """Whether the camera sees an item on the remembered empty tray (``None``: cannot tell)."""
        for _ in range(20):
            frame = self.camera.read()
            if frame is not None:
                break
            self._stop.wait(IDLE_WAIT_S)
        else:
            return None
        return self._frame_shows_item(frame)

    def _frame_shows_item(self, frame: np.ndarray, tray: np.ndarray | None = None) -> bool | None:
        """Whether ``frame`` shows an item on the remembered empty tray (``None``: cannot tell)."""
        cfg = self.config.trigger
        if cfg.mode != "presence":
            return None
        tray = tray if tray is not None else load_tray(tray_file(self.config), frame.shape, cfg.roi)
        if tray is None:
            return None
        return changed_share(analysis_view(frame, cfg.roi), tray, cfg.pixel_level) >= cfg.area

    # -- the remembered empty tray ------------------------------------------------------

    def _adopt_remembered_tray(self, frame: np.ndarray) -> None:
        """A new view: start from the empty tray saved by an earlier run if it is the same view."""
        self.trigger.relearn()
        self._tray_saved_at = None
        cfg = self.config.trigger
        if cfg.mode != "presence":
            return
        tray = load_tray(tray_file(self.config), frame.shape, cfg.roi)
        if tray is None:
            return
        unlike = changed_share(analysis_view(frame, cfg.roi), tray, cfg.pixel_level)
        if unlike >= VIEW_CHANGED_SHARE:
            log.warning(
                "trigger: the view is %.0f%% unlike the remembered empty tray (camera moved, lighting "
                "changed?); learning the empty tray again: keep the tray empty for a moment",
                unlike * 100,
            )
            return
        self.trigger.adopt(tray)
        self._tray_saved_at = self.clock()
        log.info("trigger: using the empty tray remembered in %s", tray_file(self.config))

    def _frame_size_changed(self, frame: np.ndarray) -> None:
        """Frames of another size (a camera that renegotiated): back to a size the tray was remembered
        for, start from that tray, so an item lying there meanwhile is still sorted; otherwise the
        trigger decides (it learns again if its view changed shape)."""
        (h, w), (was_h, was_w) = frame.shape[:2], self._frame_shape[:2]
        log.warning("camera: frames are now %dx%d (were %dx%d)", w, h, was_w, was_h)
        self.votes.clear()
        if load_tray(tray_file(self.config), frame.shape, self.config.trigger.roi) is not None:
            self._adopt_remembered_tray(frame)

    def _remember_tray(self, frame_shape: tuple[int, ...], force: bool = False) -> None:
        tray = self.trigger.learned_tray()
        if tray is None:
            return
        now = self.clock()
        if not force and self._tray_saved_at is not None and now - self._tray_saved_at < TRAY_SAVE_EVERY_S:
            return
        self._tray_saved_at = now
        try:
            save_tray(tray_file(self.config), tray, frame_shape, self.config.trigger.roi)
        except OSError as exc:
            log.warning("cannot keep the learned empty tray in %s: %s", tray_file(self.config), exc)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
            while not self._stop.is_set():
                self._guarded(self.turn)
                self._guarded(self.heartbeat)
                if self.camera.ended and self.pending is None and self.unrecorded is None:
                    log.info("the frame source has ended; stopping")
                    break
        finally:
            self.shutdown()
        return 0

    def _guarded(self, work: Callable[[], None]) -> None:
        """An exception in the loop is a fault on the state topic, never the end of the process."""
        try:
            work()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc} (sorting goes on; please report it with the log)"
            if reason != self.loop_fault:
                log.exception("sorting loop: unexpected %s", reason)
            self.loop_fault, self._loop_failed_at = reason, self.clock()
            self._stop.wait(LOOP_RETRY_S)

    def turn(self) -> None:
        if self._reload.is_set():
            self._reload.clear()
            self.reload()
        self.step()
        if self.idle.update(self._quiet()):
            self._rest()

    def _idle_pace(self, cfg: TriggerConfig) -> IdlePace:
        return IdlePace(cfg.idle_after_s, cfg.idle_fps, self.clock)

    def _quiet(self) -> bool:
        """The tray is empty and still and nothing waits: the loop may idle (see edge.camera.idle)."""
        return (
            self.trigger.shows_item is False
            and self.trigger.state is TriggerState.EMPTY
            and getattr(self.trigger, "motion", 1.0) <= self.config.trigger.still
            and self.pending is None
            and self.unrecorded is None
            and self.held is None
            and not self.votes
            and not self._sort_now.is_set()
            and self.camera.condition is None
        )

    def _rest(self) -> None:
        """One idle period, ended early by a command; then the frames a live camera queued meanwhile
        are skipped, so the next frame shows the tray as it is now."""
        if self._wake.wait(self.idle.period_s):
            self._wake.clear()
            self.idle.wake()
        self.camera.drop_buffered()

    def step(self) -> None:
        frame = self.camera.read()
        if frame is None:
            if not self.camera.ended:
                self._stop.wait(IDLE_WAIT_S)  # the source is down: do not spin
            return
        if self.camera.opened != self._view:  # a new view: the remembered empty tray, or learn it again
            self._view = self.camera.opened
            self._adopt_remembered_tray(frame)
            self.votes.clear()
        elif self._frame_shape is not None and frame.shape[:2] != self._frame_shape[:2]:
            self._frame_size_changed(frame)
        self._frame_shape = frame.shape
        if self.unrecorded is not None:
            self.count_tipped()  # nothing moves until the tipped item is counted
            return
        self.queue_held_messages()
        if self.pending is not None:
            if self._lid_tray is not None and self._frame_shows_item(frame, self._lid_tray) is False:
                self.taken_while_lid_open(self.pending)
                return
            if self.servo.ready and self.clock() >= self._ledger_retry_at:
                self.attempt(self.pending)
            return  # the item waits on the tray for the servo or the ledger; nothing new is classified
        if self.servo.actuator is None and self.servo.ready:
            self._home()
        events = self.servo.events()
        if "BUTTON" in events:
            self.request_sort("the tray button")
        if "BUTTON_LONG" in events:
            by = "the tray button (long press)"
            self._write("recording the bins emptied", lambda: self.empty_bins("all", by))
        if self.camera.condition:
            self.votes.clear()
            return
        state = self.trigger.update(frame)
        self._remember_tray(frame.shape)
        if self.held is not None and self.trigger.shows_item is False:
            self.release_held("taken off the tray")
        if self._sort_now.is_set() and self._sort_refused() is not None:
            self._sort_now.clear()
            log.warning("sort refused: %s", self._sort_refused())
        if state is TriggerState.SETTLED or self._sort_now.is_set():
            if not self.votes:
                self.triggered_at = self.clock()
            self.votes.append(frame)
            if len(self.votes) >= self.config.sorting.vote_frames:
                self._sort_now.clear()
                frames, self.votes = self.votes, []
                self.classify(frames)
        else:
            self.votes.clear()

    def classify(self, frames: list[np.ndarray]) -> None:
        started = self.clock()
        model = self.config.model
        probabilities = np.stack([self.classifier.predict(f) for f in frames])
        classified = self.clock()
        decision = decide(
            probabilities,
            self.classifier.labels,
            self.classifier.bundle.taxonomy,
            model.threshold,
            model.fallback_bin,
            model.top_k,
            self.classifier.bundle.ood,
            self.config.sorting.unknown,
        )
        item_id = uuid.uuid4().hex
        item = Item(
            item_id,
            decision,
            probabilities.mean(axis=0),
            self.triggered_at,
            SortedItem(
                id=item_id,
                time=time.time(),
                item=decision.item,
                bin=decision.bin,
                confidence=round(decision.confidence, 4),
                uncertain=decision.uncertain,
                latency_ms=0.0,
                model_id=self.classifier.bundle.model_id,
                most_probable_bin=decision.most_probable_bin or decision.bin,
                cost_rule=decision.cost_rule,
            ),
            {
                "capture_ms": (started - self.triggered_at) * 1000,
                "classify_ms": (classified - started) * 1000,
                "decide_ms": (self.clock() - classified) * 1000,
            },
        )
        if decision.held is not None:
            if self._take_override(decision):
                self.sort_held(item, frames[-1])
            else:
                self.hold(item, frames[-1])
            return
        if self.held is not None:  # the camera cannot see the tray (continuous, manual): the model can
            self.release_held(
                "gone: the model sees " + ("an empty tray" if decision.empty else decision.item)
            )
        if decision.empty:
            log.info("nothing to sort: the model sees %s (%.0f%%)", decision.item, decision.confidence * 100)
            self.trigger.handled()
            return
        self.sort(item, frames[-1])

    def sort(self, item: Item, frame: np.ndarray) -> None:
        """Tip a decided item (a bin chosen): unless its bin is full, keep its frame for review if so
        drawn, write its move ahead and command the servo."""
        decision = item.decision
        if self.config.fill.park_when_full and decision.bin in full_bins(self.fill()):
            self.refuse_for_full_bin(item)
            return
        kept = review_reason(decision.uncertain, self.config.sorting.review_sample, self.draw())
        if kept:
            save_for_review(
                review_folder(self.config),
                frame,
                item.id,
                time.time(),
                decision,
                item.probabilities,
                self.classifier.labels,
                self.classifier.bundle.model_id,
                self.config.sorting.review_max,
                kept,
            )
        self.pending = item
        self.attempt(item)

    # -- items held on the tray (not waste, or unknown) ---------------------------------------

    def hold(self, item: Item, frame: np.ndarray) -> None:
        """Leave a held item on the tray: never tipped, never a move in the ledger, a ``tray`` fault and
        one ``held`` message (queued in the ledger's outbox, so a broker outage never loses it). Its
        frame is kept for review: an item the model will not sort is the one a label helps most."""
        decision = item.decision
        self.trigger.handled()  # classified: wait for the tray to clear before the next item
        then = (
            f"press sort twice to sort it into {decision.override_bin}"
            if decision.override
            else "it is never tipped: take it off the tray"
        )
        fault = f"{decision.item} held on the tray, not tipped and not counted: {decision.held}; {then}"
        with self._held_lock:
            same = self.held is not None and self.held.decision.item == decision.item
            if same:  # the same item classified again (continuous mode, or a press): one message
                return
            # held and its fault change together: a reader never sees a held item without its fault
            self.held, self._held_presses, self._override_now = item, 0, False
            self._held_fault = self.tray_fault = fault
        save_for_review(
            review_folder(self.config),
            frame,
            item.id,
            time.time(),
            decision,
            item.probabilities,
            self.classifier.labels,
            self.classifier.bundle.model_id,
            self.config.sorting.review_max,
            "held",
        )
        log.warning("%s (%.0f%%)", fault, decision.item_confidence * 100)
        payload = {
            "id": item.id,
            "item": decision.item,
            "reason": decision.held,
            "override": decision.override,
            "confidence": round(decision.item_confidence, 4),
            "time": item.record.time,
        }
        self._held_messages.append(payload)
        self.queue_held_messages()
        self.telemetry.notify()
        if self.on_held is not None:
            self.on_held(decision)

    def queue_held_messages(self) -> None:
        """Queue the held messages in the ledger's outbox; a refused write is tried again from the loop."""
        while self._held_messages and self.clock() >= self._ledger_retry_at:
            payload = self._held_messages[0]
            if not self._write(
                f"queueing the held message of {payload['item']}",
                lambda p=payload: self.ledger.queue_held(p["id"], p),
            ):
                return
            self._held_messages.pop(0)
            self.telemetry.notify()

    def release_held(self, why: str) -> None:
        """The held item is gone: its tray fault clears."""
        with self._held_lock:
            item, self.held, self._held_presses, self._override_now = self.held, None, 0, False
        if item is None:
            return
        log.info("held %s %s; the hold is cleared", item.decision.item, why)
        if self.tray_fault == self._held_fault:
            self.tray_fault = None
        self._held_fault = None
        self.telemetry.notify()

    def _take_override(self, decision: Decision) -> bool:
        """Whether this fresh decision may be sorted by the press that asked for it: the same held item,
        seen again alone, that a press may sort. The press is used up either way."""
        with self._held_lock:
            asked, self._override_now = self._override_now, False
            held = self.held
        return asked and held is not None and decision.override and decision.item == held.decision.item

    def sort_held(self, item: Item, frame: np.ndarray) -> None:
        """A person pressed sort twice and the model, looking again, still sees the same held item that a
        press may sort (never a hand): into its override bin, once."""
        with self._held_lock:
            self.held, self._held_presses, self._override_now = None, 0, False
        if not item.decision.override:  # a hand is never sorted, whatever asked
            return
        if self.tray_fault == self._held_fault:
            self.tray_fault = None
        self._held_fault = None
        decision = dataclasses.replace(
            item.decision, bin=item.decision.override_bin, held=None, override=False
        )
        self.sort(
            dataclasses.replace(
                item,
                decision=decision,
                record=dataclasses.replace(
                    item.record,
                    bin=decision.bin,
                    most_probable_bin=decision.most_probable_bin or decision.bin,
                ),
            ),
            frame,
        )

    def count(self, item: SortedItem) -> int:
        """Record a tipped item in the ledger: its count, its bin's fill, its messages."""
        fill = self.config.fill
        return self.ledger.record(item, fill.capacity.get(item.bin), fill.nearly_full)

    def fill(self) -> dict[str, dict[str, Any]]:
        """The fill of each bin of the taxonomy that has a capacity (``fill.capacity``)."""
        fill, bins = self.config.fill, self.classifier.bundle.taxonomy.bin_ids
        capacity = {b: fill.capacity[b] for b in bins if b in fill.capacity}
        with contextlib.suppress(sqlite3.Error):  # a closed or unreadable ledger: the last fill read
            self._fill_seen = fill_report(self.ledger.fill(), capacity, fill.nearly_full)
        return self._fill_seen

    def empty_bins(self, requested: str | None, by: str) -> dict[str, int]:
        """Record that bins were emptied (one, or ``all``): their fill restarts from 0. Returns the items
        each held; raises SmartbinError for a bin this bin does not have."""
        try:
            bins = bins_to_empty(requested, self.classifier.bundle.taxonomy.bin_ids)
        except ValueError as exc:
            raise SmartbinError(str(exc), "name one of the bins, or all") from None
        held = self.ledger.emptied(bins, by, time.time(), self.config.fill.capacity)
        log.warning("emptied by %s: %s", by, ", ".join(f"{b} (held {n} items)" for b, n in held.items()))
        if self._refused_for in held:
            self.tray_fault, self._refused_for = None, None
        self.telemetry.notify()
        return held

    def refuse_for_full_bin(self, item: Item) -> None:
        """An item for a full bin stays on the tray, never counted, until the bin is emptied.

        Recorded (parked, logged) once per item: a trigger that classifies what lies on the tray
        again and again (continuous mode) refuses the same item without counting it each time."""
        bin_id = item.decision.bin
        self.trigger.handled()
        if self._refused_for == bin_id:
            return
        self.tray_fault = (
            f"item {item.decision.item} left on the tray: bin {bin_id} is full "
            f"({self.fill()[bin_id]['items']} items); empty it, then send emptied "
            f"(smartbin emptied {bin_id}, or MQTT cmd/emptied)"
        )
        log.error("%s; it is not counted: take it off the tray", self.tray_fault)
        self._refused_for = bin_id
        self._write("recording a parked item", lambda: self.ledger.end_move(item.id, parked=True))

    def _write(self, what: str, write: Callable[[], Any]) -> bool:
        """One ledger write; a refused one (disk full, I/O error) is the ``ledger`` fault, retried later."""
        try:
            write()
        except (sqlite3.Error, OSError) as exc:
            reason = (
                f"the ledger {self.ledger.path} refuses writes ({exc}) while {what}; items wait on the "
                f"tray: free space on {self.ledger.path.parent}, sorting resumes by itself"
            )
            if reason != self.ledger_fault:
                log.error("%s", reason)
            self.ledger_fault, self._ledger_retry_at = reason, self.clock() + LEDGER_RETRY_S
            return False
        if self.ledger_fault is not None:
            log.info("the ledger takes writes again")
            self.ledger_fault = None
        return True

    def attempt(self, item: Item) -> None:
        if not item.written:
            if not self._write(
                f"writing the move of {item.decision.item}", lambda: self.ledger.begin_move(item.record)
            ):
                return  # not tipped: an item the ledger cannot count stays on the tray
            item.written = True
        item.attempts += 1
        bin_id = item.decision.bin
        moving_at = self.clock()
        try:
            move_ms = self.servo.tip(bin_id)
        except LidOpen as fault:
            item.attempts -= 1  # the interlock, not the servo: never one of the failed moves
            self.held_by_lid(item, fault.reason)
            return
        except ActuatorFault as fault:
            attempts = self.config.sorting.move_attempts
            if item.attempts < attempts:
                log.warning(
                    "item %s (%s → %s) not moved, attempt %d of %d: %s",
                    item.id[:8],
                    item.decision.item,
                    bin_id,
                    item.attempts,
                    attempts,
                    fault.reason,
                )
                return
            self.park(item, fault.reason)
            return
        self.pending, self._lid_tray = None, None
        confirmed_at = moving_at + move_ms / 1000
        stages = {
            **item.stages,
            "wait_ms": (moving_at - item.triggered_at) * 1000 - sum(item.stages.values()),
            "move_ms": move_ms,
        }
        self.unrecorded = dataclasses.replace(
            item.record,
            time=time.time(),
            latency_ms=round((confirmed_at - item.triggered_at) * 1000, 1),
            stages={k: round(v, 1) for k, v in stages.items()},
        )
        self.count_tipped()

    def count_tipped(self) -> None:
        """Count the item the controller confirmed tipped, then dwell and come home.

        While the ledger refuses the count the tray stays tipped: at a restart the controller's position
        then still says the item fell, and it is counted then."""
        if self.clock() < self._ledger_retry_at:
            return
        tipped, counted = self.unrecorded, []
        if not self._write(f"counting {tipped.item}", lambda: counted.append(self.count(tipped))):
            return
        self.unrecorded = None
        self.counted(tipped, counted[0])
        try:
            self.servo.return_home()
        except ActuatorFault as fault:  # a servo fault (logged by the supervisor); the item stays counted
            log.error("item %s is counted; the tray did not come back home: %s", tipped.id[:8], fault.reason)
        self.camera.drop_buffered()
        self.trigger.handled()

    def held_by_lid(self, item: Item, reason: str) -> None:
        """The interlock refused or stopped the move: the item waits on the tray, its move open and not
        counted, and is tried again (the supervisor asks the lid) until the lid closes."""
        fault = f"item {item.decision.item} held on the tray: lid open; close the lid and it is sorted"
        if fault != self.tray_fault:
            log.warning("%s (%s)", fault, reason)
        self.tray_fault = fault
        if self._lid_tray is None and self._frame_shape is not None:
            cfg = self.config.trigger
            self._lid_tray = load_tray(tray_file(self.config), self._frame_shape, cfg.roi)

    def taken_while_lid_open(self, item: Item) -> None:
        """The item was taken off the tray while it waited for the lid: its move is closed, never counted,
        so closing the lid does not tip an empty tray and count an item that is gone."""
        if not self._write(
            "closing the move of an item taken off the tray",
            lambda: self.ledger.end_move(item.id, parked=False),
        ):
            return
        log.warning(
            "item %s (%s) was taken off the tray while the lid was open: not tipped, not counted",
            item.id[:8],
            item.decision.item,
        )
        self.pending, self._lid_tray, self.tray_fault = None, None, None
        self.trigger.handled()

    def park(self, item: Item, reason: str) -> None:
        self.tray_fault = (
            f"item {item.decision.item} left on the tray after {item.attempts} failed moves: {reason}"
        )
        log.error("%s; it is not counted: take it off the tray by hand", self.tray_fault)
        self._write("recording a parked item", lambda: self.ledger.end_move(item.id, parked=True))
        self.pending, self._lid_tray = None, None
        self.trigger.handled()

    def counted(self, item: SortedItem, count: int) -> None:
        self.tray_fault = None
        self.sorted_this_run += 1
        self._status_at = 0.0
        self.last_item = {"item": item.item, "bin": item.bin, "time": round(item.time)}
        self.telemetry.notify()
        log.info(
            "sorted %s → %s (%.0f%%%s%s), %d in %s, %.0f ms from trigger to move",
            item.item,
            item.bin,
            item.confidence * 100,
            ", uncertain" if item.uncertain else "",
            f", costs chose it over {item.most_probable_bin}" if item.cost_rule else "",
            count,
            item.bin,
            item.latency_ms,
        )
        if self.on_sorted is not None:
            self.on_sorted(item)

    # -- health -----------------------------------------------------------------------

    def faults(self) -> dict[str, str]:
        found = {
            "camera": self.camera.fault or self.camera.condition,
            "servo": self.servo.fault,
            "tray": self.tray_fault,
            "ledger": self.ledger_fault,
            "fill": full_fault(self.fill()),
            "loop": self.loop_fault if self.clock() - self._loop_failed_at < LOOP_FAULT_HOLD_S else None,
            **self.telemetry.faults(),
        }
        return {part: reason for part, reason in found.items() if reason}

    def status(self) -> dict[str, Any]:
        """The daemon's part of the state topic (telemetry adds the counts)."""
        return {
            "model_id": self.classifier.bundle.model_id,
            "version": edge.__version__,
            "trigger": self.trigger.state.value,
            "faults": {k: v for k, v in self.faults().items() if k != "mqtt"},
            "held": self.held_state(),
            "parked_items": self.ledger.parked_items(),
            "last_item": self.last_item,
            "fill": self.fill(),
            "items_today": self.items_today(),
        }

    def held_state(self) -> dict[str, Any] | None:
        """The item held on the tray now, for the state topic (None: none)."""
        held = self.held
        if held is None:
            return None
        d = held.decision
        return {"item": d.item, "reason": d.held, "override": d.override, "since": round(held.record.time)}

    def items_today(self) -> int:
        with contextlib.suppress(sqlite3.Error):  # a closed or unreadable ledger: the last number read
            self._today_seen = self.ledger.items_since(local_midnight(time.time()))
        return self._today_seen

    def status_text(self) -> str:
        counts = self.ledger.counts()
        text = f"{sum(counts.values())} sorted"
        if counts:
            text += " (" + ", ".join(f"{b} {n}" for b, n in counts.items()) + ")"
        faults = self.faults()
        text += "; " + ("; ".join(f"{k}: {v}" for k, v in faults.items()) if faults else "no faults")
        return text

    def heartbeat(self) -> None:
        now = self.clock()
        if not self.ready:
            up = self.camera.source is not None and self.servo.actuator is not None
            if up or now - self.started_at >= self.config.sorting.ready_timeout_s:
                self.ready = True
                self.notifier.ready(self.status_text())
                log.info("ready: %s", self.status_text())
        interval = self.notifier.watchdog_interval_s
        if interval and now >= self._watchdog_at:
            self.notifier.watchdog()
            self._watchdog_at = now + interval
        faults = self.faults()
        day = local_midnight(time.time())
        if self._fill_seen != self._fill_told or day != self._day:  # `smartbin emptied`, or a new day
            self._fill_told, self._day = self._fill_seen, day
            refused = self._fill_seen.get(self._refused_for or "", {})
            if self._refused_for and refused.get("state") != FULL:  # emptied from outside
                self.tray_fault, self._refused_for = None, None
            self.telemetry.notify()
        if faults != self._faults:
            if faults.keys() - {"mqtt"} != self._faults.keys() - {"mqtt"}:
                self.telemetry.notify()  # republish the state with the faults
            self._faults, self._status_at = faults, 0.0
        if now >= self._status_at:  # at once after a change, else every few seconds
            self._status_at = now + STATUS_EVERY_S
            text = self.status_text()
            if text != self._status_text:
                self._status_text = text
                self.notifier.status(text)

    # -- reload and shutdown ---------------------------------------------------------

    def reload(self) -> None:
        if not self.config_path:
            log.warning("reload: this run has no config file; nothing to reload")
            return
        old = self.config
        try:
            new = load_config(self.config_path)
            classifier = load_classifier(new.model)
            trigger = make_trigger(new.trigger) if new.trigger != old.trigger else self.trigger
            # built (credentials and TLS files read) before anything running is touched
            telemetry = None
            if new.mqtt != old.mqtt or new.device_id != old.device_id:
                telemetry = self._telemetry(new, self.ledger, classifier)
        except SmartbinError as exc:
            log.error("reload refused, the running config is kept: %s", exc)
            return
        self.config, self.classifier, self.trigger = new, classifier, trigger
        if new.trigger != old.trigger:
            self.idle = self._idle_pace(new.trigger)
            self._view = -1  # at the next frame: the remembered tray if it fits the new ROI, else learn it
        if new.servo != old.servo:
            self.servo.close()
            self.servo = self._servo(new.servo)
            self._home()
        if new.camera != old.camera:
            self.camera.close()
            self.camera = Camera(new.camera, self.opener, self.clock)
        if telemetry is not None:
            self.telemetry.stop()
            self.telemetry = telemetry
            self.telemetry.start()
        if new.ledger != old.ledger:
            log.warning("reload: ledger.* changes take effect at the next restart")
        self.telemetry.notify()
        log.info(
            "reloaded %s: model %s, threshold %.2f",
            self.config_path,
            classifier.bundle.model_id,
            new.model.threshold,
        )

    def shutdown(self) -> None:
        """Each part is let go on its own: one that fails (logged) never keeps the others open."""
        self.notifier.stopping(f"stopping; {self.sorted_this_run} items sorted this run")
        if self.pending is not None:
            log.warning(
                "stopping with item %s (%s) still on the tray, not sorted and not counted",
                self.pending.id[:8],
                self.pending.decision.item,
            )
            # its move stays open: the next start resolves it from the controller and the tray
        elif self.votes:
            log.warning(
                "stopping while classifying an item (%d of %d frames): it is left on the tray, not counted, "
                "and sorted after the restart",
                len(self.votes),
                self.config.sorting.vote_frames,
            )
        if self.unrecorded is not None:
            log.critical(
                "stopping with item %s tipped into %s but not yet counted (the ledger refuses writes); the "
                "tray stays tipped and the item is counted at the next start",
                self.unrecorded.id[:8],
                self.unrecorded.bin,
            )
        steps: list[tuple[str, Callable[[], None]]] = []
        if self._frame_shape is not None:
            steps.append(("keep the empty tray", lambda: self._remember_tray(self._frame_shape, force=True)))
        if self.started:
            if self.unrecorded is None:
                steps.append(("send the servo home", self._home_before_exit))
            steps += [
                ("close the servo port", self.servo.close),
                ("close the camera", self.camera.close),
                ("publish offline", self.telemetry.stop),
                ("remove the pid file", lambda: pid_file(self.config).unlink(missing_ok=True)),
                ("close the ledger", self.ledger.close),
            ]
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("stopping: could not %s", what)
        log.info("stopped: %d items sorted this run", self.sorted_this_run)

    def _home_before_exit(self) -> None:
        try:
            self.servo.home(now=True)
        except ActuatorFault as fault:
            log.error("could not send the servo home before exit: %s", fault.reason)
