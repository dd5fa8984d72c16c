"""Our line protocol (docs/line-protocol.md): ASCII requests, ``OK``/``ERR`` replies, ``EVT`` lines."""

from __future__ import annotations

import time

from edge.servo.link import ActuatorFault, Link, ServoSettings


class LineController:
    """Our line protocol: every command gets ``OK ...`` or ``ERR <code> <text>``.

    Between replies the firmware may send ``EVT <name>`` lines (the tray
    button): they are kept for :meth:`events`, never taken for a reply.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self._events: list[str] = []

    def _event(self, line: str) -> bool:
        if line.startswith("EVT "):
            self._events.append(line[4:].strip())
            return True
        return False

    def events(self) -> list[str]:
        for line in self.link.waiting_lines():
            self._event(line)  # anything else arriving unasked is stale and dropped
        events, self._events = self._events, []
        return events

    def request(self, command: str) -> list[str]:
        for line in self.link.waiting_lines():
            self._event(line)
        self.link.write(command.encode("ascii") + b"\n", flush_input=False)
        reply = self.link.readline(command.split()[0])
        while self._event(reply):
            reply = self.link.readline(command.split()[0])
        words = reply.split()
        if words[:1] == ["OK"]:
            return words[1:]
        if words[:1] == ["ERR"] and len(words) >= 2:
            raise ActuatorFault(f"controller refused {command!r}: {' '.join(words[1:])}")
        raise ActuatorFault(f"controller sent an unexpected reply to {command!r}: {reply!r}")

    def ping(self) -> str:
        words = self.request("PING")
        if len(words) < 3 or words[0] != "PONG":
            raise ActuatorFault(
                f"controller answered PING with {' '.join(words)!r}, not PONG <name> <version>"
            )
        return f"{words[1]} {words[2]} (line protocol)"

    def wait_ready(self, startup_s: float) -> str:
        """Ping until the firmware answers: opening the port resets an Arduino (~1.5 s bootloader)."""
        deadline = time.monotonic() + startup_s
        while True:
            try:
                return self.ping()
            except ActuatorFault:
                if time.monotonic() > deadline:
                    raise

    def move(self, channel: int, pulse_us: float, timeout_s: float) -> None:
        words = self.request(f"MOVE {channel} {round(pulse_us)}")
        if words != [str(channel), str(round(pulse_us))]:
            raise ActuatorFault(
                f"controller confirmed {' '.join(words)!r} for MOVE {channel} {round(pulse_us)}"
            )

    def position_us(self, channel: int) -> float:
        words = self.request(f"POS {channel}")
        if len(words) != 2 or words[0] != str(channel) or not words[1].isdigit():
            raise ActuatorFault(f"controller answered POS {channel} with {' '.join(words)!r}")
        return float(words[1])

    def detach(self, channel: int) -> None:
        self.request(f"DETACH {channel}")

    def close(self) -> None:
        self.link.close()


def open_line(cfg: ServoSettings) -> LineController:
    """Open the port and wait until the firmware answers (opening it resets an Arduino)."""
    link = Link(cfg.port, cfg.baud, cfg.reply_timeout_s)
    controller = LineController(link)
    try:
        controller.wait_ready(cfg.startup_s)
    except ActuatorFault:
        link.close()
        raise
    return controller
