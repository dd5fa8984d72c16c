"""Command validation: every hostile payload is refused with a reason, none crashes; the table
hands each valid command to its handler and answers it."""

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edge
import edge.mqtt.commands
from edge.mqtt.commands import Command, CommandError, CommandTable
from edge.service.commands import register_commands


class FakeLedger:
    def __init__(self) -> None:
        self.count = 3

    def reset_counts(self) -> None:
        self.count = 0

    def counts(self) -> dict[str, int]:
        return {"kitchen": self.count}


def daemon_table(sort_refusal: str | None = None) -> tuple[CommandTable, SimpleNamespace]:
    """The daemon's commands on a stand-in daemon: what each handler was asked to do is kept."""
    daemon = SimpleNamespace(ledger=FakeLedger(), sorts=[], notified=[])
    daemon.request_sort = lambda source: daemon.sorts.append(source) or sort_refusal
    daemon.telemetry = SimpleNamespace(notify=lambda: daemon.notified.append(1))
    daemon.empty_bins = lambda requested, by: {requested: 7}
    table = CommandTable()
    register_commands(table, daemon, "bin-1")
    return table, daemon


TABLE, _ = daemon_table()


def test_valid_commands():
    assert TABLE.parse("sort", b"", "bin-1").name == "sort"
    assert TABLE.parse("ping", b'{"request_id": "r1"}', "bin-1").request_id == "r1"
    cmd = TABLE.parse("reset_counts", b'{"confirm": "reset_counts", "device_id": "bin-1"}', "bin-1")
    assert cmd.args == {"confirm": "reset_counts"}


def test_the_daemon_registers_its_commands_in_order():
    assert TABLE.names == ("sort", "reset_counts", "emptied", "ping")


def test_emptied_takes_one_bin_as_text():
    assert TABLE.dispatch("emptied", b'{"bin": "other"}', "bin-1")["emptied"] == {"other": 7}
    refused = TABLE.dispatch("emptied", b'{"bin": 3}', "bin-1")
    assert not refused["ok"] and 'emptied takes {"bin": "<bin id>"}' in refused["error"]


@pytest.mark.parametrize(
    "name, payload, words",
    [
        ("explode", b"", "unknown command"),
        ("reset_counts", b"{}", "needs"),
        ("reset_counts", b'{"confirm": true}', "needs"),
        ("sort", b"[1, 2]", "JSON object"),
        ("sort", b"\xff\xfe", "not UTF-8 JSON"),
        ("sort", b"{not json", "not UTF-8 JSON"),
        ("sort", b'{"speed": 3}', "unknown field.* speed for sort"),
        ("sort", b'{"device_id": "bin-2"}', "another device"),
        ("ping", b'{"request_id": 5}', "request_id"),
        ("ping", b"{" * 5000, "over 1024"),
        ("ping", b"[" * 500 + b"]" * 500, "JSON object"),
    ],
)
def test_bad_commands_are_refused_with_a_reason(name, payload, words):
    with pytest.raises(CommandError, match=words):
        TABLE.parse(name, payload, "bin-1")


@settings(max_examples=500, deadline=None)
@given(name=st.one_of(st.sampled_from(TABLE.names), st.text(max_size=30)), payload=st.binary(max_size=2000))
def test_random_bytes_never_crash(name, payload):
    try:
        TABLE.parse(name, payload, "bin-1")
    except CommandError as exc:
        assert str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(TABLE.names), data=json_values)
def test_random_json_is_accepted_only_when_valid(name, data):
    try:
        cmd = TABLE.parse(name, json.dumps(data).encode(), "bin-1")
    except CommandError:
        return
    assert isinstance(data, dict) and set(data) <= TABLE.spec(name).fields | {"request_id", "device_id"}
    assert cmd.name == name


@settings(max_examples=300, deadline=None)
@given(name=st.one_of(st.sampled_from(TABLE.names), st.text(max_size=60)), payload=st.binary(max_size=300))
def test_every_command_gets_one_reply_of_the_documented_shape(name, payload):
    table, _ = daemon_table()
    reply = table.dispatch(name, payload, "bin-1")
    assert list(reply)[:3] == ["command", "ok", "request_id"] and reply["command"] == name[:40]
    assert reply["ok"] is ("error" not in reply)


# -- the daemon's handlers ------------------------------------------------------------


def test_ping_answers_with_the_device_and_the_version():
    table, _ = daemon_table()
    assert table.dispatch("ping", b'{"request_id": "r1"}', "bin-1") == {
        "command": "ping",
        "ok": True,
        "request_id": "r1",
        "device_id": "bin-1",
        "version": edge.__version__,
    }


def test_reset_counts_resets_logs_and_republishes(caplog):
    table, daemon = daemon_table()
    assert table.dispatch("reset_counts", b"{}", "bin-1")["ok"] is False
    assert daemon.ledger.count == 3 and not daemon.notified
    reply = table.dispatch("reset_counts", b'{"confirm": "reset_counts"}', "bin-1")
    assert reply == {"command": "reset_counts", "ok": True, "request_id": None, "counts": {"kitchen": 0}}
    assert daemon.notified == [1]
    assert "mqtt: counts reset by command" in caplog.text


def test_sort_asks_the_daemon_and_a_refusal_is_the_reply():
    table, daemon = daemon_table()
    assert table.dispatch("sort", b"", "bin-1") == {"command": "sort", "ok": True, "request_id": None}
    assert daemon.sorts == ["MQTT sort command"]
    table, daemon = daemon_table(sort_refusal="tray is empty")
    reply = table.dispatch("sort", b'{"request_id": "r2"}', "bin-1")
    assert reply == {"command": "sort", "ok": False, "request_id": "r2", "error": "tray is empty"}


