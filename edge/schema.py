"""The schema engine behind every smartbin YAML file (the device config, the training settings).

A section is a dataclass whose fields are made with :func:`opt`: a default, a
description (``help``) and a check with the words that say what it expects.
:func:`build_dataclass` validates a parsed mapping against it and names the
key path, the bad value and the fix on error, every bad key of the file at
once (:class:`ConfigErrors`); :func:`describe` prints a section as commented
YAML. Nothing here knows what a bin is.

:func:`read_yaml_file` reads only a regular file of at most :data:`MAX_FILE_BYTES`, and
:class:`SmartbinLoader` refuses what PyYAML would otherwise take silently or choke on:
aliases, a key written twice, nesting past :data:`MAX_DEPTH` and scalars past
:data:`MAX_SCALAR_CHARS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import stat
import textwrap
import typing
import unicodedata
from dataclasses import field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from edge.errors import SmartbinError


def opt(
    default: Any,
    help: str,
    check: Callable[[Any], bool] | None = None,
    expect: str = "",
    explain: Callable[[Any], str] | None = None,
):
    """A key: its default, description, check and what the check expects. ``explain``, if given,
    says what exactly is wrong with a value its check refused (the offending character, the length)."""
    metadata: dict[str, Any] = {"help": help, "check": check, "expect": expect}
    if explain is not None:
        metadata["explain"] = explain
    return field(default=default, metadata=metadata)


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


# --- text as a message shows it ---------------------------------------------------------------

_NAMED_CONTROLS = {"\0": "NUL", "\t": "TAB", "\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\x1b": "ESCAPE"}


def plain(c: str) -> bool:
    """A character a message can print as it is: printable ASCII (a space included)."""
    return c.isascii() and c.isprintable()


def escape_char(c: str) -> str:
    """``\\u0430`` for a character that is not printable ASCII (``\\n``, ``\\x00`` for controls)."""
    return c if plain(c) else c.encode("unicode_escape").decode("ascii")


def escaped(text: str) -> str:
    """``text`` with every character that is not printable ASCII escaped: a key or id that looks
    like another (Cyrillic ``а`` for Latin ``a``, a right-to-left override) shows what it is."""
    return "".join(escape_char(c) for c in text)


def char_name(c: str) -> str:
    """``U+202E RIGHT-TO-LEFT OVERRIDE``, ``U+0000 NUL``: a character as a message names it."""
    kinds = {"Cc": "a control character", "Cs": "a lone surrogate", "Cn": "an unassigned character"}
    name = unicodedata.name(c, "") or _NAMED_CONTROLS.get(c) or kinds.get(unicodedata.category(c), "unnamed")
    return f"U+{ord(c):04X} {name}"


def odd_chars(text: str) -> list[str]:
    """The characters of ``text`` that are not printable ASCII, each once, in order."""
    return list(dict.fromkeys(c for c in text if not plain(c)))


# --- every problem at once ------------------------------------------------------------------


class ConfigErrors(SmartbinError):
    """Every problem found in one file, each a SmartbinError of its own (its key path, its fix).

    One problem reads exactly as that problem; several are listed under one heading."""

    def __init__(self, errors: Sequence[SmartbinError], source: str) -> None:
        self.errors = [e for exc in errors for e in problems_of(exc)]
        if len(self.errors) == 1:
            super().__init__(self.errors[0].problem, self.errors[0].fix)
        else:
            super().__init__(listed(self.errors, source), f"fix each problem listed above in {source}")


def problems_of(exc: SmartbinError) -> list[SmartbinError]:
    return list(exc.errors) if isinstance(exc, ConfigErrors) else [exc]


def listed(errors: Sequence[SmartbinError], source: str) -> str:
    """``source: N problems`` and each problem (without the file name) with its fix, one per line."""
    lines = [f"{source}: {len(errors)} problems"]
    for e in errors:
        lines.append(
            f"  - {e.problem[len(source) + 2 :] if e.problem.startswith(source + ': ') else e.problem}"
        )
        if e.fix:
            lines.append(f"    fix: {e.fix}")
    return "\n".join(lines)


def each(pairs: Iterable[tuple[Any, Any]], convert: Callable[[Any, Any], Any], source: str) -> list[Any]:
    """``convert`` applied to each pair; every SmartbinError it raised, at once, if any did."""
    results: list[Any] = []
    errors: list[SmartbinError] = []
    for a, b in pairs:
        try:
            results.append(convert(a, b))
        except SmartbinError as exc:
            errors += problems_of(exc)
    if errors:
        raise ConfigErrors(errors, source)
    return results


# --- validation -----------------------------------------------------------------------------


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
        return each(enumerate(value), lambda i, v: _coerce(v, item_tp, f"{key}[{i}]", source), source)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            raise SmartbinError(
                f"{source}: {key} = {shown(value)} is not valid: expected a mapping", f"fix {key} in {source}"
            )
        return dict(each(value.items(), lambda k, v: _entry(k, v, tp, key, source), source))
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


def _entry(name: Any, value: Any, tp: Any, key: str, source: str) -> tuple[Any, Any]:
    """One entry of a mapping-valued key (``servo.bins``), its name and value checked."""
    key_tp, value_tp = typing.get_args(tp)
    return _coerce(name, key_tp, key, source), _coerce(value, value_tp, _sub(key, name), source)


def _sub(key: str, name: Any) -> str:
    """The key path of an entry of a mapping-valued key: ``servo.bins.kitchen``, escaped."""
    return f"{key}.{escaped(name) if isinstance(name, str) else shown(name)}"


def unknown_key(name: Any, known: Sequence[str], prefix: str, source: str) -> SmartbinError:
    """An unknown key, named so that it cannot pass for a known one, with the closest known key."""
    text = name if isinstance(name, str) else shown(name)
    where = f"{prefix}." if prefix else ""
    problem = f"{source}: unknown key {where}{escaped(text[:80])}"
    odd = odd_chars(text)
    if odd:
        letters = all(unicodedata.category(c).startswith("L") for c in odd)
        kind = "non-ASCII letters" if letters else "non-ASCII or invisible characters"
        problem += f" (it contains {kind}: {', '.join(char_name(c) for c in odd[:5])})"
    fix = f"known keys{' under ' + prefix if prefix else ''}: {', '.join(known)}"
    if odd:
        fix = "type the key again in plain ASCII; " + fix
    guess = difflib.get_close_matches(text, known, n=1) if isinstance(name, str) else []
    if guess:
        fix = f"did you mean {where}{guess[0]}? " + fix
    return SmartbinError(problem, fix)


def _field_value(f: Any, tp: Any, raw: Any, key: str, source: str) -> Any:
    """One key's value, coerced to its type and checked; the problem names the key, value and fix."""
    value = _coerce(raw, tp, key, source)
    check = f.metadata.get("check")
    if check is not None and value is not None and not check(value):
        problem = f"{source}: {key} = {shown(value)} is not valid: expected {f.metadata['expect']}"
        explain = f.metadata.get("explain")
        detail = explain(value) if explain is not None else ""
        raise SmartbinError(problem + (f"; {detail}" if detail else ""), f"fix {key} in {source}")
    return value


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def build_dataclass(cls: type, data: Any, prefix: str, source: str) -> Any:
    """Validate a mapping against a dataclass of ``opt`` fields, naming the key path on error; every
    bad key of the mapping is named at once (:class:`ConfigErrors`)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SmartbinError(
            f"{source}: {prefix or 'the file'} must be a mapping of keys, got {shown(data)}",
            f"write {prefix or 'the file'} as 'key: value' lines",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(
        (k for k in data if k not in fields), key=lambda k: k if isinstance(k, str) else shown(k)
    )
    errors = [unknown_key(k, list(fields), prefix, source) for k in unknown]
    present = [(name, f) for name, f in fields.items() if name in data]
    values: dict[str, Any] = {}
    try:
        values = dict(
            each(
                present,
                lambda name, f: (name, _field_value(f, hints[name], data[name], _key(prefix, name), source)),
                source,
            )
        )
    except ConfigErrors as exc:
        errors += exc.errors
    if errors:
        raise ConfigErrors(errors, source)
    try:
        return cls(**values)
    except SmartbinError as exc:  # a check across keys, in __post_init__
        raise ConfigErrors(
            [SmartbinError(f"{source}: {e.problem}", e.fix) for e in problems_of(exc)], source
        ) from None


# --- reading files --------------------------------------------------------------------------

MAX_FILE_BYTES = 1 << 20  # a config or taxonomy is a few KiB; past this it is not one
MAX_DEPTH = 32  # a smartbin file nests 4 levels (servo.bins.kitchen: value)
MAX_SCALAR_CHARS = 100_000  # the longest key takes 65535 bytes (an MQTT string)


def size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n >> 10} KiB" if n % 1024 == 0 else f"{n} bytes"


class UnfitFile(Exception):
    """A path that names no regular file, or one past its size cap: never read (``/dev/zero`` would be
    read until memory runs out, a named pipe would block)."""


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def unfit_reason(mode: int, size: int, cap: int) -> str | None:
    """Why a file of this ``stat`` mode and size is not read, or None for a regular file within ``cap``."""
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        return (
            f"is {kind}, not a regular file (smartbin reads only regular files of at most {size_text(cap)})"
        )
    if size > cap:
        return f"is {size} bytes, more than the {size_text(cap)} smartbin reads"
    return None


def read_capped(path: Path, cap: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes, at most ``cap`` of them; UnfitFile for anything else, OSError if unreadable.

    Opened without blocking (a named pipe would wait for a writer) and checked on the open file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, os.strerror(21), str(path))
        reason = unfit_reason(info.st_mode, info.st_size, cap)
        if reason:
            raise UnfitFile(reason)
        data = fh.read(cap + 1)
    if len(data) > cap:  # grew since fstat
        raise UnfitFile(f"is more than the {size_text(cap)} smartbin reads")
    return data


def regular_file_problem(path: str, cap: int) -> str | None:
    """Why the file at ``path`` would not be read (a device, a pipe, past ``cap``), judged without reading
    it; None for a regular file within the cap or a path that is not there (yet)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return unfit_reason(info.st_mode, info.st_size, cap)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, first: yaml.Mark, second: yaml.Mark) -> None:
        super().__init__(None, None, f"key {shown(key)} appears twice", second)
        self.key, self.first_line, self.second_line = key, first.line + 1, second.line + 1


