"""Commands that arrive on ``<prefix>/cmd/<name>``: validated before anything acts on them.

| command        | payload (JSON object, or empty)              | effect                      |
|----------------|----------------------------------------------|-----------------------------|
| `sort`         | `{}`                                         | classify and sort now       |
| `reset_counts` | `{"confirm": "reset_counts"}` (required)     | every bin's count to 0      |
| `ping`         | `{}`                                         | a reply, nothing else       |

Any command may carry `"request_id"` (a string, echoed in the reply) and
`"device_id"` (refused unless it is this bin's). Every command gets one reply
on ``<prefix>/reply``: ``{"command", "ok", "request_id", "error" | result}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_PAYLOAD = 1024
COMMANDS: dict[str, frozenset[str]] = {
    "sort": frozenset(),
    "reset_counts": frozenset({"confirm"}),
    "ping": frozenset(),
}
COMMON = frozenset({"request_id", "device_id"})


class CommandError(ValueError):
    """A command refused, with a reason fit for the reply and the log."""


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None


def parse_command(name: str, payload: bytes, device_id: str) -> Command:
    if name not in COMMANDS:
        raise CommandError(f"unknown command {name[:40]!r}; known: {', '.join(COMMANDS)}")
    if len(payload) > MAX_PAYLOAD:
        raise CommandError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    if not payload.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise CommandError("payload is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise CommandError("payload must be a JSON object")
    unknown = sorted(map(str, set(data) - COMMANDS[name] - COMMON))
    if unknown:
        raise CommandError(f"unknown field(s) {', '.join(k[:40] for k in unknown[:5])} for {name}")
    request_id = data.get("request_id")
    if request_id is not None and not (isinstance(request_id, str) and len(request_id) <= 64):
        raise CommandError("request_id must be a string of at most 64 characters")
    if "device_id" in data and data["device_id"] != device_id:
        raise CommandError("command is for another device")
    if name == "reset_counts" and data.get("confirm") != "reset_counts":
        raise CommandError('reset_counts needs {"confirm": "reset_counts"}')
    args = {k: v for k, v in data.items() if k not in COMMON}
    return Command(name, args, request_id)