# -- the table ------------------------------------------------------------------------


def test_a_registered_command_reaches_its_handler_with_its_validated_args():
    seen: list[Command] = []

    def handler(command: Command) -> dict:
        seen.append(command)
        return {"echo": command.args["speed"]}

    def check(args: dict) -> None:
        if not isinstance(args.get("speed"), int):
            raise CommandError("speed must be an integer")

    table = CommandTable()
    table.register("spin", handler, {"speed"}, check)
    reply = table.dispatch("spin", b'{"speed": 3, "request_id": "r7", "device_id": "bin-1"}', "bin-1")
    assert reply == {"command": "spin", "ok": True, "request_id": "r7", "echo": 3}
    assert seen == [Command("spin", {"speed": 3}, "r7")]
    refused = table.dispatch("spin", b'{"speed": "fast"}', "bin-1")
    assert refused["ok"] is False and refused["error"] == "speed must be an integer"
    assert len(seen) == 1


def test_an_unknown_command_lists_the_registered_ones():
    table = CommandTable()
    table.register("spin", lambda command: {})
    table.register("stop", lambda command: {})
    reply = table.dispatch("explode", b"", "bin-1")
    assert reply == {
        "command": "explode",
        "ok": False,
        "request_id": None,
        "error": "unknown command 'explode'; known: spin, stop",
    }


def test_an_empty_table_refuses_every_command_with_a_reply():
    reply = CommandTable().dispatch("sort", b'{"request_id": "r1"}', "bin-1")
    assert reply["ok"] is False and reply["request_id"] is None
    assert reply["error"].startswith("unknown command 'sort'; known: ")


def test_a_handler_that_raises_is_an_internal_error_and_the_next_command_works(caplog):
    def broken(command: Command) -> dict:
        raise RuntimeError("the ledger went away")

    table = CommandTable()
    table.register("broken", broken)
    table.register("ping", lambda command: {"pong": True})
    reply = table.dispatch("broken", b'{"request_id": "r1"}', "bin-1")
    assert reply == {
        "command": "broken",
        "ok": False,
        "request_id": "r1",
        "error": "internal error: the ledger went away",
    }
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "mqtt: command broken failed" and record.exc_info
    assert table.dispatch("ping", b"", "bin-1")["pong"] is True


def test_a_refusal_is_logged_with_the_topic_it_came_on(caplog):
    TABLE.dispatch("sort", b"[]", "bin-1", topic="smartbin/bin-1/cmd/sort")
    assert "mqtt: refused command on smartbin/bin-1/cmd/sort: payload must be a JSON object" in caplog.text


def test_a_name_is_registered_once():
    table = CommandTable()
    table.register("ping", lambda command: {})
    with pytest.raises(ValueError, match="registered already"):
        table.register("ping", lambda command: {})


def documented_commands(text: str) -> set[str]:
    return set(re.findall(r"^\| `(\w+)` +\|", text, re.M))


def test_the_module_docstring_and_the_dashboard_page_list_the_daemons_commands():
    page = (Path(__file__).resolve().parents[1] / "docs" / "mqtt.md").read_text(encoding="utf-8")
    commands_section = page.split("## Commands")[1].split("\n## ")[0]
    assert documented_commands(edge.mqtt.commands.__doc__ or "") == set(TABLE.names)
    assert documented_commands(commands_section) == set(TABLE.names)


# -- retained commands ----------------------------------------------------------------


def test_a_retained_command_is_refused_with_the_fix_and_logged_once_per_topic(caplog):
    table, daemon = daemon_table()
    topic = "smartbin/bin-1/cmd/reset_counts"
    payload = b'{"confirm": "reset_counts", "request_id": "r9"}'
    for _ in range(3):  # the broker sends it again at every reconnect
        reply = table.dispatch("reset_counts", payload, "bin-1", topic=topic, retained=True)
        assert reply == {
            "command": "reset_counts",
            "ok": False,
            "request_id": "r9",
            "error": "retained command refused: publish commands without the retain flag; clear it with an "
            f"empty retained message on {topic}",
        }
    table.dispatch("emptied", b"{}", "bin-1", topic="smartbin/bin-1/cmd/emptied", retained=True)
    assert daemon.ledger.count == 3 and not daemon.notified
    logged = [r.getMessage() for r in caplog.records if "retained command" in r.getMessage()]
    assert len(logged) == 2  # once per topic
    assert logged[0].startswith(f"mqtt: retained command on {topic} refused, not carried out")
    assert f"mosquitto_pub -t '{topic}' -r -n" in logged[0]


def test_only_the_first_empty_message_after_a_retained_refusal_is_taken_for_its_clearing():
    table, daemon = daemon_table()
    topic = "smartbin/bin-1/cmd/sort"
    assert table.dispatch("sort", b"", "bin-1", topic=topic)["ok"] is True  # an ordinary sort
    table.dispatch("sort", b"{}", "bin-1", topic=topic, retained=True)
    cleared = table.dispatch("sort", b"", "bin-1", topic=topic)
    assert cleared["ok"] is False and cleared["error"].startswith("taken as clearing the retained command")
    assert table.dispatch("sort", b"", "bin-1", topic=topic)["ok"] is True
    assert daemon.sorts == ["MQTT sort command", "MQTT sort command"]


def test_a_retained_command_with_an_unreadable_payload_is_refused_as_retained():
    reply = TABLE.dispatch("explode", b"\xff{", "bin-1", topic="smartbin/bin-1/cmd/explode", retained=True)
    assert reply["request_id"] is None and reply["error"].startswith("retained command refused")