class NestingError(yaml.composer.ComposerError):
    pass


class ScalarTooLongError(yaml.composer.ComposerError):
    pass


class SmartbinLoader(yaml.SafeLoader):
    """Safe YAML without what a smartbin file never needs and an attacker or a slip could use: aliases
    (a few hundred bytes of nested aliases expand to gigabytes), a key written twice (the last would
    win silently), nesting past MAX_DEPTH (a RecursionError) and scalars past MAX_SCALAR_CHARS."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} is not allowed in a smartbin file", event.start_mark
            )
        if self._depth >= MAX_DEPTH:
            raise NestingError(
                None, None, f"values nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor):
        node = super().compose_scalar_node(anchor)
        if len(node.value) > MAX_SCALAR_CHARS:
            raise ScalarTooLongError(
                None,
                None,
                f"a value of {len(node.value)} characters (at most {MAX_SCALAR_CHARS})",
                node.start_mark,
            )
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_seen: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = first_seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: refused by the constructor itself
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep)


NoAliasLoader = SmartbinLoader  # its former name

ALIAS_FIX = "fix the syntax; write repeated values out instead of using &anchors and *aliases"


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "the place named"


def yaml_fix(exc: yaml.YAMLError) -> str:
    """A fix that fits what PyYAML found: a tab, a missing ':', an indentation, an unclosed bracket or
    quote, ...; anchors and aliases only when the error is about them."""
    text = f"{getattr(exc, 'context', '') or ''} {getattr(exc, 'problem', '') or ''}"
    at = _where(getattr(exc, "problem_mark", None))
    opened = _where(getattr(exc, "context_mark", None))
    rules: list[tuple[bool, str]] = [
        ("alias" in text or "anchor" in text, ALIAS_FIX),
        (
            "'\\t'" in text,
            f"{at} holds a tab: indent with spaces only (YAML takes no tabs there), and put a space "
            "after ':'",
        ),
        (
            "could not find expected ':'" in text,
            f"write 'key: value' at {at}: a key needs ':' and a space after it",
        ),
        (
            "mapping values are not allowed" in text,
            f"{at} has a ':' YAML did not expect: check that the key on the line above ends with ':' "
            "(without it both lines read as one value), that this line is indented like the other keys of "
            "its section, and quote a value that holds ': ' (host: \"a: b\")",
        ),
        (
            "<block end>" in text or "did not find expected key" in text or "block collection" in text,
            f"{at} is indented unlike the keys around it: indent each key of a section by the same number "
            "of spaces (2 more than its section's name), and do not mix '- item' lines with 'key: value' "
            "lines",
        ),
        (
            "flow mapping" in text or "flow sequence" in text,
            f"close the '{{' or '[' opened at {opened} with '}}' or ']' on the same value, and separate its "
            "entries with ', '",
        ),
        ("quoted scalar" in text and "end of stream" in text, f"close the quote opened at {opened}"),
        (
            "escape character" in text,
            f"{at}: in double quotes a backslash starts an escape: write \\\\ for a backslash, or use "
            "single quotes",
        ),
        (
            "cannot start any token" in text,
            f"{at} starts a value with a character YAML reserves ('@', '`', '%', ...): quote the value",
        ),
        ("constructor for the tag" in text, f"remove the !tag at {at}: write the plain value"),
        (
            "another document" in text,
            f"a smartbin file is one YAML document: remove the '---' at {at} (merge the two parts)",
        ),
    ]
    return next(
        (fix for matched, fix in rules if matched),
        f"fix the YAML at {at}: indent with spaces, write 'key: value' with a space after ':', and quote "
        "values that hold ': ' or ' #'",
    )


def read_yaml(text: str, source: str) -> Any:
    """Parse a smartbin YAML file (config, taxonomy) with :class:`SmartbinLoader`; an error names
    ``source``, where in it and a fix for what was found there."""
    try:
        return yaml.load(text, Loader=SmartbinLoader)
    except ValueError as exc:  # an integer of more digits than Python will convert (sys.int_info)
        raise SmartbinError(
            f"{source} holds a number too long to read: {str(exc)[:120]}",
            "write numbers with at most a few dozen digits",
        ) from None
    except DuplicateKeyError as exc:
        key = escaped(str(exc.key))[:80]
        raise SmartbinError(
            f"{source}: key {key} appears twice, on line {exc.first_line} and line {exc.second_line} "
            "(YAML would keep only the last, silently)",
            f"write {key} once: delete it on line {exc.first_line} or line {exc.second_line}, or merge the "
            "two into one (a section's keys under one heading)",
        ) from None
    except NestingError as exc:
        raise SmartbinError(
            f"{source} nests values more than {MAX_DEPTH} levels deep ({_where(exc.problem_mark)})",
            "a smartbin file needs 4 levels at most (section, key, entry, value): remove the extra brackets "
            "or indentation",
        ) from None
    except ScalarTooLongError as exc:
        raise SmartbinError(
            f"{source} holds {exc.problem} at {_where(exc.problem_mark)}",
            "shorten it: no key takes text that long (was a file pasted in?)",
        ) from None
    except RecursionError:  # a backstop: MAX_DEPTH stops nesting long before Python's limit
        raise SmartbinError(
            f"{source} nests values too deep to read", "remove the extra brackets or indentation"
        ) from None
    except yaml.YAMLError as exc:
        raise SmartbinError(f"{source} is not valid YAML: {exc}", yaml_fix(exc)) from None


def read_text_file(
    path: Path, what: str, missing_fix: str, damaged_fix: str, unreadable_fix: str, cap: int = MAX_FILE_BYTES
) -> str:
    """A regular UTF-8 text file of at most ``cap`` bytes; each way it can fail names ``what``, the file
    and a fix."""
    try:
        raw = read_capped(path, cap)
    except FileNotFoundError:
        raise SmartbinError(f"{what} {path} does not exist", missing_fix) from None
    except UnfitFile as exc:
        raise SmartbinError(
            f"{what} {path} {exc}",
            f"point it at the {what} itself, a regular file of at most {size_text(cap)}",
        ) from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SmartbinError(f"{what} {path} cannot be read: {reason}", unreadable_fix) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SmartbinError(
            f"{what} {path} is not UTF-8 text (byte {exc.start}): it is binary or damaged", damaged_fix
        ) from None


def read_yaml_file(
    path: Path,
    what: str,
    missing_fix: str,
    damaged_fix: str,
    unreadable_fix: str = "check the path and its permissions",
) -> Any:
    """Read and parse a smartbin YAML file; each way it can fail names ``what``, the file and a fix."""
    text = read_text_file(path, what, missing_fix, damaged_fix, unreadable_fix)
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
