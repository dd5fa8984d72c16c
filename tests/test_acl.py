"""Per-bin broker accounts and the fleet's ACL (deploy/ansible/broker.yml, docs/mqtt.md) on a real Mosquitto.

broker.yml writes the accounts (mosquitto_passwd) and the ACL for an inventory of two bins, an operator
and the fleet page, on this machine (``ansible_connection: local``); a real Mosquitto then runs on what
it wrote. Each client speaks MQTT 5, so that the broker says why it refuses (PUBACK and SUBACK reason
135, "not authorized"), and the delivery itself is checked too: a refused message never reaches a
subscriber that may read it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.broker import Broker, mosquitto_path, wait_for
from tests.conftest import REPO

BIN_DIR = Path(sys.executable).parent
PLAYBOOK = shutil.which("ansible-playbook", path=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

pytestmark = [
    pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it"),
    pytest.mark.skipif(not Path(PASSWD).exists(), reason="mosquitto_passwd absent: scripts/test installs it"),
    pytest.mark.skipif(
        PLAYBOOK is None, reason="ansible-playbook absent: pip install 'smartbin[dev]' (scripts/test does)"
    ),
]

PASSWORDS = {
    "dev-a": "a-secret",
    "dev-b": "b-secret",
    "smartbin-operator": "op-secret",
    "smartbin-fleet": "f",
}
NOT_AUTHORIZED = 135


def broker_play(folder: Path, bins: tuple[str, ...], reload: list[str]) -> subprocess.CompletedProcess:
    """deploy/ansible/broker.yml for these bins, its files in ``folder``."""
    inventory = {
        "all": {
            "children": {
                "bins": {
                    "hosts": {
                        f"host-{name}": {
                            "smartbin_device_id": name,
                            "smartbin_mqtt_password": PASSWORDS[name],
                        }
                        for name in bins
                    }
                },
                "brokers": {
                    "hosts": {"broker": None},
                    "vars": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": sys.executable,
                        "smartbin_broker_dir": str(folder),
                        "smartbin_broker_conf_file": str(folder / "smartbin.conf"),
                        "smartbin_broker_file_owner": str(os.getuid()),
                        "smartbin_broker_file_group": str(os.getgid()),
                        "smartbin_broker_passwd_command": PASSWD,
                        "smartbin_broker_reload": reload,
                        "smartbin_broker_operator_password": PASSWORDS["smartbin-operator"],
                        "smartbin_broker_fleet_password": PASSWORDS["smartbin-fleet"],
                    },
                },
            }
        }
    }
    path = folder / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return subprocess.run(
        [PLAYBOOK, "-i", str(path), "broker.yml"],
        cwd=REPO / "deploy" / "ansible",
        env={
            **os.environ,
            "ANSIBLE_HOME": str(folder / "ansible-home"),
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory):
    """A real Mosquitto with the accounts and the ACL broker.yml wrote for bins dev-a and dev-b."""
    folder = tmp_path_factory.mktemp("acl")
    result = broker_play(folder, ("dev-a", "dev-b"), ["true"])
    assert result.returncode == 0, result.stdout + result.stderr
    broker = Broker(folder, extra=(folder / "smartbin.conf").read_text()).start()
    broker.folder = folder
    yield broker
    broker.stop()


class Client:
    """An MQTT 5 client that waits for each answer of the broker and keeps what it receives."""

    def __init__(self, port: int, user: str | None, password: str | None, client_id: str = "") -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{user}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.connack = threading.Event()
        self.reason = None
        self.client.on_connect = self._connected
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(
            mid, [r.value for r in rcs]
        )
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port, 10)
        self.client.loop_start()
        assert self.connack.wait(5), "no CONNACK"

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        self.reason = reason_code
        self.connack.set()

    def publish(self, topic: str, payload: str = "{}") -> int:
        """The broker's reason code for this QoS 1 publish (0: taken, 135: not authorized)."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.acks, 5, what=f"PUBACK of {topic}")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacks, 5, what=f"SUBACK of {topic}")
        return self.subacks[mid][0]

    def topics(self) -> set[str]:
        return {t for t, _ in list(self.messages)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def clients(acl_broker):
    made: list[Client] = []

    def login(user: str, password: str | None = None) -> Client:
        c = Client(acl_broker.port, user, PASSWORDS.get(user) if password is None else password)
        made.append(c)
        return c

    yield login
    for c in made:
        c.close()


def settle() -> None:
    """Long enough for a message the broker took to reach a subscriber on loopback."""
    time.sleep(0.3)


def test_a_bin_writes_only_its_own_topics(clients):
    operator = clients("smartbin-operator")
    assert operator.subscribe("smartbin/#") < 128
    bin_a = clients("dev-a")
    assert not bin_a.reason.is_failure
    for topic in ("smartbin/dev-a/state", "smartbin/dev-a/event", "smartbin/dev-a/count/other"):
        assert bin_a.publish(topic) == 0, topic
    for topic in ("smartbin/dev-b/state", "smartbin/dev-b/event", "smartbin/dev-b/count/other", "smartbin/x"):
        assert bin_a.publish(topic) == NOT_AUTHORIZED, topic
    settle()
    assert operator.topics() == {"smartbin/dev-a/state", "smartbin/dev-a/event", "smartbin/dev-a/count/other"}


def test_only_the_operator_sends_commands(clients):
    bin_b = clients("dev-b")
    assert bin_b.subscribe("smartbin/dev-b/cmd/+") == 1  # its own commands: granted (QoS 1)
    bin_a = clients("dev-a")
    bin_a.subscribe("smartbin/dev-b/cmd/+")  # Mosquitto 2.0 grants it; it delivers nothing a bin may not read
    assert bin_a.publish("smartbin/dev-b/cmd/emptied", '{"bin": "all"}') == NOT_AUTHORIZED
    assert bin_a.publish("smartbin/dev-a/cmd/reset_counts") == NOT_AUTHORIZED  # nor its own
    fleet = clients("smartbin-fleet")
    assert fleet.publish("smartbin/dev-b/cmd/sort") == NOT_AUTHORIZED
    settle()
    assert bin_b.messages == []
    operator = clients("smartbin-operator")
    assert operator.publish("smartbin/dev-b/cmd/ping", '{"request_id": "r1"}') == 0
    wait_for(lambda: bin_b.messages, 5, what="the operator's command at the bin")
    assert bin_b.messages == [("smartbin/dev-b/cmd/ping", b'{"request_id": "r1"}')]
    settle()
    assert bin_a.messages == []  # another bin's commands never reach it


def test_the_fleet_account_reads_everything_and_writes_nothing(clients):
    fleet = clients("smartbin-fleet")
    assert fleet.subscribe("smartbin/+/#") < 128  # what smartbin fleet subscribes to
    operator = clients("smartbin-operator")
    assert operator.subscribe("smartbin/#") < 128
    assert operator.subscribe("homeassistant/#") < 128
    for topic in (
        "smartbin/dev-a/state",
        "smartbin/smartbin-fleet/state",  # a bin's place under its own name: it has none
        "homeassistant/sensor/smartbin-fleet/total/config",
        "smartbin/dev-a/cmd/sort",
    ):
        assert fleet.publish(topic) == NOT_AUTHORIZED, topic
    bin_a = clients("dev-a")
    assert bin_a.publish("smartbin/dev-a/state") == 0
    wait_for(lambda: fleet.topics(), 5, what="the bin's state on the fleet page's account")
    settle()
    assert fleet.topics() == {"smartbin/dev-a/state"}
    assert operator.topics() == {"smartbin/dev-a/state"}


def test_a_wrong_password_or_no_account_is_refused_at_login(acl_broker):
    for user, password in (("dev-a", "b-secret"), ("dev-c", "anything"), (None, None)):
        c = Client(acl_broker.port, user, password)
        try:
            assert c.reason.is_failure and c.reason.value in (134, 135), (user, c.reason)  # bad password / no
        finally:
            c.close()


def test_a_bins_own_telemetry_is_whole_under_the_acl(acl_broker, clients, tmp_path):
    """The bin's real MQTT client (edge.mqtt.telemetry) logged in with its account: everything it
    publishes (availability, state, its count, the event, Home Assistant's discovery) reaches the
    operator, and a command from the operator reaches it and is answered. A topic the ACL forgot would
    be missing here: a refused QoS 1 message is acknowledged all the same under MQTT 3.1.1."""
    from edge.config import MqttConfig
    from edge.ledger import Ledger, SortedItem
    from edge.mqtt.commands import CommandTable
    from edge.mqtt.discovery import discovery_documents
    from edge.mqtt.telemetry import Telemetry
    from edge.mqtt.topics import Topics

    operator = clients("smartbin-operator")
    assert operator.subscribe("smartbin/#") < 128 and operator.subscribe("homeassistant/#") < 128
    secret = tmp_path / "password"
    secret.write_text(PASSWORDS["dev-a"])
    cfg = MqttConfig(
        host="127.0.0.1", port=acl_broker.port, username="dev-a", password_file=str(secret), reconnect_max_s=1
    )
    ledger = Ledger(tmp_path / "ledger.db")
    bins = ["recyclable", "kitchen", "hazardous", "other"]
    commands = CommandTable()
    commands.register("ping", lambda command: {"device_id": "dev-a"})
    telemetry = Telemetry(
        cfg, "dev-a", ledger, status=lambda: {"faults": {}}, bins=bins, fill_bins=bins, commands=commands
    )
    telemetry.start()
    try:
        ledger.record(SortedItem("item-1", time.time(), "paper", "recyclable", 0.9, False, 12.0, "m"))
        telemetry.notify()
        expected = {
            "smartbin/dev-a/availability",
            "smartbin/dev-a/state",
            "smartbin/dev-a/event",
            "smartbin/dev-a/count/recyclable",  # the bins that counted something
            *(
                topic
                for topic, _ in discovery_documents(
                    "homeassistant", "dev-a", Topics("smartbin/dev-a"), bins, bins
                )
            ),
        }
        try:
            wait_for(lambda: expected <= operator.topics(), 10, what="every topic of the bin")
        except AssertionError:
            raise AssertionError(f"never arrived: {sorted(expected - operator.topics())}") from None
        wait_for(lambda: telemetry.listening, 5, what="the bin's command subscription")
        assert operator.publish("smartbin/dev-a/cmd/ping", json.dumps({"request_id": "acl"})) == 0
        wait_for(lambda: "smartbin/dev-a/reply" in operator.topics(), 5, what="the bin's reply")
        reply = json.loads([p for t, p in operator.messages if t == "smartbin/dev-a/reply"][-1])
        assert reply["request_id"] == "acl" and reply["ok"] is True
    finally:
        telemetry.stop()
    settle()
    assert {t for t in operator.topics() if not t.startswith(("smartbin/dev-a/", "homeassistant/"))} == set()


def test_smartbin_check_tells_a_refusal_from_a_wrong_password(acl_broker, tmp_path):
    """`smartbin check`'s broker steps: a wrong password fails at login (auth), a bin whose account the
    ACL does not give its topics (its device id is another bin's) fails at the ACL step."""
    from edge.config import MqttConfig
    from edge.service.check import diagnose_mqtt

    def check(device_id: str, user: str, password: str) -> dict[str, tuple[bool, str]]:
        secret = tmp_path / f"{user}-{password}"
        secret.write_text(password)
        cfg = MqttConfig(host="127.0.0.1", port=acl_broker.port, username=user, password_file=str(secret))
        return {step: (ok, text) for step, ok, text in diagnose_mqtt(cfg, device_id, timeout_s=3)}

    good = check("dev-a", "dev-a", PASSWORDS["dev-a"])
    assert all(ok for ok, _ in good.values()), good
    wrong_password = check("dev-a", "dev-a", "nope")
    assert wrong_password["auth"][0] is False and "acl" not in wrong_password, wrong_password
    refused = check("dev-b", "dev-a", PASSWORDS["dev-a"])
    assert refused["auth"][0] is True and refused["acl"][0] is False, refused


def test_a_bin_removed_from_the_inventory_loses_its_account(tmp_path):
    """broker.yml run again without dev-b: its account is gone once the broker reloads (SIGHUP), and the
    ACL, unchanged, is not written again."""
    first = broker_play(tmp_path, ("dev-a", "dev-b"), ["true"])
    assert first.returncode == 0, first.stdout + first.stderr
    broker = Broker(tmp_path, extra=(tmp_path / "smartbin.conf").read_text()).start()
    try:
        c = Client(broker.port, "dev-b", PASSWORDS["dev-b"])
        assert not c.reason.is_failure
        c.close()
        again = broker_play(tmp_path, ("dev-a",), ["kill", "-HUP", str(broker.process.pid)])
        assert again.returncode == 0, again.stdout + again.stderr
        assert "changed: [broker] => (item=dev-b)" in again.stdout
        assert "TASK [smartbin_broker : Write the ACL]\nok: [broker]" in again.stdout.replace(
            "*", ""
        ).replace(" \n", "\n")
        assert "RUNNING HANDLER [smartbin_broker : Reload mosquitto]" in again.stdout

        def refused() -> bool:
            c = Client(broker.port, "dev-b", PASSWORDS["dev-b"])
            c.close()
            return c.reason.is_failure

        wait_for(refused, 5, what="dev-b's login refused after the reload")
        c = Client(broker.port, "dev-a", PASSWORDS["dev-a"])
        assert not c.reason.is_failure
        c.close()
    finally:
        broker.stop()
