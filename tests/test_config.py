import argparse
import dataclasses
import math
from pathlib import Path
from typing import Dict, Optional

import pytest
import yaml

from edge.config import (
    Config,
    MqttConfig,
    add_config_option,
    load_config,
    parse_config,
    set_keys,
)
from edge.errors import SmartbinError
from edge.schema import build_dataclass, describe, key_type, opt, read_yaml, shown
from edge.service.cli import main


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.threshold == 0.65


def test_reference_lists_every_key_and_parses_back():
    text = describe(Config)
    assert "threshold" in text and "# bin confidence below" in text
    assert parse_config(yaml.safe_load(text)) == Config()


def test_the_shipped_config_file_is_the_reference():
    """config/smartbin.yaml is what `smartbin config` prints: every key, its default and its help."""
    from edge.config import REFERENCE_HEADER
    from edge.paths import REFERENCE_CONFIG

    shipped = REFERENCE_CONFIG.read_text(encoding="utf-8")
    fix = "regenerate it: smartbin config > config/smartbin.yaml"
    assert shipped == REFERENCE_HEADER + describe(Config) + "\n", fix


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
    from edge.service.cli import main

    p = tmp_path / "smartbin.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    assert main(["run", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err and "fix:" in err and "Traceback" not in err


def refusal(data) -> SmartbinError:
    with pytest.raises(SmartbinError) as err:
        parse_config(data, source="smartbin.yaml")
    return err.value


def test_opt_declares_a_field_with_its_default_description_check_and_expectation():
    f = opt(3, "how many", check=bool, expect="1 to 9")
    assert f.default == 3
    assert dict(f.metadata) == {"help": "how many", "check": bool, "expect": "1 to 9"}
    assert dict(opt(None, "a name").metadata) == {"help": "a name", "check": None, "expect": ""}


def test_every_key_has_a_description():
    sections = [f.default_factory for f in dataclasses.fields(Config) if f.name != "device_id"]
    for cls in [Config, *sections]:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no description"


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("model", "threshold", 0.0),
        ("model", "threshold", 1.0),
        ("servo", "min_us", 500.0),
        ("servo", "max_us", 2500.0),
        ("servo", "home_us", 1000.0),
        ("servo", "home_us", 2000.0),
        ("servo", "bins", {"kitchen": 1000.0, "other": 2000.0}),
        ("model", "bundle", "n" * 255),
        ("model", "bundle", "x" * 255 + "/" + "y" * 255),
        ("model", "bundle", "a/" * 2047 + "a"),
        ("mqtt", "client_id", "c" * 65535),
        ("mqtt", "topic_prefix", "Building-X/bins"),
        ("mqtt", "host", "a" * 63 + ".lan"),
        ("mqtt", "password_env", "MQTT_PASSWORD_X"),
        ("camera", "source", 0),
        ("camera", "source", 255),
        ("camera", "source", "255"),
        ("camera", "source", "/dev/video0"),
        ("camera", "source", "videotestsrc ! " + "videoconvert ! " * 20 + "appsink"),
        ("camera", "source", "rtsp://cam.lan/" + "s" * 300),
        ("trigger", "roi", [0.0, 0.0, 1.0, 1.0]),
        ("trigger", "roi", [0.25, 0.5, 0.75, 0.5]),
        ("trigger", "roi", [0.9, 0.9, 0.1, 0.1]),
        ("trigger", "roi", [0.0, 0.0, 1 + 1e-9, 1 + 1e-9]),
    ],
)
def test_a_value_at_the_edge_of_what_a_key_allows_is_accepted(section, key, value):
    assert getattr(getattr(parse_config({section: {key: value}}), section), key) == value


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("model", "bundle", "n" * 256),
        ("model", "bundle", "a/" * 2048),
        ("model", "bundle", "a\0b"),
        ("model", "bundle", "\ud800"),
        ("mqtt", "client_id", "é" * 32768),
        ("mqtt", "client_id", "a\0b"),
        ("mqtt", "host", ""),
        ("mqtt", "host", "a..b"),
        ("mqtt", "host", "a" * 64 + ".lan"),
        ("mqtt", "host", "broker\0.lan"),
        ("mqtt", "password_env", "\ud800"),
        ("mqtt", "password_env", "A=B"),
        ("camera", "source", 256),
        ("camera", "source", -1),
        ("camera", "source", "256"),
        ("camera", "source", "0001"),
        ("camera", "source", "²"),
        ("camera", "source", ""),
        ("camera", "source", "cam\0"),
        ("camera", "source", None),
        ("trigger", "roi", [1.0, 0.0, 1e-10, 1.0]),
        ("trigger", "roi", [0.0, 1.0, 1.0, 1e-10]),
        ("trigger", "roi", [-0.1, 0.0, 0.5, 0.5]),
        ("trigger", "roi", [0.0, -0.1, 0.5, 0.5]),
        ("trigger", "roi", [0.0, 0.0, 0.0, 1.0]),
        ("trigger", "roi", [0.0, 0.0, 1.0, 0.0]),
        ("trigger", "roi", [0.5, 0.0, 0.6, 1.0]),
        ("trigger", "roi", [0.0, 0.5, 1.0, 0.6]),
        ("trigger", "roi", [0.0, 0.0, 1 + 2e-9, 1.0]),
        ("trigger", "roi", [0.0, 0.0, 1.0, 1 + 2e-9]),
        ("trigger", "roi", [0.0, 0.0, 1.0]),
        ("trigger", "roi", [0.0, 0.0, 1.0, 1.0, 0.0]),
        ("trigger", "roi", []),
    ],
)
def test_a_value_just_past_what_a_key_allows_is_refused_naming_the_key(section, key, value):
    err = refusal({section: {key: value}})
    assert err.problem.startswith(f"smartbin.yaml: {section}.{key} = ")
    assert err.fix == f"fix {section}.{key} in smartbin.yaml"


