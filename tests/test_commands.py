"""Command validation: every hostile payload is refused with a reason, none crashes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.mqtt.commands import COMMANDS, CommandError, parse_command


def test_valid_commands():
    assert parse_command("sort", b"", "bin-1").name == "sort"
    assert parse_command("ping", b'{"request_id": "r1"}', "bin-1").request_id == "r1"
    cmd = parse_command("reset_counts", b'{"confirm": "reset_counts", "device_id": "bin-1"}', "bin-1")
    assert cmd.args == {"confirm": "reset_counts"}


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
        parse_command(name, payload, "bin-1")


@settings(max_examples=500, deadline=None)
@given(
    name=st.one_of(st.sampled_from(list(COMMANDS)), st.text(max_size=30)), payload=st.binary(max_size=2000)
)
def test_random_bytes_never_crash(name, payload):
    try:
        parse_command(name, payload, "bin-1")
    except CommandError as exc:
        assert str(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(name=st.sampled_from(list(COMMANDS)), data=json_values)
def test_random_json_is_accepted_only_when_valid(name, data):
    try:
        cmd = parse_command(name, json.dumps(data).encode(), "bin-1")
    except CommandError:
        return
    assert isinstance(data, dict) and set(data) <= COMMANDS[name] | {"request_id", "device_id"}
    assert cmd.name == name
