"""The MQTT commands a running bin carries out (the table edge.mqtt.commands validates and dispatches).

A new command is one handler here and one ``table.register`` line: its name, the fields it
accepts and a check. Document it in docs/mqtt.md; tests/test_commands.py holds the two together.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import edge
from edge.errors import SmartbinError
from edge.ledger import Ledger
from edge.mqtt.commands import Command, CommandError, CommandTable, confirmation
from edge.mqtt.telemetry import Telemetry

log = logging.getLogger("smartbin.daemon")


class SortingBin(Protocol):
    """What the commands act on: the daemon (edge.service.daemon.Daemon), whose parts a reload may
    replace, so a handler looks them up when it runs."""

    ledger: Ledger
    telemetry: Telemetry

    def request_sort(self, source: str = ...) -> str | None: ...

    def empty_bins(self, requested: str | None, by: str) -> dict[str, int]: ...


def bin_is_text(args: dict[str, Any]) -> None:
    if not isinstance(args.get("bin", ""), str):
        raise CommandError('emptied takes {"bin": "<bin id>"} or {"bin": "all"}')


def register_commands(table: CommandTable, daemon: SortingBin, device_id: str) -> None:
    """The MQTT commands (edge.mqtt.commands), carried out on ``daemon`` for the bin ``device_id``."""

    done: list[str] = []  # the request_id of the last sort carried out

    def sort(command: Command) -> dict[str, Any]:
        # MQTT delivers a QoS 1 message at least once: a duplicate must not count as a second press
        if command.request_id is not None and command.request_id in done:
            raise CommandError(f"sort {command.request_id!r} was already received; send a new request_id")
        refused = daemon.request_sort("MQTT sort command")  # why it cannot happen (an empty tray), or None
        if command.request_id is not None:
            done[:] = [command.request_id]
        if refused:
            raise CommandError(refused)
        return {}

    def reset_counts(command: Command) -> dict[str, Any]:
        daemon.ledger.reset_counts()
        log.warning("mqtt: counts reset by command")
        daemon.telemetry.notify()
        return {"counts": daemon.ledger.counts()}

    def emptied(command: Command) -> dict[str, Any]:
        try:
            held = daemon.empty_bins(command.args.get("bin"), "MQTT command")
        except SmartbinError as exc:
            raise CommandError(exc.problem) from None
        return {"emptied": held}

    def ping(command: Command) -> dict[str, Any]:
        return {"device_id": device_id, "version": edge.__version__}

    table.register("sort", sort)
    table.register("reset_counts", reset_counts, {"confirm"}, confirmation("reset_counts"))
    table.register("emptied", emptied, {"bin"}, bin_is_text)
    table.register("ping", ping)