FIX = object()  # the usual fix: "fix KEY in FILE"
KNOWN_KEYS = "known keys: device_id, model, servo, ledger, mqtt, camera, trigger, sorting, fill"
RECALIBRATE = "recalibrate it (smartbin servo calibrate) or widen the limits if the mechanism allows"


@pytest.mark.parametrize(
    "data, problem, fix",
    [
        ({"device_id": 5}, "device_id = 5 is not valid: expected a string", "fix device_id in smartbin.yaml"),
        ({"model": {"threads": 2.5}}, "model.threads = 2.5 is not valid: expected an integer", FIX),
        ({"model": {"threshold": "high"}}, "model.threshold = 'high' is not valid: expected a number", FIX),
        ({"mqtt": {"ha_discovery": 1}}, "mqtt.ha_discovery = 1 is not valid: expected true or false", FIX),
        ({"model": {"threads": 0}}, "model.threads = 0 is not valid: expected 1 to 64", FIX),
        ({"camera": {"fps": math.inf}}, "camera.fps = inf is not valid: expected a finite number", FIX),
        ({"camera": {"source": None}}, "camera.source = None is not valid: expected a string", FIX),
        ({"trigger": {"roi": "all"}}, "trigger.roi = 'all' is not valid: expected a list", FIX),
        (
            {"trigger": {"roi": ["a", 0, 1, 1]}},
            "trigger.roi[0] = 'a' is not valid: expected a number",
            "fix trigger.roi[0] in smartbin.yaml",
        ),
        ({"servo": {"bins": [1100]}}, "servo.bins = [1100] is not valid: expected a mapping", FIX),
        ({"servo": {"bins": {1: 1100}}}, "servo.bins = 1 is not valid: expected a string", FIX),
        (
            {"servo": {"bins": {"kitchen": "low"}}},
            "servo.bins.kitchen = 'low' is not valid: expected a number",
            "fix servo.bins.kitchen in smartbin.yaml",
        ),
        ([1, 2], "the file must be a mapping of keys, got [1, 2]", "write the file as 'key: value' lines"),
        ({"model": "big"}, "model must be a mapping of keys, got 'big'", "write model as 'key: value' lines"),
        (
            {"colour": "red"},
            "unknown key colour",
            KNOWN_KEYS,
        ),
        ({1: 2}, "unknown key 1", KNOWN_KEYS),
        ({"k" * 100: 1}, "unknown key " + "k" * 80, KNOWN_KEYS),
        (
            {"model": {"treshold": 0.5}},
            "unknown key model.treshold",
            "did you mean model.threshold? "
            "known keys under model: bundle, taxonomy, threshold, fallback_bin, threads, top_k",
        ),
        (
            {"servo": {"min_us": 1500, "max_us": 1500, "bins": {}}},
            "servo.min_us (1500) is not below servo.max_us (1500)",
            "set the mechanism's safe range",
        ),
        (
            {"servo": {"home_us": 2100}},
            "servo.home_us = 2100 µs is outside servo.min_us..max_us (1000..2000)",
            RECALIBRATE,
        ),
        (
            {"servo": {"bins": {"kitchen": 999.5}}},
            "servo.bins.kitchen = 999.5 µs is outside servo.min_us..max_us (1000..2000)",
            RECALIBRATE,
        ),
    ],
)
def test_a_refusal_says_where_what_and_how_to_fix_it(data, problem, fix):
    err = refusal(data)
    assert err.problem == f"smartbin.yaml: {problem}"
    key = problem.split(" = ")[0]
    assert err.fix == (f"fix {key} in smartbin.yaml" if fix is FIX else fix)


