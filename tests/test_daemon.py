"""The sorting loop in-process: the shipped model, a simulated tray, a Maestro emulated on a real pty,
a real ledger and (where it matters) a real Mosquitto. Each fault path keeps the daemon running."""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from edge.camera.simulation import SimulatedTray
from edge.camera.sources import SourceFault
from edge.config import Config
from edge.ledger import Ledger
from edge.service.daemon import Daemon
from edge.service.notify import Notifier
from edge.servo.emulator import LineEmulator, MaestroEmulator
from tests.broker import Subscriber, free_port, mosquitto_path, wait_for
from tests.conftest import shipped_bundle_with

needs_broker = pytest.mark.skipif(
    mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it"
)


def config_for(tmp_path: Path, port: str, mqtt_port: int | None = None) -> Config:
    config = Config()
    config.device_id = "t1"
    config.servo.port, config.servo.device_number = port, None
    config.servo.dwell_s, config.servo.move_timeout_s = 0.01, 0.3
    config.ledger.path = str(tmp_path / "state" / "ledger.db")
    config.sorting.review_folder = str(tmp_path / "review")
    config.sorting.ready_timeout_s = 0.5
    config.mqtt.host, config.mqtt.port = "127.0.0.1", mqtt_port or free_port()
    config.mqtt.reconnect_max_s = 1.0
    # the simulated tray's drawn items are no waste the shipped model knows: sorted to the fallback bin
    # instead of held as unknown (tests/test_held.py holds them on purpose)
    config.sorting.unknown = "fallback"
    return config


class Running:
    """A daemon on a background thread (signals are the subprocess tests' business)."""

    started: ClassVar[list[Running]] = []

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(daemon.run()), daemon=True)
        self.thread.start()
        Running.started.append(self)

    @classmethod
    def stop_leftovers(cls) -> None:
        """Stop the daemons a failed test left running: one still inside the model when the interpreter
        exits aborts it (``terminate called without an active exception``) and hides the real failure."""
        while cls.started:
            running = cls.started.pop()
            if running.thread.is_alive():
                running.daemon.request_stop()
                running.thread.join(15.0)

    def stop(self, timeout_s: float = 15.0) -> int:
        self.daemon.request_stop()
        return self.join(timeout_s)

    def join(self, timeout_s: float = 30.0) -> int:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the daemon did not stop"
        return self.result[0]


def bin_moves(emulator: MaestroEmulator, config: Config) -> list[str]:
    """The bins the servo was sent to, from the bytes the controller received."""
    by_target = {round(us * 4): b for b, us in config.servo.bins.items()}
    targets = [f[2] | f[3] << 7 for f in emulator.commands if f[0] == 0x84]
    return [by_target[t] for t in targets if t in by_target]


@needs_broker
def test_every_item_is_moved_counted_and_published_once(tmp_path, emulator, broker):
    config = config_for(tmp_path, emulator.port, broker.port)
    sub = Subscriber(broker.port, "smartbin/t1/#")
    seen = []
    daemon = Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append)
    assert daemon.run() == 0
    assert len(seen) == 3 and emulator.tray.placed == 3
    assert bin_moves(emulator, config) == [item.bin for item in seen]
    last_target = [f for f in emulator.commands if f[0] == 0x84][-1]
    assert last_target[2] | last_target[3] << 7 == 1500 * 4  # home before exit
    wait_for(lambda: sorted(sub.event_ids()) == sorted(i.id for i in seen), what="3 events")
    event = json.loads(sub.payloads("/event")[0])
    assert set(event["stages"]) == {"capture_ms", "classify_ms", "decide_ms", "wait_ms", "move_ms"}
    assert event["latency_ms"] >= event["stages"]["move_ms"]
    # the decision's own account: the most probable bin, and whether the costs chose another
    assert event["most_probable_bin"] in config.servo.bins
    if event["cost_rule"]:
        assert event["bin"] != event["most_probable_bin"]
    elif not event["uncertain"]:
        assert event["bin"] == event["most_probable_bin"]
    ledger = Ledger(config.ledger.path)
    counts = ledger.counts()
    assert {b: int(sub.latest(f"/count/{b}")) for b in counts} == counts and sum(counts.values()) == 3
    assert ledger.pending() == []
    assert sub.latest("/availability") == b"offline"
    state = json.loads(sub.payloads("/state")[-1])
    assert state["total"] == 3 and state["model_id"] == "household38-mnv2" and state["faults"] == {}
    sub.close()


