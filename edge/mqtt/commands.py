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

A retained command is never carried out: the broker sends it again at every subscription, so a
retained ``reset_counts`` would zero the counts at every reconnect. It is refused with the fix
(logged once per topic), and the empty retained message that clears it, which the broker forwards
to the bin as an ordinary empty command, is taken for the clearing, not for the command.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

MAX_PAYLOAD = 1024
COMMON = frozenset({"request_id", "device_id"})
MAX_RETAINED_TOPICS = 64  # remembered for the log and the clearing; more is junk on cmd/+


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


def request_id_of(payload: bytes) -> str | None:
    """The payload's ``request_id``, where it has a valid one, for a reply to a command not parsed."""
    try:
        value = decode(payload).get("request_id")
    except CommandError:
        return None
    return value if isinstance(value, str) and len(value) <= 64 else None


def retained_refusal(topic: str) -> str:
    return (
        "retained command refused: publish commands without the retain flag; clear it with an empty "
        f"retained message on {topic}"
    )


class CommandTable:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self._retained: set[str] = set()  # topics whose retained command was refused, until cleared

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

    def dispatch(
        self, name: str, payload: bytes, device_id: str, *, topic: str = "", retained: bool = False
    ) -> dict[str, Any]:
        """The reply to one command; never raises. ``topic`` is where it came from, ``retained`` its
        MQTT retain flag: a retained command is refused, never carried out."""
        reply: dict[str, Any] = {"command": name[:40], "ok": False, "request_id": None}
        where = topic or name
        if retained:
            return self._refuse_retained(reply, payload, where)
        if payload == b"" and where in self._retained:
            return self._cleared(reply, where)
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

    def _refuse_retained(self, reply: dict[str, Any], payload: bytes, where: str) -> dict[str, Any]:
        reply["request_id"] = request_id_of(payload)
        reply["error"] = retained_refusal(where)
        if where not in self._retained and len(self._retained) < MAX_RETAINED_TOPICS:
            self._retained.add(where)
            log.warning(
                "mqtt: retained command on %s refused, not carried out (the broker sends it again at "
                "every reconnect, and each time it is refused): publish commands without the retain "
                "flag; clear it with: mosquitto_pub -t '%s' -r -n",
                where[:120],
                where,
            )
        return reply

    def _cleared(self, reply: dict[str, Any], where: str) -> dict[str, Any]:
        """The empty message that clears a refused retained command reaches a live subscription
        without the retain flag: it would read as the command with no arguments (``emptied`` of
        every bin)."""
        self._retained.discard(where)
        log.info("mqtt: the retained command on %s was cleared; nothing done", where[:120])
        reply["error"] = (
            f"taken as clearing the retained command on {where}: nothing done; send the command again "
            "to carry it out"
        )
        return reply
