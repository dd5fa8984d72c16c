"""``smartbin run``: the sorting loop that runs on the bin for months.

camera → trigger → classifier (K frames) → decision → servo → ledger → telemetry

One thread runs the loop; telemetry has its own (edge.telemetry). A fault in
one part (camera, servo controller, broker) never stops the process: the part
is retried with backoff, the state topic and the log say which part is down,
and the rest carries on. An item is counted only once its move is confirmed,
and it is written to the ledger before telemetry is told.

systemd: READY=1 once the camera, model, servo controller and ledger are up
(or after ``sorting.ready_timeout_s`` with the missing part reported),
WATCHDOG=1 from every turn of the loop, STATUS= with counts and faults.
Signals: SIGTERM/SIGINT finish the current item, send the servo home, publish
``offline`` and exit 0; SIGHUP reloads the config and taxonomy (an invalid
one is refused and the running one kept); SIGUSR1, the MQTT sort command and the
controller's button sort what is on the tray now.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import edge
from edge.actuator import ActuatorFault, Calibration, Controller, ServoSupervisor, open_controller
from edge.classifier import Classifier, load_classifier
from edge.config import Config, ServoConfig, load_config
from edge.decision import Decision, decide
from edge.errors import SmartbinError
from edge.ledger import Ledger, SortedItem, open_ledger, state_directory
from edge.review import save_for_review
from edge.sdnotify import Notifier
from edge.source import Camera, FrameSource, open_source
from edge.telemetry import Telemetry
from edge.trigger import Trigger, TriggerState, make_trigger

log = logging.getLogger("smartbin.daemon")

STATUS_EVERY_S = 2.0
IDLE_WAIT_S = 0.05


@dataclass
class Item:
    """An item classified and on its way to a bin (or waiting for the servo to come back)."""

    id: str
    decision: Decision
    probabilities: np.ndarray
    triggered_at: float
    stages: dict[str, float] = field(default_factory=dict)
    attempts: int = 0


def state_folder(config: Config) -> Path:
    """The ledger's folder: the pid file and the review folder live beside it."""
    return Path(config.ledger.path).parent if config.ledger.path else state_directory()


