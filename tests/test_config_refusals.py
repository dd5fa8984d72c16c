"""What the device config refuses at load, and how it says so: every problem at once, each with its key
path and fix; the closest key for a typo; ids, topics and regions that would misbehave only at run time;
the bins of the taxonomy the bin sorts by; password and TLS files that are devices."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from edge.config import Config, load_config, parse_config
from edge.errors import SmartbinError
from edge.paths import DEFAULT_BUNDLE, TAXONOMIES
from edge.schema import ConfigErrors


def refused(data, source: str = "smartbin.yaml") -> SmartbinError:
    with pytest.raises(SmartbinError) as err:
        parse_config(data, source=source)
    return err.value


def load_refused(path: Path) -> SmartbinError:
    with pytest.raises(SmartbinError) as err:
        load_config(path)
    return err.value


def write(tmp_path: Path, data, name: str = "smartbin.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "utf-8")
    return path


# --- every problem at once ------------------------------------------------------------------------


def test_every_bad_value_of_a_file_is_named_at_once_each_with_its_key_and_fix():
    err = refused(
        {
            "model": {"threshold": 1.5, "treads": 2},
            "servo": {"bins": {"kitchen": "low", "other": 1900}},
            "mqtt": {"port": 0},
            "trigger": {"roi": ["a", 0, 1, "b"]},
            "colour": "red",
        }
    )
    assert isinstance(err, ConfigErrors)
    expected = [
        ("unknown key colour", "known keys: device_id, model, servo"),
        ("unknown key model.treads", "did you mean model.threads?"),
        (
            "model.threshold = 1.5 is not valid: expected a number from 0 to 1",
            "fix model.threshold in smartbin.yaml",
        ),
        (
            "servo.bins.kitchen = 'low' is not valid: expected a number",
            "fix servo.bins.kitchen in smartbin.yaml",
        ),
        ("mqtt.port = 0 is not valid: expected 1 to 65535", "fix mqtt.port in smartbin.yaml"),
        ("trigger.roi[0] = 'a' is not valid: expected a number", "fix trigger.roi[0] in smartbin.yaml"),
        ("trigger.roi[3] = 'b' is not valid: expected a number", "fix trigger.roi[3] in smartbin.yaml"),
    ]
    said = [(e.problem, e.fix) for e in err.errors]
    assert [(p, f[: len(fix)]) for (p, f), (_, fix) in zip(said, expected)] == [
        (f"smartbin.yaml: {problem}", fix) for problem, fix in expected
    ]
    lines = err.problem.splitlines()
    assert lines[0] == "smartbin.yaml: 7 problems"
    for (problem, fix), (said, said_fix) in zip(expected, zip(lines[1::2], lines[2::2])):
        assert said == f"  - {problem}" and said_fix.startswith(f"    fix: {fix}")
    assert err.fix == "fix each problem listed above in smartbin.yaml"


def test_every_servo_position_outside_the_range_is_named():
    err = refused({"servo": {"home_us": 2100, "bins": {"kitchen": 999, "other": 2001, "hazardous": 1500}}})
    assert [e.problem.split(" = ")[0] for e in err.errors] == [
        "smartbin.yaml: servo.home_us",
        "smartbin.yaml: servo.bins.kitchen",
        "smartbin.yaml: servo.bins.other",
    ]


def test_every_bad_capacity_is_named():
    err = refused({"fill": {"capacity": {"other": 0, "kitchen": -5, "recyclable": 5}}})
    assert [e.problem.split(" = ")[0] for e in err.errors] == [
        "smartbin.yaml: fill.capacity.other",
        "smartbin.yaml: fill.capacity.kitchen",
    ]


def test_a_file_with_bad_keys_and_a_bin_the_servo_lacks_names_both(tmp_path):
    err = load_refused(write(tmp_path, {"model": {"threads": 0}, "servo": {"bins": {"kitchen": 1300}}}))
    keys = [e.problem.split(": ", 1)[1].split(" ")[0] for e in err.errors]
    assert keys == ["model.threads", "servo.bins.recyclable", "servo.bins.hazardous", "servo.bins.other"]


# --- typos and keys that look like others ------------------------------------------------------------


@pytest.mark.parametrize(
    "data, guess",
    [
        ({"modle": {}}, "did you mean model? known keys: device_id, model,"),
        ({"devise_id": "a"}, "did you mean device_id? known keys:"),
        ({"mqtt": {"prot": 1}}, "did you mean mqtt.port? known keys under mqtt:"),
        ({"servo": {"hom_us": 1500}}, "did you mean servo.home_us? known keys under servo:"),
        ({"colour": "red"}, "known keys: device_id,"),  # nothing close: no guess
    ],
)
def test_a_typo_gets_the_closest_known_key(data, guess):
    assert refused(data).fix.startswith(guess)


@pytest.mark.parametrize(
    "key, escaped, kind",
    [
        ("\u0455ervo", "\\u0455ervo", "non-ASCII letters: U+0455 CYRILLIC SMALL LETTER DZE"),
        ("m\u043ede\u04cf", "m\\u043ede\\u04cf", "non-ASCII letters: U+043E CYRILLIC SMALL LETTER O, U+04CF"),
        ("ser\u200bvo", "ser\\u200bvo", "non-ASCII or invisible characters: U+200B ZERO WIDTH SPACE"),
    ],
)
def test_a_key_that_looks_like_a_known_one_is_shown_escaped(key, escaped, kind):
    err = refused({key: {}})
    assert err.problem.startswith(f"smartbin.yaml: unknown key {escaped} (it contains {kind}")
    assert key not in err.problem and key not in err.fix
    assert "type the key again in plain ASCII" in err.fix and "did you mean" in err.fix


# --- device_id, topics, the trigger area -------------------------------------------------------------


@pytest.mark.parametrize(
    "device_id, shown",
    [
        ("a" * 65, "it is 65 characters long"),
        ("a" * 65530, "it is 65530 characters long"),
        ("", "it is 0 characters long"),
        ("bin\n7", "character 4 is U+000A LINE FEED, written \\n"),
        ("bin\r7", "character 4 is U+000D CARRIAGE RETURN, written \\r"),
        ("bin\x1b[31m", "character 4 is U+001B ESCAPE, written \\x1b"),
        ("bin\x00", "character 4 is U+0000 NUL, written \\x00"),
        ("bin\u202e7-nib", "character 4 is U+202E RIGHT-TO-LEFT OVERRIDE, written \\u202e"),
        ("\u202abin", "character 1 is U+202A LEFT-TO-RIGHT EMBEDDING, written \\u202a"),
        ("bin\u2066x", "character 4 is U+2066 LEFT-TO-RIGHT ISOLATE, written \\u2066"),
        ("bin\u2069", "character 4 is U+2069 POP DIRECTIONAL ISOLATE, written \\u2069"),
        ("bin\u200e", "character 4 is U+200E LEFT-TO-RIGHT MARK, written \\u200e"),
        ("bin\u200f", "character 4 is U+200F RIGHT-TO-LEFT MARK, written \\u200f"),
        ("bin 7", "character 4 is U+0020 SPACE, written  "),
        ("bin/7", "character 4 is U+002F SOLIDUS"),
        ("bin+", "character 4 is U+002B PLUS SIGN"),
        ("bin#", "character 4 is U+0023 NUMBER SIGN"),
        ("bin\ud800", "character 4 is U+D800 a lone surrogate, written \\ud800"),
    ],
)
def test_a_device_id_that_would_break_topics_logs_or_the_fleet_page_is_refused(device_id, shown):
    err = refused({"device_id": device_id})
    assert err.problem.startswith("smartbin.yaml: device_id = ")
    assert "expected 1 to 64 letters, digits, '-', '_' or '.'" in err.problem and shown in err.problem
    assert not any(c in err.problem for c in "\n\r\x1b\x00\u202e\u202a\u2066\u2069\u200e\u200f")


@pytest.mark.parametrize("device_id", ["a" * 64, "bin-07", "küche-1", "bin_7.b", "42", "Lobby.2"])
def test_a_device_id_of_letters_digits_and_dashes_is_taken(device_id):
    assert parse_config({"device_id": device_id}).device_id == device_id


@pytest.mark.parametrize("key", ["topic_prefix", "ha_prefix"])
@pytest.mark.parametrize(
    "prefix, why",
    [
        ("$SYS", "the broker's own ($SYS)"),
        ("$SYS/bins", "the broker's own ($SYS)"),
        ("$share/bins", "the broker's own ($SYS)"),
        ("bins/+", "it holds U+002B PLUS SIGN, a wildcard"),
        ("#", "it holds U+0023 NUMBER SIGN, a wildcard"),
        ("a\0b", "it holds U+0000 NUL"),
        ("a//b", "it has an empty level"),
    ],
)
def test_a_topic_prefix_the_broker_would_drop_or_misread_is_refused(key, prefix, why):
    err = refused({"mqtt": {key: prefix}})
    assert err.problem.startswith(f"smartbin.yaml: mqtt.{key} = ") and why in err.problem


@pytest.mark.parametrize("prefix", ["bins/lobby", "a$b", "Building-X/bins"])
def test_a_topic_prefix_with_a_dollar_inside_is_taken(prefix):
    assert parse_config({"mqtt": {"topic_prefix": prefix}}).mqtt.topic_prefix == prefix


@pytest.mark.parametrize(
    "roi",
    [
        [0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 1e-10, 1.0],
        [0.3, 0.3, 0.5, 1e-10],
        [0.5, 0.5, 0.049, 0.5],
        [0.999, 0.0, 0.001, 1.0],
    ],
)
def test_a_trigger_area_too_thin_to_watch_is_refused(roi):
    err = refused({"trigger": {"roi": roi}})
    assert err.problem.startswith("smartbin.yaml: trigger.roi = ") and "too thin to watch" in err.problem
    assert "width and height at least 0.05" in err.problem


@pytest.mark.parametrize("roi", [[0.95, 0.95, 0.05, 0.05], [0.0, 0.0, 0.05, 1.0], [0.25, 0.5, 0.75, 0.5]])
def test_a_trigger_area_of_a_twentieth_of_the_frame_or_more_is_taken(roi):
    assert parse_config({"trigger": {"roi": roi}}).trigger.roi == roi


# --- the bins of the taxonomy the bin sorts by -------------------------------------------------------

GLASS = {
    "name": "with-glass",
    "default_bin": "other",
    "bins": {"recyclable": {}, "glass": {}, "other": {}},
    "items": {"paper": "recyclable", "glass-bottle": "glass"},
}
POSITIONS = {"recyclable": 1100, "glass": 1300, "other": 1900}


@pytest.fixture
def glass(tmp_path) -> str:
    return str(write(tmp_path, GLASS, "glass.yaml"))


def test_a_bin_of_the_taxonomy_without_a_servo_position_is_refused(tmp_path, glass):
    err = load_refused(write(tmp_path, {"model": {"taxonomy": glass}}))
    assert err.problem == (
        f"{tmp_path}/smartbin.yaml: servo.bins.glass is missing: taxonomy 'with-glass' ({glass}) has the bin "
        "'glass', and an item for it would be left on the tray (parked), never tipped"
    )
    assert (
        err.fix
        == "calibrate it (smartbin servo calibrate --bin glass), or write servo.bins.glass: <pulse µs>"
    )
    config = load_config(write(tmp_path, {"model": {"taxonomy": glass}, "servo": {"bins": POSITIONS}}))
    assert config.servo.bins == POSITIONS


def test_a_misspelt_servo_bin_is_named_with_the_bin_it_should_be(tmp_path, glass):
    bins = {"recyclable": 1100, "glas": 1300, "other": 1900}
    err = load_refused(write(tmp_path, {"model": {"taxonomy": glass}, "servo": {"bins": bins}}))
    assert "servo.bins.glass is missing" in err.problem
    assert err.fix.startswith("servo.bins.glas is no bin of it: did you mean glass? calibrate it")


def test_servo_positions_only_for_some_bins_of_the_bundles_taxonomy_are_refused(tmp_path):
    """No model.taxonomy: the bins are those of the taxonomy in the bundle's model.json."""
    err = load_refused(write(tmp_path, {"servo": {"bins": {"kitchen": 1300, "other": 1900}}}))
    assert [e.problem.split(": ", 1)[1].split(" is missing")[0] for e in err.errors] == [
        "servo.bins.recyclable",
        "servo.bins.hazardous",
    ]
    assert f"taxonomy 'cn-4bin' (of model bundle {DEFAULT_BUNDLE})" in err.errors[0].problem


