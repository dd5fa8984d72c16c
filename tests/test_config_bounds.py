"""Every numeric bound the schema names for a key is enforced, at the bound's edge.

The bounds are read from the schema itself (edge/config.py): each key's ``expect`` text (what a
refusal says it expected: ``1 to 64``, ``more than 0, at most 60``, ``at most 4095 bytes``) and its
``help`` text (the description ``smartbin config`` prints: ``(0-255)``, ``MQTT's limit: 65535``). For
each bound, a config file with the key just outside it (the next integer, the next float, one more
character) is loaded with ``load_config`` and must be refused with a message that names the key. A new
key, or a new bound in a description, is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import yaml

from edge.config import Config, load_config
from edge.errors import SmartbinError

NUMBER = r"(-?\d+(?:\.\d+)?)(?![\w/])"  # not the 1 of "1/idle_fps", a ratio
LENGTH_UNITS = ("bytes", "characters", "letters")


class Bound(NamedTuple):
    value: float
    upper: bool  # an upper bound (at most, less than) or a lower one
    inclusive: bool  # the bound itself is allowed
    length: bool  # of a string's length, not of a number
    text: str  # the words it was read from
    each_name: bool = False  # of each name in a path ("each name in it at most 255 bytes")


def leaves(cls: type = Config, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaves(hints[f.name], prefix + (f.name,))
        else:
            yield prefix + (f.name,), hints[f.name], f


def of_each_name(text: str, start: int) -> bool:
    return text[:start].rstrip().endswith(("each name", "each name in it"))


def is_length(text: str, end: int) -> bool:
    """Whether the number ending at ``end`` counts characters or bytes (``at most 255 bytes``)."""
    return text[end:].lstrip().startswith(LENGTH_UNITS)


def bounds_in(text: str) -> list[Bound]:
    """The bounds a description names: ranges (``1 to 64``, ``(0-255)``) and one-sided ones."""
    found: list[Bound] = []
    ranges = [
        re.finditer(rf"(?<![\w.]){NUMBER} to {NUMBER}", text),
        re.finditer(rf"\({NUMBER}-{NUMBER}\)", text),
    ]
    for match in (m for matches in ranges for m in matches):
        length = is_length(text, match.end())
        found.append(Bound(float(match.group(1)), False, True, length, match.group(0)))
        found.append(Bound(float(match.group(2)), True, True, length, match.group(0)))
    one_sided = {
        "more than": (False, False),
        "at least": (False, True),
        "at most": (True, True),
        "less than": (True, False),
        "over": (True, True),  # "no label over 63 characters": 63 is allowed
        "limit:": (True, True),  # "(MQTT's limit: 65535)"
    }
    for words, (upper, inclusive) in one_sided.items():
        for match in re.finditer(rf"\b{re.escape(words)} {NUMBER}", text):
            length, each_name = is_length(text, match.end()), of_each_name(text, match.start())
            found.append(Bound(float(match.group(1)), upper, inclusive, length, match.group(0), each_name))
    return found


def key_bounds(f: Any) -> list[Bound]:
    return bounds_in(f.metadata.get("expect", "")) + bounds_in(f.metadata.get("help", ""))


def kinds(tp: Any) -> set[Any]:
    """The scalar types a key takes (Optional and Union unwrapped; a mapping's values; a list's items)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return {k for a in args if a is not type(None) for k in kinds(a)}
    if origin is dict:
        return kinds(args[1])
    if origin is list:
        return set()  # trigger.roi: its four numbers are each bounded by the others (tests/test_config.py)
    return {tp}


def just_outside(bound: Bound, tp: Any) -> list[Any]:
    """The values just past ``bound`` a key of type ``tp`` can be given."""
    if bound.length:
        if str not in kinds(tp):
            return []
        n = int(bound.value) + (1 if bound.upper else -1) if bound.inclusive else int(bound.value)
        if n < 0:
            return []
        # plain characters, and for a limit on the whole a path of short names (past it by its length alone)
        return ["x" * n] if bound.each_name else list(dict.fromkeys(["x" * n, ("x/" * n)[:n]]))
    values = []
    step = 1 if bound.upper else -1
    if int in kinds(tp) and float(bound.value).is_integer():
        values.append(int(bound.value) + step if bound.inclusive else int(bound.value))
    if float in kinds(tp):
        edge = math.nextafter(bound.value, math.inf if bound.upper else -math.inf)
        values.append(edge if bound.inclusive else float(bound.value))
    return values


def placed(path: tuple[str, ...], tp: Any, f: Any, value: Any) -> dict:
    """A config with ``value`` at the key (a mapping-valued key: at its first entry, the others kept)."""
    if typing.get_origin(tp) is dict:
        default = f.default_factory()
        value = {**default, next(iter(default)): value}
    data: dict = {}
    node = data
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value
    return data


KEYS = list(leaves())
CASES = [
    pytest.param(path, value, bound.text, id=f"{'.'.join(path)}={bound.text}:{str(value)[:12]}")
    for path, tp, f in KEYS
    for bound in key_bounds(f)
    for value in just_outside(bound, tp)
    for value in [placed(path, tp, f, value)]
]


@pytest.mark.parametrize("path, data, bound", CASES)
def test_a_value_just_outside_a_documented_bound_is_refused_naming_the_key(tmp_path, path, data, bound):
    text = yaml.safe_dump(data, allow_unicode=True)
    assert yaml.safe_load(text) == data  # the file says what the case means (5e-324 stays a number)
    config = tmp_path / "smartbin.yaml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(SmartbinError) as refused:
        load_config(config)
    assert ".".join(path) in refused.value.problem, f"{bound}: {refused.value}"


def test_every_checked_number_has_a_documented_bound_this_test_reads():
    """A numeric key with a check names its bounds in words this file understands: else the test
    above would pass without testing it."""
    unread = [
        ".".join(path)
        for path, tp, f in KEYS
        if kinds(tp) & {int, float}
        and (f.metadata.get("check") or typing.get_origin(tp) is dict)
        and not any(not b.length for b in key_bounds(f))
    ]
    assert unread == []


def test_the_bounds_are_read_as_written():
    assert bounds_in("more than 0, at most 60") == [
        Bound(0.0, False, False, False, "more than 0"),
        Bound(60.0, True, True, False, "at most 60"),
    ]
    assert [(b.value, b.upper, b.length) for b in bounds_in("a file path, at most 4095 bytes")] == [
        (4095.0, True, True)
    ]
    assert [b.text for b in bounds_in("pin D3 to D8, channel 0 to 23; (0-255); limit: 5")] == [
        "0 to 23",
        "0 to 23",
        "(0-255)",
        "(0-255)",
        "limit: 5",
    ]
    assert bounds_in("an item that lands is seen at most 1/idle_fps s later; 320x240") == []
    assert just_outside(Bound(1.0, False, True, False, "1 to 64"), int) == [0]
    assert just_outside(Bound(0.0, False, False, False, "more than 0"), float) == [0.0]
    assert just_outside(Bound(64.0, True, True, True, "1 to 64 letters"), str) == ["x" * 65, ("x/" * 65)[:65]]


def test_cases_cover_every_section():
    assert {case.values[0][0] for case in CASES} >= {f.name for f in dataclasses.fields(Config)}


@pytest.fixture(autouse=True)
def _no_state_dir(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
