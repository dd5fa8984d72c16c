"""The schema engine behind every smartbin YAML file (the device config, the training settings).

A section is a dataclass whose fields are made with :func:`opt`: a default, a
description (``help``) and a check with the words that say what it expects.
:func:`build_dataclass` validates a parsed mapping against it and names the
key path, the bad value and the fix on error; :func:`describe` prints a
section as commented YAML. Nothing here knows what a bin is.
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from edge.errors import SmartbinError


def opt(default: Any, help: str, check: Callable[[Any], bool] | None = None, expect: str = ""):
    return field(default=default, metadata={"help": help, "check": check, "expect": expect})


def unit_interval(x: float) -> bool:
    return 0.0 <= x <= 1.0


# What Linux takes as a file name: a longer one, a NUL or a character the file system encoding cannot
# write is an OSError or ValueError from the first open() or stat(), past validation.
NAME_MAX, PATH_MAX = 255, 4095


def file_path(s: str) -> bool:
    try:
        raw = os.fsencode(s)
    except UnicodeEncodeError:  # a lone surrogate, from "\ud800" in the YAML
        return False
    return (
        b"\0" not in raw and len(raw) <= PATH_MAX and all(len(name) <= NAME_MAX for name in raw.split(b"/"))
    )


PATH_EXPECT = f"a file path without NUL, at most {PATH_MAX} bytes, each name in it at most {NAME_MAX} bytes"


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message shows it: its repr, cut short (a 70 000-character string is not
    printed whole, and an integer past Python's 4300-digit limit has no repr at all)."""
    try:
        text = repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):  # Optional: empty = the default
            return None
        for alternative in args[:-1]:
            try:
                return _coerce(value, alternative, key, source)
            except SmartbinError:
                pass
        tp = args[-1]
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key, source)
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise SmartbinError(
                f"{source}: {key} = {shown(value)} is not valid: expected a list", f"fix {key} in {source}"
            )
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            raise SmartbinError(
                f"{source}: {key} = {shown(value)} is not valid: expected a mapping", f"fix {key} in {source}"
            )
        key_tp, value_tp = typing.get_args(tp)
        return {
            _coerce(k, key_tp, key, source): _coerce(v, value_tp, f"{key}.{k}", source)
            for k, v in value.items()
        }
    ok = (
        isinstance(value, bool)
        if tp is bool
        else isinstance(value, tp) and not isinstance(value, bool)
        if tp is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is float
        else isinstance(value, tp)
    )
    if not ok:
        raise SmartbinError(
            f"{source}: {key} = {shown(value)} is not valid: expected {_type_name(tp)}",
            f"fix {key} in {source}",
        )
    if tp is float:
        try:
            number = float(value)
        except OverflowError:  # an integer past 1.8e308
            number = math.inf
        if not math.isfinite(number):
            raise SmartbinError(
                f"{source}: {key} = {shown(value)} is not valid: expected a finite number",
                f"fix {key} in {source}",
            )
        return number
    return value


def build_dataclass(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Validate a mapping against a dataclass of ``opt`` fields, naming the key path on error."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SmartbinError(
            f"{source}: {prefix or 'the file'} must be a mapping of keys, got {shown(data)}",
            f"write {prefix or 'the file'} as 'key: value' lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted({k if isinstance(k, str) else shown(k) for k in data} - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise SmartbinError(
            f"{source}: unknown key {where}{unknown[0][:80]}",
            f"known keys{' under ' + prefix if prefix else ''}: {', '.join(fields)}",
        )
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        value = _coerce(data[name], hints[name], key, source)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check(value):
            raise SmartbinError(
                f"{source}: {key} = {shown(value)} is not valid: expected {f.metadata['expect']}",
                f"fix {key} in {source}",
            )
        values[name] = value
    try:
        return cls(**values)
    except SmartbinError as exc:  # a check across keys, in __post_init__
        raise SmartbinError(f"{source}: {exc.problem}", exc.fix) from None


class NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a few hundred bytes of nested aliases expand to gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a smartbin file", event.start_mark
            )
        return super().compose_node(parent, index)


def read_yaml(text: str, source: str) -> Any:
    """Parse a smartbin YAML file (config, taxonomy), refusing aliases; an error names ``source``."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)
    except ValueError as exc:  # an integer of more digits than Python will convert (sys.int_info)
        raise SmartbinError(
            f"{source} holds a number too long to read: {str(exc)[:120]}",
            "write numbers with at most a few dozen digits",
        ) from None
    except yaml.YAMLError as exc:
        raise SmartbinError(
            f"{source} is not valid YAML: {exc}",
            "fix the syntax; write repeated values out instead of using &anchors and *aliases",
        ) from None


def read_yaml_file(
    path: Path,
    what: str,
    missing_fix: str,
    damaged_fix: str,
    unreadable_fix: str = "check the path and its permissions",
) -> Any:
    """Read and parse a smartbin YAML file; each way it can fail names ``what``, the file and a fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SmartbinError(f"{what} {path} does not exist", missing_fix) from None
    except UnicodeDecodeError as exc:
        raise SmartbinError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}): it is binary or damaged", damaged_fix
        ) from None
    except OSError as exc:
        raise SmartbinError(f"{what} {path} cannot be read: {exc.strerror}", unreadable_fix) from None
    return read_yaml(text, f"{what} {path}")


def describe(cls: type, indent: str = "") -> str:
    """A section's reference as commented YAML with every default (``smartbin config``)."""
    lines = []
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(default):
            lines += [f"{indent}# {help_text}", f"{indent}{f.name}:", describe(type(default), indent + "  ")]
            continue
        lines.append(f"{indent}# {help_text}")
        dumped = yaml.safe_dump({f.name: default}, allow_unicode=True, sort_keys=False).rstrip()
        lines.append(textwrap.indent(dumped, indent))
    return "\n".join(lines)


def key_type(dotted: str, cls: type) -> Any:
    """The declared type of a dotted key (``mqtt.port`` -> int), or None if there is no such key."""
    head, _, rest = dotted.partition(".")
    hints = typing.get_type_hints(cls)
    if head not in hints:
        return None
    tp = hints[head]
    if rest:
        return key_type(rest, tp) if dataclasses.is_dataclass(tp) else None
    return tp