def test_the_bins_of_another_bundle_are_those_of_its_own_taxonomy(tmp_path, glass):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    meta = json.loads((DEFAULT_BUNDLE / "model.json").read_text("utf-8"))
    (bundle / "model.json").write_text(json.dumps({**meta, "taxonomy": GLASS}), "utf-8")
    err = load_refused(write(tmp_path, {"model": {"bundle": str(bundle)}}))
    assert err.problem.endswith(
        f"servo.bins.glass is missing: taxonomy 'with-glass' (of model bundle {bundle}) has the bin 'glass', "
        "and an item for it would be left on the tray (parked), never tipped"
    )
    # a model.json that cannot be read cheaply is not judged here: the daemon refuses the bundle at start
    for damage in (b"{not json", b"\xff", json.dumps({"taxonomy": {"bins": 5}}).encode()):
        (bundle / "model.json").write_bytes(damage)
        assert load_config(write(tmp_path, {"model": {"bundle": str(bundle)}})).model.bundle == str(bundle)
    assert load_config(write(tmp_path, {"model": {"bundle": "/nowhere"}})).model.bundle == "/nowhere"


def test_a_fallback_bin_the_taxonomy_lacks_is_refused(tmp_path, glass):
    err = load_refused(write(tmp_path, {"model": {"fallback_bin": "recycle"}}))
    assert err.problem.endswith(
        "model.fallback_bin = 'recycle' is not a bin of taxonomy 'cn-4bin' "
        f"(of model bundle {DEFAULT_BUNDLE}) (recyclable, kitchen, hazardous, other): every uncertain item "
        "would be left on the tray (parked)"
    )
    assert err.fix == (
        "did you mean recyclable? name one of recyclable, kitchen, hazardous, other, or leave it empty for "
        "the taxonomy's default_bin, other"
    )
    data = {"model": {"taxonomy": glass, "fallback_bin": "kitchen"}, "servo": {"bins": POSITIONS}}
    assert (
        "model.fallback_bin = 'kitchen' is not a bin of taxonomy 'with-glass'"
        in load_refused(write(tmp_path, data)).problem
    )
    data["model"]["fallback_bin"] = "glass"
    assert load_config(write(tmp_path, data)).model.fallback_bin == "glass"


