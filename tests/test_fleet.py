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
from tests.conftest import REPO
from tests.test_daemon import Running, config_for
from tests.test_labelling import CHROMIUM, DRIVER

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
    fleet.receive("smartbin/b1/state", b"{not json")  # ignored, counted, nothing else changes
    fleet.receive("smartbin/b1/state", b"[1, 2]")
    fleet.receive("other/b9/state", b"{}")  # another prefix
    fleet.receive("smartbin/b3/count/other", b"4")  # in the state anyway: not a reason to show a bin
    snap = fleet.snapshot()
    assert [b["device_id"] for b in snap["bins"]] == ["b1", "b2"] and snap["ignored"] == 2
    b1, b2 = snap["bins"]
    assert b1["online"] is False and b1["last_item"] == {"item": "paper", "bin": "recyclable"} | {
        "confidence": None,
        "time": None,
    }
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
@pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="chromium and chromium-driver absent: scripts/test installs them"
)
def test_the_fleet_page_shows_three_bins_one_filling_up_and_one_going_offline(tmp_path, broker):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    lobby, lobby_servo = start_bin(tmp_path, "lobby-2", broker, items=1)
    canteen, canteen_servo = start_bin(tmp_path, "canteen", broker, items=3, capacity=2)
    # the third is a whole `smartbin demo` process, killed without a word: the broker sends its last will
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge", "demo", "--synthetic", "100000", "--fps", "4",
         "--state", str(tmp_path / "d"), "--broker", f"127.0.0.1:{broker.port}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    fleet, client, server, url = fleet_server(broker.port)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,700"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)

    def card(device: str):
        return browser.find_element(By.CSS_SELECTOR, f"section[data-device='{device}']")

    def status(device: str) -> str | None:
        found = browser.find_elements(By.CSS_SELECTOR, f"section[data-device='{device}']")
        return found[0].get_attribute("data-status") if found else None

    try:
        browser.get(url + "/")
        wait_for(
            lambda: [status(d) for d in ("canteen", "demo", "lobby-2")] == ["online"] * 3,
            timeout_s=60,
            what="three bins online on the page",
        )
        wait_for(
            lambda: card("canteen").find_elements(By.CSS_SELECTOR, ".bar[data-state='full']"),
            timeout_s=60,
            what="the canteen's full bin on the page",
        )
        canteen_card = card("canteen")
        assert "fill: full:" in canteen_card.find_element(By.CSS_SELECTOR, ".faults").text
        assert "today 2 · counted 2" in canteen_card.text and "last:" in canteen_card.text
        assert "fault" in canteen_card.get_attribute("class")
        os.killpg(demo.pid, signal.SIGKILL)
        wait_for(lambda: status("demo") == "offline", timeout_s=30, what="the killed bin greyed out")
        assert status("lobby-2") == "online"
        assert "3 bins, 2 online" in browser.find_element(By.ID, "summary").text
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