def pid_file(config: Config) -> Path:
    return state_folder(config) / "smartbin.pid"


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: str | None = None,
        *,
        opener: Callable[[Any], FrameSource] = open_source,
        connect: Callable[[ServoConfig], Controller] = open_controller,
        notifier: Notifier | None = None,
        on_sorted: Callable[[SortedItem], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.config_path = config, config_path
        self.opener, self.connect, self.clock = opener, connect, clock
        self.notifier = notifier or Notifier()
        self.on_sorted = on_sorted
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._sort_now = threading.Event()
        self.ledger: Ledger | None = None
        self.telemetry: Telemetry | None = None
        self.pending: Item | None = None
        self.votes: list[np.ndarray] = []
        self.triggered_at = 0.0
        self.tray_fault: str | None = None
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

    def request_reload(self) -> None:
        self._reload.set()

    def request_sort(self) -> None:
        """Classify and sort what is on the tray now, whatever the trigger says."""
        self._sort_now.set()

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        signal.signal(signal.SIGUSR1, lambda *_: self.request_sort())

    # -- the parts ------------------------------------------------------------------

    def _servo(self, cfg: ServoConfig) -> ServoSupervisor:
        return ServoSupervisor(lambda: self.connect(cfg), Calibration.from_config(cfg))

    def _telemetry(self, config: Config, classifier: Classifier | None = None) -> Telemetry:
        return Telemetry(
            config.mqtt,
            config.device_id,
            self.ledger,
            status=self.status,
            bins=(classifier or self.classifier).bundle.taxonomy.bin_ids,
            on_sort=self.request_sort,
        )

    def start(self) -> None:
        """The parts that must work (ledger, model) raise; the hardware ones become faults."""
        config = self.config
        self.ledger = open_ledger(config.ledger)
        self.classifier: Classifier = load_classifier(config.model)
        log.info(
            "model %s (%s, %d items, taxonomy %s)",
            self.classifier.bundle.model_id,
            self.classifier.runtime,
            len(self.classifier.labels),
            self.classifier.bundle.taxonomy.name,
        )
        self.trigger: Trigger = make_trigger(config.trigger)
        self.camera = Camera(config.camera, self.opener, self.clock)
        self.servo = self._servo(config.servo)
        self.telemetry = self._telemetry(config)
        self.telemetry.start()
        self.started_at = self.clock()
        self.camera.open()
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

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.start()
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                self.step()
                self.heartbeat()
                if self.camera.ended and self.pending is None:
                    log.info("the frame source has ended; stopping")
                    break
        finally:
            self.shutdown()
        return 0

    def step(self) -> None:
        frame = self.camera.read()
        if frame is None:
            if not self.camera.ended:
                self._stop.wait(IDLE_WAIT_S)  # the source is down: do not spin
            return
        if self.camera.opened != self._view:  # a new view: learn the empty tray again
            self._view = self.camera.opened
            self.trigger.relearn()
            self.votes.clear()
        if self.pending is not None:
            if self.servo.ready:
                self.attempt(self.pending)
            return  # the item waits on the tray for the servo; nothing new is classified
        if self.servo.actuator is None and self.servo.ready:
            self._home()
        if "BUTTON" in self.servo.events():
            log.info("the tray button asks for a sort now")
            self.request_sort()
        if self.camera.condition:
            self.votes.clear()
            return
        state = self.trigger.update(frame)
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
        )
        item = Item(
            uuid.uuid4().hex,
            decision,
            probabilities.mean(axis=0),
            self.triggered_at,
            {
                "capture_ms": (started - self.triggered_at) * 1000,
                "classify_ms": (classified - started) * 1000,
                "decide_ms": (self.clock() - classified) * 1000,
            },
        )
        if decision.empty:
            log.info("nothing to sort: the model sees %s (%.0f%%)", decision.item, decision.confidence * 100)
            self.trigger.handled()
            return
        if decision.uncertain:
            save_for_review(
                self.review_folder(),
                frames[-1],
                item.id,
                time.time(),
                decision,
                item.probabilities,
                self.classifier.labels,
                self.classifier.bundle.model_id,
                self.config.sorting.review_max,
            )
        self.pending = item
        self.attempt(item)

    def review_folder(self) -> Path:
        folder = self.config.sorting.review_folder
        return Path(folder) if folder else state_folder(self.config) / "review"

    def attempt(self, item: Item) -> None:
        item.attempts += 1
        bin_id = item.decision.bin
        moving_at = self.clock()
        try:
            timings = self.servo.sort(bin_id)
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
        self.pending = None
        self.record(item, moving_at, timings)
        self.trigger.handled()

    def park(self, item: Item, reason: str) -> None:
        self.tray_fault = (
            f"item {item.decision.item} left on the tray after {item.attempts} failed moves: {reason}"
        )
        log.error("%s; it is not counted: take it off the tray by hand", self.tray_fault)
        self.ledger.record_parked()
        self.pending = None
        self.trigger.handled()

    def record(self, item: Item, moving_at: float, timings: dict[str, float]) -> None:
        d = item.decision
        confirmed_at = moving_at + timings["move_ms"] / 1000
        stages = {
            **item.stages,
            "wait_ms": (moving_at - item.triggered_at) * 1000 - sum(item.stages.values()),
        }
        stages.update(timings)
        sorted_item = SortedItem(
            id=item.id,
            time=time.time(),
            item=d.item,
            bin=d.bin,
            confidence=round(d.confidence, 4),
            uncertain=d.uncertain,
            latency_ms=round((confirmed_at - item.triggered_at) * 1000, 1),
            model_id=self.classifier.bundle.model_id,
            stages={k: round(v, 1) for k, v in stages.items()},
            most_probable_bin=d.most_probable_bin or d.bin,
            cost_rule=d.cost_rule,
        )
        try:
            count = self.ledger.record(sorted_item)
        except (sqlite3.Error, OSError) as exc:
            log.critical("ledger write failed, this item is only in the log: %s %s", exc, asdict(sorted_item))
            return
        self.tray_fault = None
        self.sorted_this_run += 1
        self._status_at = 0.0
        self.last_item = {"item": d.item, "bin": d.bin, "time": round(sorted_item.time)}
        self.telemetry.notify()
        log.info(
            "sorted %s → %s (%.0f%%%s%s), %d in %s, %.0f ms from trigger to move",
            d.item,
            d.bin,
            d.confidence * 100,
            ", uncertain" if d.uncertain else "",
            f", costs chose it over {d.most_probable_bin}" if d.cost_rule else "",
            count,
            d.bin,
            sorted_item.latency_ms,
        )
        if self.on_sorted is not None:
            self.on_sorted(sorted_item)

    # -- health -----------------------------------------------------------------------

    def faults(self) -> dict[str, str]:
        found = {
            "camera": self.camera.fault or self.camera.condition,
            "servo": self.servo.fault,
            "tray": self.tray_fault,
            "mqtt": self.telemetry.fault if self.telemetry else None,
        }
        return {part: reason for part, reason in found.items() if reason}

    def status(self) -> dict[str, Any]:
        """The daemon's part of the state topic (telemetry adds the counts)."""
        return {
            "model_id": self.classifier.bundle.model_id,
            "version": edge.__version__,
            "trigger": self.trigger.state.value,
            "faults": {k: v for k, v in self.faults().items() if k != "mqtt"},
            "parked_items": self.ledger.parked_items(),
            "last_item": self.last_item,
        }

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
                telemetry = self._telemetry(new, classifier)
        except SmartbinError as exc:
            log.error("reload refused, the running config is kept: %s", exc)
            return
        self.config, self.classifier, self.trigger = new, classifier, trigger
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
        self.notifier.stopping(f"stopping; {self.sorted_this_run} items sorted this run")
        if self.pending is not None:
            log.warning(
                "stopping with item %s (%s) still on the tray, not sorted and not counted",
                self.pending.id[:8],
                self.pending.decision.item,
            )
        if getattr(self, "servo", None) is not None:
            try:
                self.servo.home()
            except ActuatorFault as fault:
                log.error("could not send the servo home before exit: %s", fault.reason)
            self.servo.close()
        if getattr(self, "camera", None) is not None:
            self.camera.close()
        if self.telemetry is not None:
            self.telemetry.stop()
        if self.ledger is not None:
            pid_file(self.config).unlink(missing_ok=True)
            self.ledger.close()
        log.info("stopped: %d items sorted this run", self.sorted_this_run)
