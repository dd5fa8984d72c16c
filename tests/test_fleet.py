"""`smartbin fleet`: every bin on a broker on one page, against a real Mosquitto and real daemons."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from edge.camera.simulation import SimulatedTray, empty_tray
from edge.config import MqttConfig
from edge.service.daemon import Daemon
from edge.service.fleet import Fleet, make_server, watch
from edge.servo.emulator import MaestroEmulator
from tests.broker import Broker, free_port, mosquitto_path, wait_for
from tests.browser import headless_chromium, needs_chromium
from tests.conftest import REPO
from tests.test_daemon import Running, config_for

needs_broker = pytest.mark.skipif(
    mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it"
)
BINS = ["recyclable", "kitchen", "hazardous", "other"]


def test_the_fleet_keeps_what_each_bin_last_said():
    fleet = Fleet("smartbin")
    fleet.receive("smartbin/b2/availability", b"online", now=10.0)
    fleet.receive("smartbin/b2/state", json.dumps({"total": 5, "items_today": 2, "faults": {}}).encode())
    fleet.receive("smartbin/b1/event", json.dumps({"item": "paper", "bin": "recyclable", "id": "x"}).encode())
    fleet.receive("smartbin/b1/availability", b"offline")
    fleet.receive("smartbin/b1/state", b"{not json")  # counted; b1 stays listed, with a note
    fleet.receive("smartbin/b1/state", b"[1, 2]")
    fleet.receive("smartbin/b1/state", b"[" * 100_000)  # nested past the recursion limit
    fleet.receive("other/b9/state", b"{}")  # another prefix
    fleet.receive("smartbin/b3/count/other", b"4")  # in the state anyway: not a reason to show a bin
    snap = fleet.snapshot()
    assert [b["device_id"] for b in snap["bins"]] == ["b1", "b2"] and snap["ignored"] == 3
    b1, b2 = snap["bins"]
    assert b1["online"] is False and b1["last_item"] == {"item": "paper", "bin": "recyclable"} | {
        "confidence": None,
        "time": None,
    }
    assert "its last state was unreadable (" in b1["note"] and b2["note"] is None
    assert b2["online"] is True and b2["total"] == 5 and b2["items_today"] == 2 and b2["faults"] == {}


class EndlessTray:
    """A simulated tray that stays on once its items are sorted, as a real camera does."""

    finite = False

    def __init__(self, items: int) -> None:
        self.tray = SimulatedTray(synthetic=items, fps=0)
        self.description = self.tray.description

    def read(self) -> np.ndarray:
        frame = self.tray.read()
        if frame is None:
            time.sleep(0.03)
            return empty_tray() + np.random.default_rng().integers(0, 4, (480, 640, 3), dtype=np.uint8)
        return frame

    def close(self) -> None:
        pass


def start_bin(tmp_path: Path, device_id: str, broker: Broker, items: int, capacity: int = 200):
    tray = EndlessTray(items)
    emulator = MaestroEmulator(on_move=tray.tray.servo_moved)
    config = config_for(tmp_path / device_id, emulator.port, broker.port)
    config.device_id = device_id
    config.fill.capacity = {b: capacity for b in BINS}
    daemon = Daemon(config, opener=lambda cfg: tray)
    return Running(daemon), emulator


def fleet_server(broker_port: int):
    fleet = Fleet("smartbin")
    client = watch(fleet, MqttConfig(host="127.0.0.1", port=broker_port))
    server = make_server(fleet, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return fleet, client, server, f"http://127.0.0.1:{server.server_address[1]}"


@needs_broker
def test_a_broker_that_is_down_is_shown_and_retried(tmp_path):
    port = free_port()
    fleet, client, server, url = fleet_server(port)
    try:
        wait_for(lambda: "cannot reach broker" in (fleet.snapshot()["broker"]["problem"] or ""), what="down")
        with urllib.request.urlopen(url + "/api/fleet", timeout=5) as response:
            assert "retrying" in json.loads(response.read())["broker"]["problem"]
        broker = Broker(tmp_path, port=port).start()
        try:
            wait_for(lambda: fleet.snapshot()["broker"]["connected"], timeout_s=45, what="reconnected")
        finally:
            broker.stop()
    finally:
        client.loop_stop()
        server.shutdown()
        server.server_close()


@needs_broker
@needs_chromium
def test_the_fleet_page_shows_three_bins_one_filling_up_and_one_going_offline(tmp_path, broker):
    lobby, lobby_servo = start_bin(tmp_path, "lobby-2", broker, items=1)
    canteen, canteen_servo = start_bin(tmp_path, "canteen", broker, items=3, capacity=2)
    # the third is a whole `smartbin demo` process, killed without a word: the broker sends its last will
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo", "--synthetic", "100000", "--fps", "4",
         "--state", str(tmp_path / "d"), "--broker", f"127.0.0.1:{broker.port}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    fleet, client, server, url = fleet_server(broker.port)
    browser = headless_chromium("1100,700")

    def seen(selector: str, what: str = "innerText") -> str | None:
        """One read in the page's own thread: the page redraws its cards every second."""
        script = "const n = document.querySelector(arguments[0]); return n ? n[arguments[1]] : null;"
        return browser.execute_script(script, selector, what)

    def status(device: str) -> str | None:
        return seen(f"section[data-device='{device}']", "className")

    try:
        browser.get(url + "/")
        wait_for(
            lambda: all("online" in (status(d) or "").split() for d in ("canteen", "demo", "lobby-2")),
            timeout_s=60,
            what="three bins online on the page",
        )
        wait_for(
            lambda: seen("section[data-device='canteen'] .bar[data-state='full']") is not None,
            timeout_s=60,
            what="the canteen's full bin on the page",
        )
        card = seen("section[data-device='canteen']")
        assert "fill: full:" in seen("section[data-device='canteen'] .faults")
        assert "today 2 · counted 2" in card and "last:" in card
        assert "fault" in status("canteen").split()
        os.killpg(demo.pid, signal.SIGKILL)
        wait_for(lambda: "offline" in (status("demo") or ""), timeout_s=30, what="the killed bin greyed out")
        assert "online" in status("lobby-2").split()
        assert "3 bins, 2 online" in seen("#summary")
        shot = Path(os.environ.get("SMARTBIN_SCREENSHOTS", tmp_path)) / "fleet.png"
        browser.save_screenshot(str(shot))
    finally:
        browser.quit()
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
        for running, servo in ((lobby, lobby_servo), (canteen, canteen_servo)):
            assert running.stop() == 0
            servo.stop()
        client.loop_stop()
        server.shutdown()
        server.server_close()
