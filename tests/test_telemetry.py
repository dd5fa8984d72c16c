"""Telemetry against a real Mosquitto: nothing lost through broker outages and client kills."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

import edge.mqtt.telemetry
import edge.retry
from edge.config import MqttConfig
from edge.ledger import Ledger, Pending, SortedItem
from edge.mqtt.commands import CommandTable
from edge.mqtt.telemetry import INFLIGHT_LIMIT, Telemetry, outbox_fault
from edge.mqtt.topics import Topics
from edge.service.commands import register_commands
from tests.broker import Broker, Subscriber, mosquitto_path, wait_for
from tests.conftest import REPO, fill

pytestmark = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it")

BINS = ("recyclable", "kitchen", "hazardous", "other")


def sort(ledger: Ledger, telemetry: Telemetry | None, n: int) -> None:
    ledger.record(SortedItem(str(uuid.uuid4()), time.time(), "item", BINS[n % 4], 0.9, False, 300.0, "m1"))
    if telemetry:
        telemetry.notify()


def telemetry_for(broker: Broker, ledger: Ledger, device: str = "bin-1") -> Telemetry:
    cfg = MqttConfig(port=broker.port, host="127.0.0.1", reconnect_max_s=1.0, keepalive_s=5)
    t = Telemetry(cfg, device, ledger, status=lambda: {"model_id": "m1", "faults": {}})
    t.start()
    return t


def test_events_state_and_counts_reach_a_subscriber(broker, tmp_path):
    sub = Subscriber(broker.port, "smartbin/bin-1/#")
    strict = Subscriber(broker.port, "smartbin/bin-1/event", client_id="exactly-once", qos=2)
    ledger = Ledger(tmp_path / "l.db")
    telemetry = telemetry_for(broker, ledger)
    for n in range(6):
        sort(ledger, telemetry, n)
    wait_for(lambda: len(sub.event_ids()) == 6 and not ledger.pending(), what="6 events acknowledged")
    event = json.loads(sub.payloads("/event")[0])
    assert set(event) == {
        "id",
        "time",
        "item",
        "bin",
        "confidence",
        "uncertain",
        "latency_ms",
        "model_id",
        "stages",
        "most_probable_bin",
        "cost_rule",
    }
    wait_for(lambda: sub.latest("/count/kitchen") == b"2", what="kitchen count 2")
    wait_for(lambda: json.loads(sub.latest("/state") or b"{}").get("total") == 6, what="state total 6")
    state = json.loads(sub.latest("/state"))
    assert state["counts"] == ledger.counts() and state["model_id"] == "m1"
    assert sub.latest("/availability") == b"online"
    assert set(strict.delivery.values()) == {(1, False)}  # events at QoS 1, not retained
    strict.close()
    dashboard = Subscriber(broker.port, "smartbin/bin-1/availability", client_id="dashboard", qos=2)
    wait_for(lambda: dashboard.latest("/availability") == b"online", what="online for a late dashboard")
    assert dashboard.delivery["smartbin/bin-1/availability"] == (1, True)  # retained, QoS 1
    dashboard.close()
    telemetry.stop()
    wait_for(lambda: sub.latest("/availability") == b"offline", what="offline on a clean stop")
    sub.close()

    late = Subscriber(broker.port, "smartbin/bin-1/#", client_id="late")

    def retained() -> dict[str, bytes]:
        return {t.rsplit("/", 1)[-1]: p for t, p, r in list(late.messages) if r}

    wait_for(lambda: {"availability", "state", "recyclable"} <= retained().keys(), what="the retained topics")
    assert retained()["recyclable"] == b"2"
    retained = retained()
    assert retained["availability"] == b"offline" and json.loads(retained["state"])["total"] == 6
    late.close()


def test_a_broker_outage_loses_nothing(broker, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.telemetry")
    sub = Subscriber(broker.port, "smartbin/bin-1/#")
    broker.wait_for_autosave()  # the subscriber's persistent session outlives the SIGKILL below
    ledger = Ledger(tmp_path / "l.db")
    telemetry = telemetry_for(broker, ledger)
    for n in range(5):
        sort(ledger, telemetry, n)
    wait_for(lambda: len(set(sub.event_ids())) == 5, what="5 events before the outage")

    broker.kill()
    for n in range(5, 25):
        sort(ledger, telemetry, n)  # returns with the broker down: only the ledger is written
    assert len([p for p in ledger.pending(100) if p.kind == "event"]) >= 20

    broker.start()
    wait_for(lambda: len(set(sub.event_ids())) == 25, timeout_s=20, what="all 25 events after the outage")
    wait_for(lambda: not ledger.pending(), what="outbox drained by PUBACKs")
    assert len(sub.event_ids()) >= 25  # QoS 1: duplicates allowed, each with its id
    for bin_id, count in ledger.counts().items():
        wait_for(
            lambda b=bin_id, c=count: sub.latest(f"/count/{b}") == str(c).encode(), what=f"count {bin_id}"
        )
    assert caplog.text.count("lost broker") == 1  # the outage is logged, once
    assert caplog.text.count(f"mqtt: connected to 127.0.0.1:{broker.port} again") == 1
    assert "no CONNACK" not in caplog.text  # a connection that worked leaves no CONNACK deadline behind
    assert telemetry.retry.attempts == 0  # the next outage backs off from its first step again
    telemetry.stop()
    sub.close()


CLIENT = """
import sys, time, uuid
from edge.config import MqttConfig
from edge.ledger import Ledger, SortedItem
import edge.mqtt.telemetry
from edge.ledger import Pending
from edge.mqtt.telemetry import INFLIGHT_LIMIT, Telemetry, outbox_fault
from edge.mqtt.topics import Topics
port, db, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ledger = Ledger(db)
t = Telemetry(MqttConfig(host="127.0.0.1", port=port, keepalive_s=5, reconnect_max_s=1), "bin-9", ledger)
t.start()
for i in range(n):
    ledger.record(SortedItem(str(uuid.uuid4()), time.time(), "x", "other", 0.9, False, 1.0, "m"))
    t.notify()