def test_a_capacity_for_a_bin_the_taxonomy_lacks_is_refused(tmp_path, glass):
    data = {
        "model": {"taxonomy": glass},
        "servo": {"bins": POSITIONS},
        "fill": {"capacity": {"recycling": 100, "glass": 50, "kitchen": 10}},
    }
    err = load_refused(write(tmp_path, data))
    assert [e.problem.split(": ", 1)[1] for e in err.errors] == [
        f"fill.capacity.recycling: taxonomy 'with-glass' ({glass}) has no bin 'recycling' (recyclable, "
        "glass, other), so its fill would never be tracked",
        f"fill.capacity.kitchen: taxonomy 'with-glass' ({glass}) has no bin 'kitchen' (recyclable, glass, "
        "other), so its fill would never be tracked",
    ]
    assert err.errors[0].fix == (
        "did you mean recyclable? list capacities under the taxonomy's bins: recyclable, glass, other"
    )
    # left at its default, fill.capacity names bins this taxonomy lacks (kitchen, hazardous): not refused
    del data["fill"]
    assert load_config(write(tmp_path, data)).fill.capacity == Config().fill.capacity


def test_a_taxonomy_file_that_cannot_be_read_is_named_by_its_key(tmp_path):
    err = load_refused(write(tmp_path, {"model": {"taxonomy": str(tmp_path / "none.yaml")}}))
    assert err.problem == (
        f"{tmp_path}/smartbin.yaml: model.taxonomy = '{tmp_path}/none.yaml': taxonomy file "
        f"{tmp_path}/none.yaml does not exist"
    )