def test_a_failed_move_is_retried_and_counted_once(tmp_path, emulator, caplog):
    emulator.mode = "stuck"  # the servo does not reach its target: no confirmation
    config = config_for(tmp_path, emulator.port)
    emulator.tray.total = 1
    seen = []
    daemon = Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: "attempt 1 of 3" in caplog.text, what="a failed first attempt")
    assert seen == [] and Ledger(config.ledger.path).counts() == {}
    emulator.mode = "ok"
    assert running.join() == 0
    assert len(seen) == 1
    assert sum(Ledger(config.ledger.path).counts().values()) == 1
    assert daemon.servo.fault is None


def test_an_item_that_cannot_be_moved_is_parked_not_counted(tmp_path, emulator):
    emulator.mode = "stuck"
    config = config_for(tmp_path, emulator.port)
    config.sorting.move_attempts = 2
    daemon = Daemon(config, opener=lambda cfg: emulator.tray)
    running = Running(daemon)
    wait_for(lambda: daemon.started and daemon.ledger.parked_items() == 1, what="a parked item")
    assert "left on the tray after 2 failed moves" in daemon.faults()["tray"]
    assert "servo" in daemon.faults()
    assert daemon.status()["parked_items"] == 1
    assert running.stop() == 0
    assert Ledger(config.ledger.path).counts() == {}


def test_uncertain_items_are_kept_for_review_in_a_bounded_folder(tmp_path, emulator):
    config = config_for(tmp_path, emulator.port)
    config.model.threshold = 1.0  # nothing is that sure: every item is uncertain
    config.sorting.review_max = 2
    seen = []
    Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append).run()
    assert len(seen) == 3 and all(i.uncertain for i in seen)
    # uncertain items go to the fallback bin, unless the taxonomy's costs moved them (a maybe-battery)
    assert all(i.bin == "other" or i.cost_rule for i in seen)
    frames = sorted((tmp_path / "review").glob("*.jpg"))
    assert len(frames) == 2
    sidecar = json.loads(frames[-1].with_suffix(".json").read_text())
    assert sidecar["id"] == seen[-1].id and len(sidecar["probabilities"]) == 38
    assert sidecar["uncertain"] and sidecar["kept"] == "uncertain" and sidecar["label"] is None
    assert not list((tmp_path / "review").glob("*.tmp"))  # written under another name, then renamed


@pytest.mark.parametrize(
    ("sample", "draw", "kept"), [(1.0, 0.5, 3), (0.3, 0.5, 0), (0.6, 0.5, 3), (0.0, 0.0, 0)]
)
def test_a_share_of_confident_items_is_kept_for_review_too(tmp_path, emulator, sample, draw, kept):
    """sorting.review_sample: a confident mistake can only be found if confident items reach review too."""
    config = config_for(tmp_path, emulator.port)
    config.model.threshold = 0.0  # every item is sorted with confidence, none found unknown (no ood rule)
    config.model.bundle = str(shipped_bundle_with(tmp_path, drop=("ood",)))
    config.sorting.review_sample = sample
    seen = []
    Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append, draw=lambda: draw).run()
    assert len(seen) == 3 and not any(i.uncertain for i in seen)
    sidecars = [json.loads(p.read_text()) for p in sorted((tmp_path / "review").glob("*.json"))]
    assert len(sidecars) == kept and all(s["kept"] == "sample" and not s["uncertain"] for s in sidecars)
    assert {s["id"] for s in sidecars} <= {i.id for i in seen}


def test_why_a_frame_is_kept():
    from edge.service.review import review_reason

    assert review_reason(True, 0.0, 0.99) == "uncertain"
    assert review_reason(False, 0.02, 0.019) == "sample"
    assert review_reason(False, 0.02, 0.02) is None
    assert review_reason(False, 0.0, 0.0) is None