print("sorted", flush=True)
time.sleep(60)
"""


def run_client(port: int, db, items: int) -> subprocess.Popen:
    """The client process: it sorts ``items`` items, says so, and keeps publishing until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(port), str(db), str(items)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "sorted"
    return process


def test_a_killed_client_leaves_offline_and_delivers_on_restart(broker, tmp_path):
    sub = Subscriber(broker.port, "smartbin/bin-9/#")
    db = tmp_path / "client.db"
    first = run_client(broker.port, db, 40)
    wait_for(lambda: sub.latest("/availability") == b"online", what="online")
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: sub.latest("/availability") == b"offline", what="the last will")

    again = run_client(broker.port, db, 0)
    wait_for(lambda: len(set(sub.event_ids())) == 40, timeout_s=15, what="every event of the killed run")
    wait_for(lambda: sub.latest("/count/other") == b"40", what="count 40")
    again.send_signal(signal.SIGKILL)
    again.wait()
    assert Ledger(db).counts() == {"other": 40}
    sub.close()


UNACKNOWLEDGED_CLIENT = """
import sys, time, uuid
from edge.config import MqttConfig
from edge.ledger import Ledger, SortedItem
import edge.mqtt.telemetry
from edge.ledger import Pending
from edge.mqtt.telemetry import INFLIGHT_LIMIT, Telemetry, outbox_fault
from edge.mqtt.topics import Topics
port, db, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ledger = Ledger(db)
t = Telemetry(MqttConfig(host="127.0.0.1", port=port, keepalive_s=30, reconnect_max_s=1), "bin-9", ledger)
t.start()

def until(done, what):
    deadline = time.monotonic() + 10
    while not done():
        if time.monotonic() > deadline:
            sys.exit("timed out waiting for " + what)
        time.sleep(0.01)

until(lambda: t.connected, "CONNACK")
print("connected", flush=True)
sys.stdin.readline()  # the broker is paused now: it reads nothing and acknowledges nothing
for i in range(n):
    ledger.record(SortedItem(str(uuid.uuid4()), time.time(), "x", "other", 0.9, False, 1.0, "m"))
rows = {p.seq for p in ledger.pending(1000)}
t.notify()
# every row handed to paho and its PUBLISH written to the socket: only the PUBACK is missing
until(lambda: rows <= set(t._inflight.values()) and not t.client.want_write(), "every row published")
print("published", flush=True)
time.sleep(60)
"""


