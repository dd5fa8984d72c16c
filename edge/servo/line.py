"""Our line protocol (docs/line-protocol.md): ASCII requests, ``OK``/``ERR`` replies, ``EVT`` lines."""

from __future__ import annotations

import time

from edge.servo.link import ActuatorFault, LidOpen, Link, ServoSettings

LID_OPEN_CODE = "8"  # ERR 8 lid open: a MOVE the interlock refused
POLL_S = 0.01  # how often a guarded move's position is read while it ramps


class LineController:
    """Our line protocol: every command gets ``OK ...`` or ``ERR <code> <text>``.

    Between replies the firmware may send ``EVT <name>`` lines (the tray
    button, the interlock): they are kept for :meth:`events`, never taken for a reply.

    With the interlock on (:meth:`enable_interlock`), a move asks ``LID?`` first and is refused
    while it reads open; the firmware then ramps the servo, and the move is confirmed only when
    ``POS`` reads the target back. An ``EVT LID_OPEN`` before that means the firmware stopped it.
    """

    def __init__(self, link: Link) -> None:
        self.link = link
        self._events: list[str] = []
        self.interlock: str | None = None  # the input pin, once the firmware took LID ON
        self.lid_open: bool | None = None  # the last the firmware said (None: no interlock)
        self._lid_opened = False  # an EVT LID_OPEN since the current move began

    def _event(self, line: str) -> bool:
        if line.startswith("EVT "):
            name = line[4:].strip()
            if name == "LID_OPEN":
                self.lid_open = self._lid_opened = True
            elif name == "LID_CLOSED":
                self.lid_open = False
            self._events.append(name)
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
        if words[:2] == ["ERR", LID_OPEN_CODE]:
            self.lid_open = True
            raise LidOpen(f"lid open: the controller refused {command!r}: {' '.join(words[1:])}")
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

    def enable_interlock(self, pin: str, channel: int, home_us: float | None) -> bool:
        """``LID ON``: the firmware guards ``channel`` with the switch on ``pin``; a move stopped by an
        opening lid goes to ``home_us`` (None: holds where it is). Returns whether the lid is open."""
        stop = "HOLD" if home_us is None else str(round(home_us))
        try:
            words = self.request(f"LID ON {pin} {channel} {stop}")
        except ActuatorFault as fault:
            if "unknown command LID" in fault.reason:
                raise ActuatorFault(
                    f"{fault.reason}: this firmware has no interlock; flash the one in deploy/firmware/ "
                    "(make flash), or leave servo.interlock empty"
                ) from None
            raise
        if words != ["LID", "ON"]:
            raise ActuatorFault(f"controller answered LID ON with {' '.join(words)!r}, not LID ON")
        self.interlock = pin
        return self.lid()

    def disable_interlock(self) -> None:
        """``LID OFF`` (a board that does not reset on open keeps the last run's); firmware without
        the interlock answers ``ERR 1 unknown command``, which is as good."""
        try:
            self.request("LID OFF")
        except ActuatorFault as fault:
            if "unknown command LID" not in fault.reason:
                raise
        self.interlock, self.lid_open = None, None

    def lid(self) -> bool | None:
        """Whether the interlock reads open now (``LID?``); None when there is none. An answer that is
        not ``LID OPEN`` or ``LID CLOSED`` is a fault, never read as closed."""
        if self.interlock is None:
            return None
        words = self.request("LID?")
        if words not in (["LID", "OPEN"], ["LID", "CLOSED"]):
            raise ActuatorFault(
                f"interlock on {self.interlock} answered LID? with {' '.join(words)!r}, "
                "not LID OPEN or LID CLOSED; the lid cannot be trusted closed"
            )
        self.lid_open = words[1] == "OPEN"
        return self.lid_open

    def move(self, channel: int, pulse_us: float, timeout_s: float) -> None:
        target = round(pulse_us)
        if self.interlock is not None and self.lid():
            raise LidOpen(f"lid open (interlock {self.interlock}): the move to {target} µs was not started")
        self._lid_opened = False
        words = self.request(f"MOVE {channel} {target}")
        if words != [str(channel), str(target)]:
            raise ActuatorFault(f"controller confirmed {' '.join(words)!r} for MOVE {channel} {target}")
        if self.interlock is None:
            return
        deadline = time.monotonic() + timeout_s  # the firmware ramps a guarded move: follow it
        while True:
            at = self.position_us(channel)
            if at == target:
                return
            if self._lid_opened:
                raise LidOpen(
                    f"lid opened during the move to {target} µs (interlock {self.interlock}); "
                    f"the firmware stopped it at {at:g} µs"
                )
            if time.monotonic() > deadline:
                raise ActuatorFault(
                    f"servo on channel {channel} is at {at:g} µs, not {target} µs, after {timeout_s:g} s"
                )
            time.sleep(POLL_S)

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
        pin = getattr(cfg, "interlock", None)
        if pin:
            home = cfg.home_us if getattr(cfg, "interlock_stop", "home") == "home" else None
            controller.enable_interlock(str(pin), cfg.channel, home)
        else:
            controller.disable_interlock()
    except ActuatorFault:
        link.close()
        raise
    return controller