def test_the_shipped_config_and_taxonomy_agree(tmp_path):
    shipped = str(TAXONOMIES / "cn-4bin.yaml")
    assert load_config(write(tmp_path, {"model": {"taxonomy": shipped}})).model.taxonomy == shipped


# --- the password and TLS files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, cap",
    [("password_file", "64 KiB"), ("ca_file", "1 MiB"), ("cert_file", "1 MiB"), ("key_file", "1 MiB")],
)
def test_a_password_or_tls_file_that_is_a_device_is_refused_with_the_cap(tmp_path, key, cap):
    err = load_refused(write(tmp_path, {"mqtt": {key: "/dev/zero"}}))
    assert err.problem == (
        f"{tmp_path}/smartbin.yaml: mqtt.{key} = '/dev/zero' is a character device, not a regular file "
        f"(smartbin reads only regular files of at most {cap})"
    )
    assert err.fix.startswith(f"point mqtt.{key} at the ")


def test_a_password_file_that_is_a_pipe_or_too_large_is_refused_and_one_not_there_is_left_to_the_broker(
    tmp_path,
):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    done: list = []
    thread = threading.Thread(
        target=lambda: done.append(load_refused(write(tmp_path, {"mqtt": {"password_file": str(pipe)}}))),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    assert done and "is a named pipe, not a regular file" in done[0].problem
    big = tmp_path / "password"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    err = load_refused(write(tmp_path, {"mqtt": {"password_file": str(big)}}))
    assert "is 65537 bytes, more than the 64 KiB smartbin reads" in err.problem
    big.write_bytes(b"secret\n")
    assert load_config(write(tmp_path, {"mqtt": {"password_file": str(big)}})).mqtt.password_file == str(big)
    absent = str(tmp_path / "not-yet")
    assert load_config(write(tmp_path, {"mqtt": {"password_file": absent}})).mqtt.password_file == absent


def test_config_set_refuses_a_key_that_would_leave_a_bin_without_a_position(tmp_path, glass):
    from edge.config import set_keys

    path = write(tmp_path, {"servo": {"bins": POSITIONS}})
    before = path.read_text()
    with pytest.raises(SmartbinError) as err:
        set_keys(path, {"model.taxonomy": str(TAXONOMIES / "cn-4bin.yaml")})
    assert "servo.bins.kitchen is missing" in str(err.value)
    assert path.read_text() == before