def test_a_row_published_but_never_acknowledged_survives_a_crash(broker, tmp_path):
    """The ledger lets a row go on the broker's PUBACK, never on the publish: the client is SIGKILLed
    after writing its PUBLISH packets to a paused broker, so no PUBACK can have reached it."""
    sub = Subscriber(broker.port, "smartbin/bin-9/#")
    db = tmp_path / "client.db"
    client = subprocess.Popen(
        [sys.executable, "-c", UNACKNOWLEDGED_CLIENT, str(broker.port), str(db), "10"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "connected"
        broker.process.send_signal(signal.SIGSTOP)
        try:
            client.stdin.write("go\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "published"
            client.send_signal(signal.SIGKILL)
            client.wait()
        finally:
            broker.process.send_signal(signal.SIGCONT)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    ledger = Ledger(db)
    ids = {event.id for event in ledger.events(100)}
    assert len(ids) == 10
    pending = ledger.pending(1000)
    assert {p.key for p in pending if p.kind == "event"} == ids  # every row still waits for its PUBACK
    assert [(p.key, p.payload) for p in pending if p.kind == "count"] == [("other", "10")]

    again = run_client(broker.port, db, 0)
    try:
        wait_for(lambda: set(sub.event_ids()) == ids, timeout_s=15, what="every event after the restart")
        wait_for(lambda: not ledger.pending(), what="the outbox drained by the broker's PUBACKs")
        wait_for(lambda: sub.latest("/count/other") == b"10", what="count 10")
    finally:
        again.send_signal(signal.SIGKILL)
        again.wait()
    ledger.close()
    sub.close()


def test_a_dead_broker_is_one_log_line_not_a_flood(tmp_path, caplog):
    from tests.broker import free_port

    ledger = Ledger(tmp_path / "l.db")
    cfg = MqttConfig(host="127.0.0.1", port=free_port(), reconnect_max_s=1.0)
    telemetry = Telemetry(cfg, "bin-3", ledger)
    telemetry.start()
    sort(ledger, telemetry, 0)
    wait_for(lambda: telemetry.retry.attempts >= 3, what="three connection attempts")
    assert caplog.text.count("cannot reach broker") == 1
    assert "Traceback" not in caplog.text
    assert telemetry.fault and "cannot reach broker" in telemetry.fault
    assert len(ledger.pending()) == 2  # kept for later
    telemetry.stop()


def test_password_authentication(tmp_path, caplog, monkeypatch):
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "bin-user", "s3cret"], check=True)
    broker = Broker(tmp_path, f"allow_anonymous false\npassword_file {passwd}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", ""))
    broker.start()
    try:
        secret = tmp_path / "mqtt-password"
        secret.write_text("s3cret\n")
        ledger = Ledger(tmp_path / "l.db")
        cfg = MqttConfig(host="127.0.0.1", port=broker.port, username="bin-user", password_file=str(secret))
        good = Telemetry(cfg, "bin-4", ledger)
        good.start()
        sort(ledger, good, 0)
        wait_for(lambda: good.connected and not ledger.pending(), what="authenticated publish")
        good.stop()

        monkeypatch.setenv("SMARTBIN_MQTT_PASSWORD", "wrong")
        bad = Telemetry(MqttConfig(host="127.0.0.1", port=broker.port, username="bin-user"), "bin-5", ledger)
        bad.start()
        wait_for(lambda: bad.fault is not None and bad.retry.attempts >= 2, what="refused twice")
        bad.stop()
        assert "refused the connection" in bad.fault and "password" in bad.fault
        assert caplog.text.count("refused the connection") == 1
        assert "wrong" not in caplog.text and "s3cret" not in caplog.text  # passwords are never logged
    finally:
        broker.stop()


