"""Reading a smartbin YAML file (edge/schema.py): what the loader refuses before any key is judged, and
the fix each YAML error gets. The config file and the taxonomy file are read the same way."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edge.config import load_config
from edge.errors import SmartbinError
from edge.model.taxonomy import load_taxonomy
from edge.schema import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_SCALAR_CHARS,
    UnfitFile,
    char_name,
    escaped,
    read_capped,
    read_yaml,
)

SOURCE = "config file s.yaml"


def yaml_refusal(text: str) -> SmartbinError:
    with pytest.raises(SmartbinError) as err:
        read_yaml(text, SOURCE)
    return err.value


# --- a fix that fits the error --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fix",
    [
        (
            "model:\n\tthreshold: 0.5\n",
            "line 2, column 1 holds a tab: indent with spaces only (YAML takes no tabs there), and put a "
            "space after ':'",
        ),
        ("model:\n  threshold:\t0.5\n", "line 2, column 13 holds a tab"),
        (
            "model:\n  threshold 0.5\n  threads: 2\n",
            "line 3, column 10 has a ':' YAML did not expect: check that the key on the line above ends "
            "with ':'",
        ),
        ("mqtt:\n  host: a: b\n", "quote a value that holds ': ' (host: \"a: b\")"),
        (
            "model:\n    threshold: 0.5\n  threads: 2\n",
            "line 3, column 3 is indented unlike the keys around it: indent each key of a section by the "
            "same number of spaces",
        ),
        ("model:\n  - a\n  b: 1\n", "line 3, column 3 is indented unlike the keys around it"),
        ("model: {threshold: 0.5\n", "close the '{' or '[' opened at line 1, column 8 with '}' or ']'"),
        ("trigger:\n  roi: [0, 0, 1, 1\n", "close the '{' or '[' opened at line 2, column 8"),
        ('device_id: "abc\nmodel: {}\n', "close the quote opened at line 1, column 12"),
        ('device_id: "a\\qb"\n', "line 1, column 15: in double quotes a backslash starts an escape"),
        ("device_id: @home\n", "line 1, column 12 starts a value with a character YAML reserves"),
        ("device_id: !!python/object:os.system x\n", "remove the !tag at line 1, column 12"),
        ("a: 1\n---\nb: 2\n", "a smartbin file is one YAML document: remove the '---' at line 2, column 1"),
        ("device_id: a\n? [b\n", "close the '{' or '[' opened at line 2, column 3"),
    ],
)
def test_a_yaml_error_gets_a_fix_for_what_was_found_where(text, fix):
    err = yaml_refusal(text)
    assert err.problem.startswith(f"{SOURCE} is not valid YAML: ")
    assert fix in err.fix
    assert "alias" not in err.fix and "anchor" not in err.fix


@pytest.mark.parametrize("text", ["a: &x 1\nb: *x\n", "a: *x\n", "a: &x 1\nb: &x 2\n"])
def test_only_an_error_about_anchors_or_aliases_gets_the_anchors_fix(text):
    assert yaml_refusal(text).fix == (
        "fix the syntax; write repeated values out instead of using &anchors and *aliases"
    )


# --- a key written twice ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, lines",
    [
        ("device_id: a\nmodel: {}\ndevice_id: b\n", "device_id", (1, 3)),
        ("servo:\n  bins:\n    kitchen: 1300\n    other: 1900\n    kitchen: 1350\n", "kitchen", (3, 5)),
        ("model: {threads: 2, threads: 3}\n", "threads", (1, 1)),
        ("mqtt:\n  port: 1\nmodel: {}\nmqtt:\n  host: b\n", "mqtt", (1, 4)),
        ("fill:\n  capacity: {1: 5, 0x1: 6}\n", "1", (2, 2)),  # the same key, written two ways
    ],
)
def test_a_key_written_twice_is_refused_with_both_lines(text, key, lines):
    err = yaml_refusal(text)
    first, second = lines
    assert err.problem == (
        f"{SOURCE}: key {key} appears twice, on line {first} and line {second} (YAML would keep only the "
        "last, silently)"
    )
    assert err.fix.startswith(f"write {key} once: delete it on line {first} or line {second}")


def test_a_key_written_twice_in_a_config_or_taxonomy_file_is_refused(tmp_path):
    config = tmp_path / "smartbin.yaml"
    config.write_text("model:\n  threshold: 0.5\nservo: {}\nmodel:\n  threads: 2\n")
    with pytest.raises(SmartbinError, match="key model appears twice, on line 1 and line 4"):
        load_config(config)
    taxonomy = tmp_path / "t.yaml"
    taxonomy.write_text(
        "name: t\ndefault_bin: other\nbins: {other: {}, hazardous: {}}\n"
        "items:\n  battery: hazardous\n  paper: other\n  battery: other\n"
    )
    with pytest.raises(SmartbinError, match="key battery appears twice, on line 5 and line 7"):
        load_taxonomy(taxonomy)


def test_distinct_keys_and_merges_are_taken():
    assert read_yaml("a: 1\nb: {a: 2}\nc: [{a: 3}, {a: 4}]\n", SOURCE) == {
        "a": 1,
        "b": {"a": 2},
        "c": [{"a": 3}, {"a": 4}],
    }
    assert read_yaml("a: {<<: {x: 1}, x: 2}\n", SOURCE) == {"a": {"x": 2}}


# --- nesting and length ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 400 + "]" * 400,  # the 800-byte file
        "{a: " * 400 + "1" + "}" * 400,
        "".join(f"{'  ' * i}a:\n" for i in range(400)),
        "- " * 400 + "x\n",
        "[" * 100_000,  # unclosed too: refused at the depth, not at the end of the file
    ],
)
def test_values_nested_hundreds_deep_are_refused_without_a_traceback(text):
    err = yaml_refusal(text)
    assert err.problem.startswith(f"{SOURCE} nests values more than {MAX_DEPTH} levels deep (line ")
    assert "remove the extra brackets or indentation" in err.fix


def test_nesting_up_to_the_limit_is_read():
    assert read_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH, SOURCE) is not None
    with pytest.raises(SmartbinError, match="more than 32 levels"):
        read_yaml("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), SOURCE)


def test_deep_nesting_in_a_config_or_taxonomy_file_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 400 + "]" * 400 + "\n")
    assert path.stat().st_size == 801
    with pytest.raises(SmartbinError, match=f"config file {path} nests values more than 32 levels deep"):
        load_config(path)
    with pytest.raises(SmartbinError, match=f"taxonomy file {path} nests values more than 32 levels deep"):
        load_taxonomy(path)


def test_an_absurdly_long_value_is_refused_with_its_line():
    err = yaml_refusal("device_id: a\nservo:\n  speed: " + "9" * 150_000 + "\n")
    assert err.problem == (
        f"{SOURCE} holds a value of 150000 characters (at most {MAX_SCALAR_CHARS}) at line 3, column 10"
    )
    assert read_yaml("client_id: " + "c" * 65535, SOURCE) == {"client_id": "c" * 65535}


# --- the file itself ----------------------------------------------------------------------------


def test_a_file_past_the_size_cap_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "smartbin.yaml"
    path.write_bytes(b"servo:\n  speed: " + b"9" * MAX_FILE_BYTES + b"\n")
    started = time.monotonic()
    with pytest.raises(SmartbinError) as err:
        load_config(path)
    assert time.monotonic() - started < 1
    assert err.value.problem == (
        f"config file {path} is {MAX_FILE_BYTES + 17} bytes, more than the 1 MiB smartbin reads"
    )
    assert err.value.fix == "point it at the config file itself, a regular file of at most 1 MiB"
    path.write_bytes(b"# " + b"x" * (MAX_FILE_BYTES - 4) + b"\n")
    assert path.stat().st_size == MAX_FILE_BYTES - 1 and load_config(path) is not None


@pytest.mark.parametrize("load, what", [(load_config, "config file"), (load_taxonomy, "taxonomy file")])
def test_a_device_is_refused_without_reading_it(load, what):
    with pytest.raises(SmartbinError) as err:
        load("/dev/zero")
    assert err.value.problem == (
        f"{what} /dev/zero is a character device, not a regular file (smartbin reads only regular files "
        "of at most 1 MiB)"
    )


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    pipe = tmp_path / "smartbin.yaml"
    os.mkfifo(pipe)
    said: list = []

    def load() -> None:
        try:
            load_config(pipe)
        except SmartbinError as exc:
            said.append(str(exc))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    assert said and f"config file {pipe} is a named pipe, not a regular file" in said[0]


def test_read_capped_reads_a_regular_file_within_the_cap(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    assert read_capped(path, 5) == b"12345"
    with pytest.raises(UnfitFile, match="is 5 bytes, more than the 4 bytes smartbin reads"):
        read_capped(path, 4)
    with pytest.raises(IsADirectoryError):
        read_capped(tmp_path, 5)
    with pytest.raises(FileNotFoundError):
        read_capped(tmp_path / "none", 5)


# --- text as messages show it ---------------------------------------------------------------------


def test_text_that_is_not_printable_ascii_is_shown_escaped():
    assert escaped("servo") == "servo"
    assert escaped("\u0455ervo") == "\\u0455ervo"
    assert escaped("a\nb\x00\u202e\U0001f5d1é") == "a\\nb\\x00\\u202e\\U0001f5d1\\xe9"
    assert char_name("\u202e") == "U+202E RIGHT-TO-LEFT OVERRIDE"
    assert char_name("\x00") == "U+0000 NUL" and char_name("\x07") == "U+0007 a control character"


def test_the_config_file_is_still_read_when_it_is_fine(tmp_path):
    path = Path(tmp_path / "smartbin.yaml")
    path.write_text("# Küche\ndevice_id: küche-1\nmodel: {threshold: 0.7}\n", encoding="utf-8")
    config = load_config(path)
    assert (config.device_id, config.model.threshold) == ("küche-1", 0.7)