def test_an_error_without_a_source_names_the_config():
    with pytest.raises(SmartbinError) as err:
        parse_config({"device_id": ""})
    assert err.value.problem.startswith("config: device_id = ''")


def test_an_empty_file_or_section_takes_the_defaults(tmp_path):
    p = tmp_path / "smartbin.yaml"
    p.write_text("# nothing set yet\n")
    assert load_config(p) == Config()
    assert parse_config({"model": None, "servo": None}) == Config()


def test_a_key_of_another_type_is_named_by_its_type():
    @dataclasses.dataclass
    class Section:
        where: Path = opt(Path("/tmp"), "a folder")

    with pytest.raises(SmartbinError) as err:
        build_dataclass(Section, {"where": 3}, "paths", "test.yaml")
    assert err.value.problem == "test.yaml: paths.where = 3 is not valid: expected Path"


def test_shown_cuts_a_long_value_to_80_characters():
    assert shown("a" * 78) == "'" + "a" * 78 + "'"
    assert shown("a" * 79) == "'" + "a" * 78 + "…"
    assert shown(10**5000) == "<int too large to show>"


def test_the_reference_lists_every_section_and_key_in_order():
    text = describe(Config)
    parsed = yaml.safe_load(text)
    assert list(parsed) == [f.name for f in dataclasses.fields(Config)]
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.default_factory):
            assert list(parsed[f.name]) == [g.name for g in dataclasses.fields(f.default_factory)]
    assert text.startswith(
        "# this bin's id, used in MQTT topics\ndevice_id: smartbin-dev\n# the classifier\nmodel:\n"
        "  # model bundle folder"
    )
    assert "\n\n" not in text and not text.endswith("\n")
    assert "recyclable: 1100.0\n    kitchen: 1300.0\n    hazardous: 1700.0\n    other: 1900.0\n" in text


def test_the_reference_writes_non_ascii_defaults_as_they_are():
    @dataclasses.dataclass
    class Labels:
        bins: Dict[str, float] = dataclasses.field(
            default_factory=lambda: {"Küche": 1300.0, "Bio": 1100.0}, metadata={"help": "bin labels"}
        )

    assert describe(Labels) == "# bin labels\nbins:\n  Küche: 1300.0\n  Bio: 1100.0"


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "smartbin.yaml"
    p.write_text("model:\n  threshold: 1.5\n")
    with pytest.raises(SmartbinError) as err:
        load_config(p)
    assert err.value.problem == f"{p}: model.threshold = 1.5 is not valid: expected a number from 0 to 1"
    assert err.value.fix == f"fix model.threshold in {p}"


def test_an_unreadable_config_file_says_how_to_fix_it(tmp_path):
    with pytest.raises(SmartbinError) as err:
        load_config(tmp_path / "missing.yaml")
    assert err.value.fix == "copy config/smartbin.yaml to it, or pass --config with the right path"
    p = tmp_path / "smartbin.yaml"
    p.write_bytes(b"model: {}\n\xff")
    with pytest.raises(SmartbinError) as err:
        load_config(p)
    assert "(byte 10)" in err.value.problem
    assert err.value.fix == "point --config at the YAML file, or write it again from config/smartbin.yaml"
    with pytest.raises(SmartbinError) as err:
        load_config(tmp_path)
    assert err.value.problem == f"config file {tmp_path} cannot be read: Is a directory"
    assert err.value.fix == "check the path and its permissions (the service reads it as user smartbin)"


