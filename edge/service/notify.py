"""The systemd notify protocol: READY=1, WATCHDOG=1, STATUS=, STOPPING=1 on ``$NOTIFY_SOCKET``.

A datagram per message, as sd_notify(3) sends it; no library needed. Without
systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.socket: socket.socket | None = None
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # systemd's advice: ping at half the interval
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and mine else None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def send(self, *fields: str) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendto("\n".join(fields).encode("utf-8"), self.address)
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.warning("systemd notify socket %s: %s", self.address.lstrip("\0"), exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