@needs_broker
def test_the_mqtt_sort_command_triggers_a_manual_sort(tmp_path, emulator, broker):
    config = config_for(tmp_path, emulator.port, broker.port)
    config.trigger.mode = "manual"
    emulator.tray.total = 1
    seen = []
    daemon = Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append)
    running = Running(daemon)
    sub = Subscriber(broker.port, "smartbin/t1/#")
    wait_for(lambda: daemon.started and daemon.telemetry.listening, what="commands subscribed")
    assert seen == []  # the item waits on the tray: manual mode never fires by itself
    sub.client.publish("smartbin/t1/cmd/sort", b'{"request_id": "r1"}', qos=1)
    assert running.join() == 0
    assert len(seen) == 1
    wait_for(lambda: sub.latest("/reply") is not None, what="the reply")
    assert json.loads(sub.latest("/reply")) == {"command": "sort", "ok": True, "request_id": "r1"}
    sub.close()


def test_reload_applies_a_valid_config_and_refuses_an_invalid_one(tmp_path, emulator, caplog):
    config_file = tmp_path / "smartbin.yaml"
    emulator.tray.total = 0
    base = (
        f"device_id: t1\nservo: {{port: {emulator.port}, dwell_s: 0.01}}\n"
        f"ledger: {{path: {tmp_path / 'ledger.db'}}}\nmqtt: {{port: {free_port()}}}\n"
    )
    config_file.write_text(base + "model: {threshold: 0.6}\n")
    from edge.config import load_config

    daemon = Daemon(load_config(config_file), str(config_file), opener=lambda cfg: emulator.tray)
    daemon.start()
    try:
        config_file.write_text(base + "model: {threshold: 0.8}\n")
        daemon.reload()
        assert daemon.config.model.threshold == 0.8
        config_file.write_text(base + "model: {threshold: 7}\n")
        daemon.reload()
        assert "reload refused" in caplog.text and "model.threshold = 7" in caplog.text
        assert daemon.config.model.threshold == 0.8
        config_file.write_text(base + "model: {bundle: /nowhere}\n")
        daemon.reload()
        assert (
            daemon.config.model.threshold == 0.8 and daemon.classifier.bundle.model_id == "household38-mnv2"
        )
        # a password file `check` cannot see the service failing to read: the reload is refused, the
        # process and its running telemetry carry on
        running_telemetry = daemon.telemetry
        secret = tmp_path / "mqtt.pw"
        secret.write_bytes(b"\xff\xfe not text")
        config_file.write_text(base.replace("mqtt: {", f"mqtt: {{username: bin, password_file: {secret}, "))
        daemon.reload()
        assert "mqtt.password_file" in caplog.text and "not UTF-8 text" in caplog.text
        assert daemon.telemetry is running_telemetry and daemon.config.model.threshold == 0.8
        secret.unlink()
        daemon.reload()
        assert daemon.telemetry is running_telemetry and "No such file" in caplog.text
    finally:
        daemon.shutdown()