def test_yaml_errors_say_where_and_how_to_fix_them(tmp_path):
    with pytest.raises(SmartbinError) as err:
        read_yaml("a: &x 1\nb: *x\n", "config file s.yaml")
    assert "alias *x is not allowed in a smartbin file" in err.value.problem and "line 2" in err.value.problem
    assert err.value.fix == "fix the syntax; write repeated values out instead of using &anchors and *aliases"
    with pytest.raises(ValueError) as too_long:
        int("9" * 5000)
    with pytest.raises(SmartbinError) as err:
        read_yaml("speed: " + "9" * 5000, "config file s.yaml")
    expected = str(too_long.value)[:120]
    assert err.value.problem == f"config file s.yaml holds a number too long to read: {expected}"
    assert err.value.fix == "write numbers with at most a few dozen digits"


@pytest.mark.parametrize(
    "dotted, tp",
    [
        ("mqtt.port", int),
        ("device_id", str),
        ("model.bundle", Optional[str]),
        ("mqtt", MqttConfig),
        ("servo.bins", Dict[str, float]),
        ("servo.bins.kitchen", None),
        ("mqtt.nope", None),
        ("nope", None),
        ("device_id.x", None),
    ],
)
def test_key_type_is_the_declared_type_of_a_dotted_key(dotted, tp):
    assert key_type(dotted, Config) == tp


def config_set(path, *items) -> int:
    return main(["config", "--file", str(path), *[arg for item in items for arg in ("--set", item)]])


def test_config_set_changes_only_the_named_keys_and_keeps_the_rest(tmp_path):
    p = tmp_path / "smartbin.yaml"
    p.write_text("# the lobby bin\ndevice_id: lobby-1  # on the wall\nmqtt:\n  host: broker.lan\n  port: 1\n")
    assert config_set(p, "mqtt.port=8883", "model.threshold=0.7", "device_id=42", "mqtt.client_id=007") == 0
    text = p.read_text()
    assert "# the lobby bin" in text and "# on the wall" in text
    cfg = load_config(p)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.client_id) == ("broker.lan", 8883, "007")
    assert (cfg.model.threshold, cfg.device_id) == (0.7, "42")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["smartbin.yaml"]


def test_config_set_fills_an_empty_section_and_empties_a_key(tmp_path):
    p = tmp_path / "smartbin.yaml"
    p.write_text("mqtt:\nmodel:\n  bundle: /opt/bundle\n")
    assert config_set(p, "mqtt.port=8883", "model.bundle=") == 0
    cfg = load_config(p)
    assert (cfg.mqtt.port, cfg.model.bundle) == (8883, None)


def test_set_keys_creates_a_missing_file_with_only_those_keys(tmp_path):
    """A bin's position set in a file without servo.bins keeps the other bins' positions: servo.bins
    written with kitchen alone would leave every other bin without one (its items parked)."""
    p = tmp_path / "new.yaml"
    set_keys(p, {"servo.bins.kitchen": 1350.0, "device_id": "bin-07"})
    bins = {"recyclable": 1100.0, "kitchen": 1350.0, "hazardous": 1700.0, "other": 1900.0}
    assert yaml.safe_load(p.read_text()) == {"servo": {"bins": bins}, "device_id": "bin-07"}


def test_set_keys_refuses_a_bad_value_and_leaves_the_file_as_it_was(tmp_path, capsys):
    p = tmp_path / "smartbin.yaml"
    p.write_text("device_id: a\n")
    with pytest.raises(SmartbinError) as err:
        set_keys(p, {"mqtt.port": 70000})
    assert err.value.problem == f"{p}: mqtt.port = 70000 is not valid: expected 1 to 65535"
    assert err.value.fix == f"fix mqtt.port in {p}"
    assert p.read_text() == "device_id: a\n"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["smartbin.yaml"]
    assert config_set(p, "mqtt.port=abc") == 2
    assert "mqtt.port = 'abc' is not valid: expected an integer" in capsys.readouterr().err


REDO = "fix the file by hand (smartbin config prints the reference), then set the keys again"


