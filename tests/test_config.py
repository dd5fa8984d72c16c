import pytest
import yaml

from edge.config import Config, describe, load_config, parse_config
from edge.errors import SmartbinError


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.threshold == 0.65


def test_reference_lists_every_key_and_parses_back():
    text = describe()
    assert "threshold" in text and "# bin confidence below" in text
    assert parse_config(yaml.safe_load(text)) == Config()


@pytest.mark.parametrize(
    "data, words",
    [
        ({"model": {"threshold": "high"}}, ["model.threshold", "'high'", "a number"]),
        ({"model": {"threshold": 1.5}}, ["model.threshold", "1.5", "from 0 to 1"]),
        ({"model": {"threads": 0}}, ["model.threads", "1 to 64"]),
        ({"model": {"treshold": 0.5}}, ["unknown key model.treshold", "threshold"]),
        ({"model": "big"}, ["model must be a mapping"]),
        ({"device_id": "a/b"}, ["device_id", "'a/b'"]),
        ({"model": {"threads": True}}, ["model.threads", "an integer"]),
        # values that used to pass validation and fail later, downstream
        ({"servo": {"min_us": 1000, "max_us": 90000}}, ["servo.max_us = 90000.0", "500 to 2500 µs"]),
        ({"servo": {"home_us": 100}}, ["servo.home_us = 100.0", "500 to 2500 µs"]),
        ({"servo": {"speed": 70000}}, ["servo.speed", "0 to 16383"]),
        ({"servo": {"device_number": 300}}, ["servo.device_number", "0 to 127"]),
        ({"ledger": {"max_pending_events": 2**70}}, ["ledger.max_pending_events", "1 to 1000000000"]),
        ({"mqtt": {"keepalive_s": 70000}}, ["mqtt.keepalive_s", "5 to 65535"]),
        ({"mqtt": {"topic_prefix": "bins/#"}}, ["mqtt.topic_prefix", "'+', '#'"]),
        ({"mqtt": {"topic_prefix": "a//b"}}, ["mqtt.topic_prefix", "empty level"]),
        ({"mqtt": {"topic_prefix": "/lobby"}}, ["mqtt.topic_prefix"]),
        ({"mqtt": {"topic_prefix": "a\0b"}}, ["mqtt.topic_prefix", "NUL"]),
        ({"mqtt": {"topic_prefix": ""}}, ["mqtt.topic_prefix"]),
        ({"device_id": "bin\0"}, ["device_id", "NUL"]),
        ({"camera": {"fps": 0}}, ["camera.fps", "more than 0"]),
        ({"camera": {"fps": float("inf")}}, ["camera.fps", "a finite number"]),
        ({"camera": {"width": 100000}}, ["camera.width", "16 to 8192"]),
        ({"trigger": {"rearm_timeout_s": float("nan")}}, ["trigger.rearm_timeout_s", "finite"]),
        ({"sorting": {"vote_frames": 10**6}}, ["sorting.vote_frames", "1 to 100"]),
    ],
)
def test_bad_config_names_key_value_and_expectation(data, words):
    with pytest.raises(SmartbinError) as err:
        parse_config(data, source="smartbin.yaml")
    for word in words:
        assert word in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(SmartbinError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("model: {threshold: 0.5\n")
    with pytest.raises(SmartbinError, match="not valid YAML"):
        load_config(p)
    p.write_text("model:\n  threshold: 0.8\n")
    assert load_config(p).model.threshold == 0.8


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    """A few hundred bytes of nested aliases would expand to billions of values and hang `run`."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(SmartbinError) as err:
        load_config(p)
    assert "alias *a0 is not allowed" in str(err.value) and "write repeated values out" in str(err.value)


def test_a_number_too_long_to_read_is_a_clear_error(tmp_path):
    p = tmp_path / "long.yaml"
    p.write_text("servo:\n  speed: " + "9" * 5000 + "\n")
    with pytest.raises(SmartbinError) as err:
        load_config(p)
    assert "number too long to read" in str(err.value) and str(p) in str(err.value)


def test_a_binary_or_unreadable_file_is_a_clear_error(tmp_path):
    p = tmp_path / "smartbin.yaml"
    p.write_bytes(b"model:\n  threshold: 0.5\n\xff\xfe\x00\x81")
    with pytest.raises(SmartbinError, match="is not UTF-8 text"):
        load_config(p)
    with pytest.raises(SmartbinError, match="cannot be read"):
        load_config(tmp_path)  # a folder


def test_a_binary_config_exits_2_with_the_fix(tmp_path, capsys):
    from edge.cli import main

    p = tmp_path / "smartbin.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    assert main(["run", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "fix:" in err and "Traceback" not in err