def make_ca(folder):
    """A throwaway CA and a broker certificate for 127.0.0.1, made with openssl here and now."""

    def ssl_cmd(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    ssl_cmd(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=smartbin test CA",
    )
    ssl_cmd(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    ssl_cmd(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl absent")
def test_tls_with_a_test_ca(tmp_path):
    ca, cert, key = make_ca(tmp_path)
    broker = Broker(tmp_path, f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n").start()
    try:
        ledger = Ledger(tmp_path / "l.db")
        tls = Telemetry(MqttConfig(host="127.0.0.1", port=broker.port, ca_file=str(ca)), "bin-6", ledger)
        tls.start()
        sort(ledger, tls, 0)
        wait_for(lambda: tls.connected and not ledger.pending(), what="publish over TLS")
        tls.stop()

        other = tmp_path / "other"
        other.mkdir()
        other_ca, _, _ = make_ca(other)
        wrong = Telemetry(
            MqttConfig(host="127.0.0.1", port=broker.port, ca_file=str(other_ca)), "bin-7", ledger
        )
        wrong.start()
        wait_for(lambda: wrong.fault is not None, what="a TLS failure")
        wrong.stop()
        assert wrong.fault.startswith("TLS with broker") and "ca_file" in wrong.fault
    finally:
        broker.stop()


def publish(port: int, topic: str, payload: bytes, qos: int = 1) -> None:
    """One message (QoS 1 unless told) from a throwaway client; fails after 5 s rather than hang."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port, 5)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=qos).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture()
def live(broker, tmp_path):
    """A running telemetry for bin-1 with the daemon's commands, and a subscriber on its replies."""
    ledger = Ledger(tmp_path / "l.db")
    sorts: list[int] = []
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, keepalive_s=5)
    daemon = SimpleNamespace(ledger=ledger, request_sort=lambda source: sorts.append(1))
    commands = CommandTable()
    register_commands(commands, daemon, "bin-1")
    telemetry = daemon.telemetry = Telemetry(cfg, "bin-1", ledger, bins=BINS, commands=commands)
    telemetry.start()
    sub = Subscriber(broker.port, "smartbin/bin-1/reply")
    wait_for(lambda: telemetry.listening, what="subscribed to commands")
    yield broker, telemetry, ledger, sub, sorts
    telemetry.stop()
    sub.close()


def replies(sub: Subscriber) -> list[dict]:
    return [json.loads(p) for p in sub.payloads("/reply")]


def test_commands_are_validated_and_answered(live):
    broker, telemetry, ledger, sub, sorts = live
    sort(ledger, telemetry, 1)
    publish(broker.port, "smartbin/bin-1/cmd/ping", b'{"request_id": "r-1"}')
    wait_for(lambda: len(replies(sub)) == 1, what="ping reply")
    assert replies(sub)[0] == {
        "command": "ping",
        "ok": True,
        "request_id": "r-1",
        "device_id": "bin-1",
        "version": replies(sub)[0]["version"],
    }
    publish(broker.port, "smartbin/bin-1/cmd/reset_counts", b"{}")
    wait_for(lambda: len(replies(sub)) == 2, what="refusal")
    assert replies(sub)[1]["ok"] is False and "confirm" in replies(sub)[1]["error"]
    assert ledger.counts() == {"kitchen": 1}
    publish(broker.port, "smartbin/bin-1/cmd/reset_counts", b'{"confirm": "reset_counts"}')
    wait_for(lambda: len(replies(sub)) == 3, what="reset reply")
    assert ledger.counts() == {"kitchen": 0}
    publish(broker.port, "smartbin/bin-1/cmd/sort", b"")
    wait_for(lambda: len(replies(sub)) == 4, what="sort reply")
    assert sorts == [1]
    publish(broker.port, "smartbin/bin-2/cmd/sort", b"")  # another bin's command
    publish(broker.port, "smartbin/bin-1/cmd/ping", b"")
    wait_for(lambda: len(replies(sub)) == 5, what="ping after the other bin's command")
    assert sorts == [1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # any name a client can publish: Mosquitto disconnects a publisher whose topic has control characters
    name=st.text(
        st.characters(whitelist_categories=("L", "N", "P", "S"), blacklist_characters="/+#"),
        min_size=1,
        max_size=20,
    ),
    payload=st.binary(max_size=300),
)
def test_hostile_commands_never_crash_and_each_gets_a_reply(live, name, payload):
    broker, telemetry, ledger, sub, sorts = live
    before = len(replies(sub))
    publish(broker.port, f"smartbin/bin-1/cmd/{name}", payload)
    wait_for(lambda: len(replies(sub)) == before + 1, what="one reply")
    assert telemetry._thread.is_alive()


def test_a_telemetry_without_commands_answers_each_as_unknown(broker, tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    telemetry = telemetry_for(broker, ledger)
    sub = Subscriber(broker.port, "smartbin/bin-1/reply")
    wait_for(lambda: telemetry.listening, what="subscribed to commands")
    publish(broker.port, "smartbin/bin-1/cmd/sort", b'{"request_id": "r1"}')
    publish(broker.port, "smartbin/bin-1/cmd/ping", b"")
    wait_for(lambda: len(replies(sub)) == 2, what="two replies")
    assert [(r["command"], r["ok"], r["error"].split(";")[0]) for r in replies(sub)] == [
        ("sort", False, "unknown command 'sort'"),
        ("ping", False, "unknown command 'ping'"),
    ]
    assert telemetry._thread.is_alive()
    telemetry.stop()
    sub.close()


def test_commands_reach_the_bin_at_qos_1(live):
    broker, telemetry, ledger, sub, sorts = live
    received = []
    handle = telemetry.client.on_message
    telemetry.client.on_message = lambda c, u, message: received.append(message.qos) or handle(c, u, message)
    publish(broker.port, "smartbin/bin-1/cmd/ping", b"{}", qos=2)
    wait_for(lambda: replies(sub), what="the reply")
    assert received == [1]  # at least once, the bin's subscription; never at most once (QoS 0)


def test_home_assistant_discovery_and_reannounce(live):
    broker, telemetry, ledger, sub, sorts = live
    ha = Subscriber(broker.port, "homeassistant/#", client_id="ha")
    wait_for(lambda: len(ha.messages) >= len(BINS) + 4, what="discovery documents")
    docs = {t: json.loads(p) for t, p, _ in ha.messages}
    assert len(docs) == len(BINS) + 4
    for topic, doc in docs.items():
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
        for key in ("name", "unique_id", "state_topic", "availability_topic", "device"):
            assert key in doc, (topic, key)
        assert doc["availability_topic"] == "smartbin/bin-1/availability"
        assert doc["device"]["identifiers"] == ["smartbin_bin-1"]
    assert len({d["unique_id"] for d in docs.values()}) == len(docs)
    counts = [d for d in docs.values() if d["state_topic"].startswith("smartbin/bin-1/count/")]
    assert len(counts) == len(BINS) and all(d["state_class"] == "total_increasing" for d in counts)
    assert any(t.startswith("homeassistant/binary_sensor/") for t in docs)
    seen = len(ha.messages)
    received = []
    handle = telemetry.client.on_message
    telemetry.client.on_message = lambda c, u, message: received.append(message.qos) or handle(c, u, message)
    publish(broker.port, "homeassistant/status", b"online", qos=2)
    wait_for(lambda: len(ha.messages) >= seen + len(docs), what="re-announced after HA restart")
    assert received == [1]  # Home Assistant's status reaches the bin at least once
    ha.close()


def mqtt_test(tmp_path, capsys, **mqtt) -> tuple[int, str]:
    from edge.service.cli import main

    config = tmp_path / "mqtt.yaml"
    config.write_text("device_id: bin-8\nmqtt:\n" + "".join(f"  {k}: {v}\n" for k, v in mqtt.items()))
    code = main(["mqtt", "test", "--config", str(config)])
    return code, capsys.readouterr().out


def test_mqtt_test_names_the_failing_step(tmp_path, capsys, monkeypatch):
    from tests.broker import free_port

    code, out = mqtt_test(tmp_path, capsys, host="127.0.0.1", port=free_port())
    assert code == 1 and "ok    dns" in out and "FAIL  tcp" in out

    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "bin-user", "s3cret"], check=True)
    acl = tmp_path / "acl"
    acl.write_text("user bin-user\ntopic readwrite smartbin/bin-8/#\nuser other\ntopic read $SYS/#\n")
    broker = Broker(tmp_path, f"password_file {passwd}\nacl_file {acl}\n")
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
    )
    broker.start()
    try:
        monkeypatch.setenv("SMARTBIN_MQTT_PASSWORD", "s3cret")
        code, out = mqtt_test(tmp_path, capsys, host="127.0.0.1", port=broker.port, username="bin-user")
        assert code == 0 and [line.split()[1] for line in out.splitlines()] == ["dns", "tcp", "auth", "acl"]
        monkeypatch.setenv("SMARTBIN_MQTT_PASSWORD", "nope")
        code, out = mqtt_test(tmp_path, capsys, host="127.0.0.1", port=broker.port, username="bin-user")
        assert code == 1 and "FAIL  auth" in out
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), "other", "pw"], check=True)
        broker.stop()
        broker.start()
        monkeypatch.setenv("SMARTBIN_MQTT_PASSWORD", "pw")
        code, out = mqtt_test(tmp_path, capsys, host="127.0.0.1", port=broker.port, username="other")
        assert code == 1 and "ok    auth" in out and "FAIL  acl" in out
    finally:
        broker.stop()