@pytest.mark.parametrize(
    "content, dotted, words, fix",
    [
        (b"model: {threshold: 0.5\n", "model.threshold", ["cannot be read as YAML", "line 1"], REDO),
        (b"\xff\xfe binary", "device_id", ["cannot be read as YAML", "utf-8"], REDO),
        (
            b"- a\n- b\n",
            "device_id",
            ["the file must be a mapping of keys, got ['a', 'b']"],
            "write the file as 'key: value' lines",
        ),
        (
            b"servo: 5\n",
            "servo.bins.kitchen",
            [": servo = 5 is not a section of keys, so servo.bins.kitchen cannot be set"],
            "set servo itself, or write it as 'key: value' lines",
        ),
        (
            b"servo:\n  bins: 5\n",
            "servo.bins.kitchen",
            [": servo.bins = 5 is not a section of keys"],
            "set servo.bins itself, or write it as 'key: value' lines",
        ),
    ],
)
def test_set_keys_in_a_file_it_cannot_change_is_a_clear_error(tmp_path, content, dotted, words, fix):
    p = tmp_path / "smartbin.yaml"
    p.write_bytes(content)
    with pytest.raises(SmartbinError) as err:
        set_keys(p, {dotted: 0.5})
    assert str(p) in err.value.problem and err.value.fix == fix
    for word in words:
        assert word in err.value.problem
    assert p.read_bytes() == content


def test_set_keys_where_the_new_file_cannot_be_written_is_a_clear_error(tmp_path):
    p = tmp_path / "smartbin.yaml"
    p.write_text("device_id: a\n")
    (tmp_path / "smartbin.yaml.tmp").mkdir()
    with pytest.raises(SmartbinError) as err:
        set_keys(p, {"device_id": "b"})
    assert "cannot write" in err.value.problem and str(tmp_path) in err.value.fix
    assert p.read_text() == "device_id: a\n"


def test_every_command_takes_the_config_path_as_config():
    parser = argparse.ArgumentParser()
    add_config_option(parser)
    assert parser.parse_args(["--config", "/etc/smartbin.yaml"]).config == "/etc/smartbin.yaml"
    assert parser.parse_args([]).config is None
    assert "--config CONFIG device config YAML (default: built-in defaults)" in " ".join(
        parser.format_help().split()
    )


def test_a_config_is_set_and_read_the_same_under_a_non_utf8_locale(tmp_path):
    """A Pi image left at LANG=C must still read and change a config with non-ASCII text in it."""
    import os
    import subprocess
    import sys

    p = tmp_path / "smartbin.yaml"
    p.write_text("# Küche, 2. Stock\ndevice_id: küche-1\n", encoding="utf-8")
    code = (
        "from pathlib import Path; from edge.config import load_config, set_keys; "
        f"set_keys(Path({str(p)!r}), {{'mqtt.client_id': 'bin-\\u00fc'}}); "
        f"c = load_config({str(p)!r}); print((c.device_id + ' ' + c.mqtt.client_id).encode('utf-8').hex())"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout.strip()).decode("utf-8") == "küche-1 bin-ü"
    assert p.read_text(encoding="utf-8").startswith("# Küche, 2. Stock\n")


MICRO_MAESTRO = "/dev/serial/by-id/usb-Pololu_Corporation_Pololu_Micro_Maestro_6-Servo_Controller_1-if00"


@pytest.mark.parametrize(
    "servo, words",
    [
        ({"protocol": "line", "interlock": "D9"}, ["servo.interlock = 'D9'", "D3, D4, D5, D6, D7, D8"]),
        ({"protocol": "line", "interlock": 4}, ["servo.interlock = 4", "not an input pin"]),
        ({"interlock": "D3"}, ["servo.interlock = 'D3' is not a Maestro channel", "configured as an input"]),
        ({"interlock": 0, "channel": 0}, ["servo's own channel", "another channel"]),
        ({"interlock": 7, "port": MICRO_MAESTRO}, ["has channels 0 to 5", "name one of its channels 0 to 5"]),
        ({"interlock": 30}, ["servo.interlock = 30", "0 to 23"]),
        ({"interlock_stop": "brake"}, ["servo.interlock_stop = 'brake'", "home or hold"]),
    ],
)
def test_an_interlock_input_the_controller_does_not_have_is_refused_at_start_with_the_fix(servo, words):
    with pytest.raises(SmartbinError) as refused:
        parse_config({"servo": servo})
    text = f"{refused.value.problem} {refused.value.fix}"
    assert all(w in text for w in words), text


def test_the_interlock_is_off_by_default_and_takes_a_pin_or_a_channel():
    assert Config().servo.interlock is None and Config().servo.interlock_stop == "home"
    assert parse_config({"servo": {"protocol": "line", "interlock": "d5"}}).servo.interlock == "D5"
    servo = parse_config({"servo": {"interlock": "5", "port": MICRO_MAESTRO, "interlock_stop": "hold"}}).servo
    assert (servo.interlock, servo.interlock_stop) == (5, "hold")
