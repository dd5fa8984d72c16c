"""Commands that arrive on ``<prefix>/cmd/<name>``: validated before anything acts on them.

| command        | payload (JSON object, or empty)              | effect                      |
|----------------|----------------------------------------------|-----------------------------|
| `sort`         | `{}`                                         | classify and sort now       |
| `reset_counts` | `{"confirm": "reset_counts"}` (required)     | every bin's count to 0      |
| `emptied`      | `{"bin": "<bin>"}` or `{"bin": "all"}`       | the bin's fill back to 0    |
| `ping`         | `{}`                                         | a reply, nothing else       |

These are the commands the daemon registers (``edge.service.commands.register_commands``) in a
:class:`CommandTable`: each with the fields its payload may have, a check of their values and the
handler that carries it out. Telemetry hands every message on ``cmd/<name>`` to
:meth:`CommandTable.dispatch` and publishes the reply it returns.

Any command may carry `"request_id"` (a string, echoed in the reply) and
`"device_id"` (refused unless it is this bin's). Every command gets one reply
on ``<prefix>/reply``: ``{"command", "ok", "request_id", "error" | result}``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

MAX_PAYLOAD = 1024
COMMON = frozenset({"request_id", "device_id"})


class CommandError(ValueError):
    """A command refused, with a reason fit for the reply and the log."""


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None


@dataclass(frozen=True)
class CommandSpec:
    name: str
    fields: frozenset[str]  # allowed in the payload besides COMMON
    handler: Callable[[Command], dict[str, Any]]  # the reply's result fields; CommandError refuses
    check: Callable[[dict[str, Any]], None] | None = None  # raises CommandError on the args


def confirmation(name: str) -> Callable[[dict[str, Any]], None]:
    """The check of a command that changes what cannot be undone: ``{"confirm": "<name>"}``."""

    def check(args: dict[str, Any]) -> None:
        if args.get("confirm") != name:
            raise CommandError(f'{name} needs {{"confirm": "{name}"}}')

    return check


def decode(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    if not payload.strip():
        return {}
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CommandError("payload is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise CommandError("payload must be a JSON object")
    return data


class CommandTable:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}

    def register(
        self,
        name: str,
        handler: Callable[[Command], dict[str, Any]],
        fields: Iterable[str] = (),
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if name in self._specs:
            raise ValueError(f"command {name!r} is registered already")
        self._specs[name] = CommandSpec(name, frozenset(fields), handler, check)

    @property
    def names(self) -> tuple[str, ...]:
        """In the order they were registered: the order an unknown command's reply lists them in."""
        return tuple(self._specs)

    def spec(self, name: str) -> CommandSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self.names) or "none"
            raise CommandError(f"unknown command {name[:40]!r}; known: {known}") from None

    def parse(self, name: str, payload: bytes, device_id: str) -> Command:
        spec = self.spec(name)
        data = decode(payload)
        unknown = sorted(map(str, set(data) - spec.fields - COMMON))
        if unknown:
            raise CommandError(f"unknown field(s) {', '.join(k[:40] for k in unknown[:5])} for {name}")
        request_id = data.get("request_id")
        if request_id is not None and not (isinstance(request_id, str) and len(request_id) <= 64):
            raise CommandError("request_id must be a string of at most 64 characters")
        if "device_id" in data and data["device_id"] != device_id:
            raise CommandError("command is for another device")
        args = {k: v for k, v in data.items() if k not in COMMON}
        if spec.check is not None:
            spec.check(args)
        return Command(name, args, request_id)

    def dispatch(self, name: str, payload: bytes, device_id: str, *, topic: str = "") -> dict[str, Any]:
        """The reply to one command; never raises. ``topic`` (where it came from) is for the log."""
        reply: dict[str, Any] = {"command": name[:40], "ok": False, "request_id": None}
        try:
            command = self.parse(name, payload, device_id)
            reply["request_id"] = command.request_id
            reply.update(self._specs[name].handler(command))
            reply["ok"] = True
        except CommandError as exc:
            log.warning("mqtt: refused command on %s: %s", (topic or name)[:120], exc)
            reply["error"] = str(exc)
        except Exception as exc:  # a command must never take the daemon down
            log.exception("mqtt: command %s failed", name[:40])
            reply["error"] = f"internal error: {exc}"
        return reply