def test_a_listener_that_never_sends_connack_is_a_fault_and_retried(tmp_path, caplog):
    """Something takes the TCP connection and never answers: a fault, not silence; nothing lost."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # the kernel completes the handshake; no one answers
    try:
        ledger = Ledger(tmp_path / "l.db")
        cfg = MqttConfig(host="127.0.0.1", port=silent.getsockname()[1], reconnect_max_s=1.0, keepalive_s=5)
        telemetry = Telemetry(cfg, "bin-4", ledger)
        telemetry.start()
        sort(ledger, telemetry, 0)
        silent.settimeout(20)
        first, _ = silent.accept()
        wait_for(lambda: telemetry.fault is not None, timeout_s=15, what="the missing CONNACK as a fault")
        assert "sent no CONNACK within 5 s" in telemetry.fault
        second, _ = silent.accept()  # connected again after the backoff (a timeout here fails the test)
        assert caplog.text.count("no CONNACK") == 1  # one line per fault, not one per attempt
        assert len(ledger.pending()) == 2  # the event and its count wait in the outbox
        telemetry.stop(timeout_s=0.5)
        first.close()
        second.close()
    finally:
        silent.close()


def test_counts_are_republished_to_a_broker_that_lost_its_retained_store(broker, tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    telemetry = telemetry_for(broker, ledger)
    for n in range(3):
        sort(ledger, telemetry, n)
    wait_for(lambda: not ledger.pending(), what="outbox drained")
    broker.kill()
    for stored in tmp_path.glob("*.db"):
        if stored.name != "l.db":
            stored.unlink()  # the broker's persistence file: its retained messages are gone
    broker.start()
    expected = {b: str(c).encode() for b, c in ledger.counts().items()}
    witness = Subscriber(broker.port, "smartbin/bin-1/count/#", client_id="witness")
    wait_for(
        lambda: {t.rsplit("/", 1)[-1]: p for t, p, _ in witness.messages} == expected,
        timeout_s=20,
        what="the counts published again after the broker's restart",
    )
    # a dashboard that subscribes after that gets every bin's count, not only the next one to change:
    # retained, and at QoS 1 even where it asks for 2
    late = Subscriber(broker.port, "smartbin/bin-1/count/#", client_id="late-dashboard", qos=2)
    wait_for(lambda: len(late.messages) == len(expected), what="retained counts")
    assert {t.rsplit("/", 1)[-1]: p for t, p, _ in late.messages} == expected
    assert set(late.delivery.values()) == {(1, True)}
    telemetry.stop()
    witness.close()
    late.close()


# -- nothing ends the telemetry thread; dropped events are a fault -----------------------------------


def sort_ids(ledger: Ledger, n: int) -> set[str]:
    """``n`` sorted items written to the ledger with no telemetry running; their event ids."""
    items = [
        SortedItem(str(uuid.uuid4()), time.time(), "item", BINS[i % 4], 0.9, False, 1.0, "m")
        for i in range(n)
    ]
    for item in items:
        ledger.record(item)
    return {item.id for item in items}


def tracebacks(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "edge.mqtt.telemetry" and r.exc_info]


def test_a_full_disk_under_the_ledger_is_a_fault_and_delivery_resumes(broker, small_disk, caplog):
    """The broker's PUBACK cannot be written to the ledger (on_publish raises inside paho's loop)."""
    caplog.set_level(logging.INFO, logger="edge.mqtt.telemetry")
    ledger = Ledger(small_disk / "l.db")
    ids = sort_ids(ledger, 5)
    fill(small_disk)
    sub = Subscriber(broker.port, "smartbin/bin-1/#")
    telemetry = telemetry_for(broker, ledger)
    wait_for(lambda: "database or disk is full" in (telemetry.fault or ""), what="the full disk as a fault")
    # it carries on: reconnects after a backoff and publishes every unacknowledged event again
    wait_for(lambda: all(sub.event_ids().count(i) >= 2 for i in ids), timeout_s=15, what="events sent again")
    assert telemetry._thread.is_alive()
    fault = telemetry.faults()["mqtt"]
    assert fault.startswith("telemetry failed: database or disk is full")
    assert f"free space on {small_disk}" in fault and "retrying in" in fault
    assert {p.key for p in ledger.pending(100) if p.kind == "event"} == ids  # none acknowledged, none lost
    assert len(tracebacks(caplog)) == 1  # logged once with its traceback, not once per retry

    (small_disk / "filler").unlink()
    wait_for(
        lambda: telemetry.fault is None and not ledger.pending(), timeout_s=15, what="acknowledged at last"
    )
    assert set(sub.event_ids()) == ids and telemetry.faults() == {}
    assert "mqtt: telemetry works again (it failed with: database or disk is full" in caplog.text
    assert telemetry.retry.attempts == 0
    telemetry.stop()
    sub.close()
    ledger.close()


class ExitingLedger(Ledger):
    """A real ledger whose first outbox read raises SystemExit, as a library calling sys.exit() would:
    no ``except Exception`` catches it, so it ends the telemetry thread."""

    exits = 1

    def pending(self, limit: int = 100):
        if self.exits:
            self.exits -= 1
            raise SystemExit("sys.exit() in the telemetry thread")
        return super().pending(limit)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the point of the test
def test_notify_starts_a_new_thread_when_the_telemetry_thread_died(broker, tmp_path, caplog):
    sub = Subscriber(broker.port, "smartbin/bin-1/#")
    ledger = ExitingLedger(tmp_path / "l.db")
    sort(ledger, None, 0)  # no notify() yet: it would start a new thread at once
    telemetry = telemetry_for(broker, ledger)
    wait_for(lambda: not telemetry._thread.is_alive(), what="the thread ended by SystemExit")
    assert "thread ended (SystemExit: sys.exit() in the telemetry thread)" in telemetry.faults()["mqtt"]

    sort(ledger, telemetry, 1)  # the daemon's next change
    assert telemetry._thread.is_alive()
    assert "the telemetry thread ended (SystemExit" in caplog.text
    wait_for(lambda: len(set(sub.event_ids())) == 2 and not ledger.pending(), what="both events")
    wait_for(lambda: telemetry.faults() == {}, what="no fault")
    telemetry.stop()
    sub.close()


def test_events_dropped_past_the_outbox_limit_are_a_fault_until_it_drains(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edge.mqtt.telemetry")
    from tests.broker import free_port

    port = free_port()  # nothing listens there yet
    ledger = Ledger(tmp_path / "l.db", max_pending_events=3)
    cfg = MqttConfig(host="127.0.0.1", port=port, reconnect_max_s=1.0, keepalive_s=5)
    telemetry = Telemetry(cfg, "bin-1", ledger, status=lambda: {"model_id": "m1", "faults": {}})
    telemetry.start()
    for n in range(5):
        sort(ledger, telemetry, n)
    wait_for(
        lambda: telemetry.faults().get("outbox", "").startswith("2 events dropped since start"),
        what="the dropped events as a fault",
    )
    outbox = telemetry.faults()["outbox"]
    assert "ledger.max_pending_events (3)" in outbox and "cannot reach broker" in telemetry.faults()["mqtt"]
    state = telemetry.state()
    assert state["faults"] == {"outbox": outbox} and state["dropped_events"] == 2
    assert caplog.text.count("events dropped since start") + caplog.text.count("event dropped since") == 1

    broker = Broker(tmp_path, port=port).start()
    try:
        wait_for(
            lambda: telemetry.faults() == {} and not ledger.pending(),
            timeout_s=15,
            what="the outbox drained and the fault cleared",
        )
        late = Subscriber(broker.port, "smartbin/bin-1/state", client_id="late")
        wait_for(
            lambda: json.loads(late.latest("/state") or b"{}").get("faults") == {}, what="no faults in state"
        )
        assert json.loads(late.latest("/state"))["dropped_events"] == 2  # the counter stays
        assert (
            caplog.text.count("outbox: drained to the broker; 2 events dropped since start remain lost") == 1
        )
        telemetry.stop()
        late.close()
    finally:
        broker.stop()


# The delivery bookkeeping on its own, without a broker: a client that is never connected


@pytest.fixture()
def offline(tmp_path):
    """A Telemetry whose thread never runs: its bookkeeping is called as the thread would call it."""
    ledger = Ledger(tmp_path / "l.db")
    telemetry = Telemetry(MqttConfig(host="127.0.0.1", port=1, reconnect_max_s=30.0), "bin-1", ledger)
    yield telemetry
    ledger.close()


def test_an_outbox_row_goes_to_its_topic_with_its_retain_flag():
    topics = Topics("smartbin/bin-1/")
    assert topics.for_row(Pending(1, "count", "kitchen", "3")) == ("smartbin/bin-1/count/kitchen", True)
    assert topics.for_row(Pending(2, "event", "id-1", "{}")) == ("smartbin/bin-1/event", False)


def test_the_outbox_fault_counts_the_dropped_events_and_names_the_setting():
    one = outbox_fault(1, 100)
    assert one.startswith("1 event dropped since start: ")
    assert "ledger.max_pending_events (100)" in one and "raise ledger.max_pending_events" in one
    assert outbox_fault(2, 100).startswith("2 events dropped since start: ")


def test_a_dead_telemetry_thread_is_the_mqtt_fault_with_its_reason(offline):
    assert offline.faults() == {}
    offline._thread = threading.Thread(target=lambda: None)
    offline._thread.start()
    offline._thread.join()
    assert offline.faults() == {
        "mqtt": "the telemetry thread ended (no reason given); it starts again with the next change"
    }
    offline._death = "SystemExit: 3"
    assert offline.faults()["mqtt"].startswith("the telemetry thread ended (SystemExit: 3); ")


def test_each_failure_in_the_thread_backs_off_further_and_is_logged_once(offline, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(edge.retry, "backoff_delay", lambda *args: calls.append(args) or 1.5)
    for _ in range(2):
        try:
            raise ValueError("boom")
        except ValueError:
            offline._crashed()
        assert caplog.text.count("mqtt: telemetry failed: ValueError: boom") == 1  # the first time only
    assert calls == [(0, 0.5, 30.0), (1, 0.5, 30.0)]
    assert offline.retry.retry_at > time.monotonic() + 1.0  # not before the 1.5 s the backoff gave
    assert offline.fault == (
        "telemetry failed: ValueError: boom (a bug in smartbin: report it with the traceback in the log); "
        "retrying in 1.5 s"
    )
    assert caplog.text.count("mqtt: telemetry failed: ValueError: boom") == 1
    offline._crashed()  # outside an except block: nothing to explain
    assert offline.fault == "telemetry failed: unknown error; retrying in 1.5 s"


@pytest.mark.parametrize(
    "reason, hint",
    [("Bad user name or password", True), ("Not authorized", True), ("Server unavailable", False)],
)
def test_a_refused_connection_is_the_fault_and_only_a_refused_login_names_the_password(offline, reason, hint):
    offline._on_connect(offline.client, None, None, ReasonCode(PacketTypes.CONNACK, reason), None)
    assert offline.fault.startswith(f"broker 127.0.0.1:1 refused the connection: {reason}")
    login = " (check mqtt.username and the password in mqtt.password_file or $SMARTBIN_MQTT_PASSWORD)"
    assert offline.fault == f"broker 127.0.0.1:1 refused the connection: {reason}" + (login if hint else "")
    assert not offline.connected


def test_the_drain_hands_each_row_once_and_keeps_at_most_the_inflight_limit_in_flight(offline):
    """Unconnected, paho queues each publish and gives it a message id: what the drain hands over shows."""
    ledger = offline.ledger
    for n in range(150):  # 150 events and the count of each of the 4 bins
        sort(ledger, None, n)
    offline._drain()
    handed = dict(offline._inflight)
    assert len(handed) == INFLIGHT_LIMIT
    assert sorted(handed.values()) == [p.seq for p in ledger.pending(INFLIGHT_LIMIT)]  # oldest first
    offline._drain()
    assert offline._inflight == handed  # nothing handed twice, nothing more while the limit is reached
    acked = list(handed)[:10]
    for mid in acked:
        offline._on_publish(offline.client, None, mid, None, None)
    assert ledger.waiting() == 154 - 10
    offline._drain()  # room for 10 more, after the 90 still in flight
    assert len(offline._inflight) == INFLIGHT_LIMIT and len(offline._handed) == INFLIGHT_LIMIT
    assert sorted(offline._inflight.values()) == [p.seq for p in ledger.pending(INFLIGHT_LIMIT)]
    sort(ledger, None, 150)  # new rows behind rows still in flight
    for mid in list(offline._inflight)[:1]:
        offline._on_publish(offline.client, None, mid, None, None)
    offline._drain()
    assert sorted(offline._inflight.values()) == [p.seq for p in ledger.pending(INFLIGHT_LIMIT)]


def test_dropped_events_are_a_fault_until_the_outbox_has_drained(tmp_path, caplog):
    ledger = Ledger(tmp_path / "l.db", max_pending_events=1)
    sort(ledger, None, 0)
    sort(ledger, None, 1)  # one event dropped before this telemetry started: not its fault
    telemetry = Telemetry(MqttConfig(host="127.0.0.1", port=1), "bin-1", ledger)
    telemetry._watch_outbox()
    assert telemetry.faults() == {}
    telemetry._watch_outbox()
    assert telemetry.faults() == {}  # still nothing new
    sort(ledger, None, 2)
    sort(ledger, None, 3)
    telemetry._watch_outbox()
    assert telemetry.faults() == {"outbox": outbox_fault(2, 1)}
    assert caplog.text.count(f"outbox: {outbox_fault(2, 1)}") == 1
    telemetry._watch_outbox()
    sort(ledger, None, 4)
    telemetry._watch_outbox()
    assert telemetry.faults() == {"outbox": outbox_fault(3, 1)}
    assert caplog.text.count("outbox: ") == 1  # one line for the fault, however it grows
    telemetry._drain()
    telemetry._recovered()
    assert "outbox" in telemetry.faults()  # rows are still on their way
    for mid in list(telemetry._inflight):
        telemetry._on_publish(telemetry.client, None, mid, None, None)
    telemetry._drain()
    telemetry._recovered()
    assert telemetry.faults() == {} and ledger.waiting() == 0
    ledger.close()


def test_a_stop_waits_for_rows_in_the_outbox_and_in_flight_but_not_for_an_unreadable_ledger(offline):
    assert not offline._unsent()
    sort(offline.ledger, None, 0)
    assert offline._unsent()  # in the outbox
    offline._drain()
    for row in offline.ledger.pending(10):
        offline.ledger.acknowledge(row.seq)
    assert offline._unsent()  # the outbox is empty, but paho still holds them
    offline._inflight.clear()
    assert not offline._unsent()
    sort(offline.ledger, None, 1)
    offline.ledger.close()
    assert offline._unsent() is False  # the thread names the ledger as the fault; the stop goes on


def test_dropping_a_half_broken_connection_goes_on_and_keeps_the_traceback_at_debug(offline, caplog):
    caplog.set_level(logging.DEBUG, logger="edge.mqtt.telemetry")
    broken = RuntimeError("socket half closed")

    def disconnect():
        raise broken

    offline.client.disconnect = disconnect
    offline.connected = offline.listening = True
    offline._drop()
    assert not offline.connected and not offline.listening
    [record] = [r for r in caplog.records if r.name == "edge.mqtt.telemetry"]
    assert record.levelno == logging.DEBUG and record.getMessage() == "mqtt: disconnect failed"
    assert record.exc_info[1] is broken