class NotifySocket:
    """What systemd listens on: a datagram socket; every message it receives is kept."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def fields(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close()


def test_systemd_hears_ready_watchdog_status_and_stopping(tmp_path, emulator):
    listener = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "20000"})
    emulator.tray.fps = 0
    config = config_for(tmp_path, emulator.port)
    Daemon(config, opener=lambda cfg: emulator.tray, notifier=notifier).run()
    wait_for(lambda: any(f.startswith("STOPPING=1") for f in listener.fields()), what="STOPPING=1")
    fields = listener.fields()
    listener.close()
    assert fields.count("READY=1") == 1 and "WATCHDOG=1" in fields
    assert fields.index("READY=1") < fields.index("STOPPING=1")
    assert any(f.startswith("STATUS=3 sorted") for f in fields)


def test_without_systemd_notify_is_a_no_op():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("x")  # nothing to send to, nothing raised


def test_a_camera_missing_at_start_is_a_fault_then_sorting_resumes(tmp_path, emulator, caplog):
    caplog.set_level(logging.INFO)
    tries = []

    def opener(cfg):
        tries.append(1)
        if len(tries) <= 2:
            raise SourceFault("/dev/video0 cannot be opened")
        return emulator.tray

    listener = NotifySocket(tmp_path / "notify.sock")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    seen = []
    daemon = Daemon(
        config_for(tmp_path, emulator.port), opener=opener, notifier=notifier, on_sorted=seen.append
    )
    running = Running(daemon)
    wait_for(lambda: "READY=1" in listener.fields(), what="READY after the timeout")
    ready = next(m for m in listener.messages if m.startswith("READY=1"))
    assert "camera: /dev/video0 cannot be opened" in ready
    assert running.join() == 0
    listener.close()
    assert len(seen) == 3 and "camera back after" in caplog.text


def test_a_servo_controller_missing_at_start_comes_back_through_its_stable_path(tmp_path, emulator):
    by_id = tmp_path / "by-id" / "usb-Pololu_Maestro-if00"
    by_id.parent.mkdir()
    config = config_for(tmp_path, str(by_id))
    seen = []
    daemon = Daemon(config, opener=lambda cfg: emulator.tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: daemon.ready, what="ready without the controller")
    assert "does not exist" in daemon.faults()["servo"]
    by_id.symlink_to(emulator.port)
    assert running.join() == 0
    assert len(seen) == 3 and daemon.servo.fault is None


def test_a_dark_or_covered_camera_is_reported_and_nothing_is_classified(tmp_path, emulator):
    dark = (emulator.tray.tray // 12).astype("uint8")  # the same tray with the lights off
    frames = [dark] * 40

    class Dark:
        finite, description = True, "dark test camera"

        def read(self):
            return frames.pop() if frames else None

        def close(self):
            pass

    seen, faults = [], []
    daemon = Daemon(config_for(tmp_path, emulator.port), opener=lambda cfg: Dark(), on_sorted=seen.append)
    original = daemon.heartbeat

    def heartbeat():
        original()
        faults.append(daemon.faults().get("camera"))

    daemon.heartbeat = heartbeat
    assert daemon.run() == 0
    assert seen == [] and bin_moves(emulator, daemon.config) == []
    assert "too dark or lens covered" in faults[-1]


def test_the_controller_button_sorts_the_item_on_the_tray(tmp_path):
    tray = SimulatedTray(synthetic=1, fps=0)
    emulator = LineEmulator(on_move=tray.servo_moved)
    config = config_for(tmp_path, emulator.port)
    config.servo.protocol = "line"
    config.trigger.mode = "manual"
    seen = []
    daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
    running = Running(daemon)
    wait_for(lambda: daemon.ready and tray.placed == 1, what="an item on the tray")
    assert seen == []
    emulator.press()
    assert running.join() == 0
    emulator.stop()
    assert len(seen) == 1


def open_files(path: Path) -> int:
    """How many of this process's file descriptors point at ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if fd.exists() and fd.resolve() == path.resolve())


@pytest.mark.parametrize("broken", ["model", "password"])
def test_a_start_that_fails_builds_no_part_and_leaves_the_ledger_closed(tmp_path, broken):
    """The parts are built together or not at all: a bad model or an unreadable broker password
    file stops the start with its SmartbinError, the ledger opened before it is closed again, and
    the shutdown that follows has nothing half-built to trip over."""
    from edge.errors import SmartbinError

    config = config_for(tmp_path, "/dev/null")
    if broken == "model":
        config.model.bundle = str(tmp_path / "no-such-bundle")
    else:
        config.mqtt.username, config.mqtt.password_file = "bin", str(tmp_path / "no-such-password")
    daemon = Daemon(config, opener=lambda cfg: SimulatedTray([]))
    with pytest.raises(SmartbinError):
        daemon.run()
    ledger = Path(config.ledger.path)
    assert ledger.exists() and open_files(ledger) == 0
    assert not daemon.started and not hasattr(daemon, "ledger")
    assert daemon.request_sort() is None  # a request before any part exists is kept, not a crash
