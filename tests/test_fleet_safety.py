"""`smartbin fleet` faces whatever is on the broker: a state with NaN, one of 5 MB, a bin deleted from
the broker, markup in a device id and its faults, and requests through another name. A real Mosquitto,
a real HTTP server on loopback, and a real headless Chromium."""

from __future__ import annotations

import json
import threading
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.service.fleet import MAX_PAYLOAD, BinView, Fleet, make_server
from tests.broker import wait_for
from tests.browser import headless_chromium, needs_chromium
from tests.test_fleet import fleet_server, needs_broker
from tests.test_labelling_safety import request, strict

BIG_STATE = b'{"faults": {"camera": "' + b"a" * (5 * 1024 * 1024) + b'"}}'  # a shown field of 5 MB
MARKUP_ID = "<img src=x onerror=window.pwned=1>"


def state(**fields) -> bytes:
    return json.dumps({"total": 3, "items_today": 1, "faults": {}, **fields}).encode()


def publish(port: int, *messages: tuple[str, bytes], retain: bool = True) -> None:
    """Each message at QoS 1, retained as a bin's state is (an empty one clears the topic)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-fleet-publisher")
    client.connect("127.0.0.1", port, 10)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def hostile_bins(port: int) -> None:
    publish(
        port,
        ("smartbin/good/availability", b"online"),
        ("smartbin/good/state", state()),
        ("smartbin/nan-bin/availability", b"online"),
        ("smartbin/nan-bin/state", b'{"total": NaN, "faults": {}}'),
        ("smartbin/inf-bin/state", b'{"total": 1e999, "faults": {}}'),
        ("smartbin/big-bin/availability", b"online"),
        ("smartbin/big-bin/state", BIG_STATE),
        ("smartbin/gone/availability", b"offline"),
        ("smartbin/gone/state", state()),
    )


def fleet_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url + "/api/fleet", timeout=10) as response:
        body = response.read()
    return len(body), strict(body)


def by_id(snapshot: dict) -> dict[str, dict]:
    return {b["device_id"]: b for b in snapshot["bins"]}


def stop(client, server) -> None:
    client.loop_stop()
    server.shutdown()
    server.server_close()


@needs_broker
def test_unreadable_or_huge_states_are_named_and_the_fleet_stays_strict_json(broker):
    """Started after the broker holds a NaN, an Infinity and a 5 MB state (retained, as after a
    restart): every bin is listed, those three with a note, and every poll is small strict JSON."""
    hostile_bins(broker.port)
    fleet, client, server, url = fleet_server(broker.port)
    try:
        wait_for(lambda: len(fleet.snapshot()["bins"]) == 5, timeout_s=20, what="five bins")
        size, snapshot = fleet_json(url)
        bins = by_id(snapshot)
        assert size < MAX_PAYLOAD and sorted(bins) == ["big-bin", "gone", "good", "inf-bin", "nan-bin"]
        assert bins["good"]["total"] == 3 and bins["good"]["note"] is None
        assert "its last state was unreadable" in bins["nan-bin"]["note"] and "NaN" in bins["nan-bin"]["note"]
        assert bins["nan-bin"]["online"] is True and bins["nan-bin"]["total"] is None
        assert "1e999 is out of a number's range" in bins["inf-bin"]["note"]
        assert f"over the {MAX_PAYLOAD // 1024} KiB this page accepts" in bins["big-bin"]["note"]
        assert f"{len(BIG_STATE):,} bytes" in bins["big-bin"]["note"]
        publish(broker.port, ("smartbin/good/event", b'{"item": "paper", "confidence": NaN}'), retain=False)
        publish(broker.port, ("smartbin/nan-bin/state", state(total=7)))
        wait_for(lambda: by_id(fleet.snapshot())["nan-bin"]["total"] == 7, what="the nan bin's next state")
        assert by_id(fleet_json(url)[1])["nan-bin"]["note"] is None
        assert by_id(fleet_json(url)[1])["good"]["last_item"] is None  # its NaN event was left out
        assert fleet.snapshot()["ignored"] == 4
        status, answer = request(url + "/api/fleet", Host=f"rebound.example:{server.server_address[1]}")
        assert status == 403 and b"DNS rebinding" in answer and b"nan-bin" not in answer
    finally:
        stop(client, server)


@needs_broker
def test_a_bin_deleted_from_the_broker_leaves_the_page(broker):
    """Deleting a bin clears its retained messages (empty payloads): the page forgets it at once, and
    a fresh start never sees it again."""
    hostile_bins(broker.port)
    fleet, client, server, url = fleet_server(broker.port)
    try:
        wait_for(lambda: "gone" in by_id(fleet.snapshot()), timeout_s=20, what="the bin to delete")
        publish(broker.port, ("smartbin/gone/state", b""), ("smartbin/gone/availability", b""))
        wait_for(lambda: "gone" not in by_id(fleet.snapshot()), what="the deleted bin gone")
        assert "gone" not in by_id(fleet_json(url)[1]) and "good" in by_id(fleet_json(url)[1])
    finally:
        stop(client, server)
    fleet, client, server, url = fleet_server(broker.port)
    try:
        wait_for(lambda: len(fleet.snapshot()["bins"]) == 4, timeout_s=20, what="four bins on a fresh start")
        assert "gone" not in by_id(fleet_json(url)[1])
    finally:
        stop(client, server)


@needs_broker
@needs_chromium
def test_markup_in_a_device_id_or_its_faults_is_shown_as_text(broker):
    """A bin whose id, faults, model, last item and held item are markup: shown as text, no element
    made, no script run; the NaN and 5 MB bins beside it get their cards with their notes."""
    hostile_bins(broker.port)
    faults = {"<b id=pwn-part>camera</b>": "<b id=pwn-fault>no frames</b><script>window.pwned=2</script>"}
    hostile = state(
        faults=faults,
        model_id="<i id=pwn-model>m</i>",
        last_item={
            "item": "<u id=pwn-item>i</u>",
            "bin": "<b id=pwn-bin>b</b>",
            "confidence": 0.5,
            "time": 1,
        },
        held={"item": "<b id=pwn-held>h</b>", "reason": "<img src=x onerror=window.pwned=3>"},
    )
    publish(
        broker.port,
        (f"smartbin/{MARKUP_ID}/availability", b"online"),
        (f"smartbin/{MARKUP_ID}/state", hostile),
    )
    fleet, client, server, url = fleet_server(broker.port)
    browser = headless_chromium()
    try:
        browser.get(url + "/")
        wait_for(
            lambda: browser.execute_script("return document.querySelectorAll('section.bin').length") == 6,
            timeout_s=30,
            what="six cards on the page",
        )
        made = browser.execute_script(
            "return [document.querySelectorAll('[id^=pwn], img, b, i, u').length,"
            " document.scripts.length, window.pwned === undefined]"
        )
        assert made == [0, 1, True]
        cards = browser.execute_script(
            "const c = {}; document.querySelectorAll('section.bin').forEach("
            "(s) => { c[s.dataset.device] = [s.innerText, s.className]; }); return c;"
        )
        text = cards[MARKUP_ID][0]
        assert (
            MARKUP_ID in text and "<b id=pwn-part>camera</b>: <b id=pwn-fault>no frames</b><script>" in text
        )
        assert "<i id=pwn-model>m</i>" in text and "<u id=pwn-item>i</u> → <b id=pwn-bin>b</b>" in text
        assert "held on the tray: <b id=pwn-held>h</b>: <img src=x onerror=window.pwned=3>" in text
        assert "its last state was unreadable" in cards["nan-bin"][0] and "fault" in cards["nan-bin"][1]
        assert "KiB this page accepts" in cards["big-bin"][0] and "today 1 · counted 3" in cards["good"][0]
    finally:
        browser.quit()
        stop(client, server)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"total": NaN}',
        b'{"total": -Infinity}',
        b'{"total": 1e400}',
        b"[" * 10_000,
        b"[" * 100_000,
        b'"text"',
        b"{no",
    ],
)
def test_a_state_that_is_not_strict_json_leaves_the_bin_listed_with_a_note(payload):
    fleet = Fleet("smartbin")
    fleet.receive("smartbin/b1/state", state(total=5))
    fleet.receive("smartbin/b1/state", payload)
    fleet.receive("smartbin/b2/state", payload)
    snapshot = json.loads(json.dumps(fleet.snapshot(), allow_nan=False))
    assert [b["device_id"] for b in snapshot["bins"]] == ["b1", "b2"] and snapshot["ignored"] == 2
    assert all("its last state was unreadable" in b["note"] and b["total"] is None for b in snapshot["bins"])
    fleet.receive("smartbin/b3/event", payload)  # an unreadable event is left out, and shows no bin
    fleet.receive("smartbin/b2/availability", b"")  # an empty retained message: the bin was deleted
    assert [b["device_id"] for b in fleet.snapshot()["bins"]] == ["b1"]


def test_the_server_answers_strict_json_or_says_why_not():
    """Whatever a bin's view holds, the page never gets NaN: a value JSON cannot carry is a 500 that
    says so, in strict JSON."""
    fleet = Fleet("smartbin")
    fleet.bins["b1"] = BinView("b1", state={"total": float("nan")})
    server = make_server(fleet, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = request(f"http://127.0.0.1:{server.server_address[1]}/api/fleet", Host="localhost")
        assert status == 500 and "cannot write its answer as JSON" in strict(body)["error"]
    finally:
        server.shutdown()
        server.server_close()
