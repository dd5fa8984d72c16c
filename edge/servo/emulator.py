"""Servo controllers emulated on the far end of a real pseudo-terminal.

The driver opens the pty's slave path with pyserial, exactly as it opens
/dev/ttyACM0 on a bin; these emulators sit on the master side and speak the
real byte protocols. ``mode`` switches on the faults a field unit shows. The
tests use them, and so does ``smartbin demo``, which has no servo board.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from typing import Callable


class PtyEmulator:
    """Base: a pty pair and a thread that feeds received bytes to ``handle``."""

    def __init__(self, mode: str = "ok", on_move: Callable[[int, float], None] | None = None) -> None:
        self.mode, self.on_move = mode, on_move
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        self._slave = slave  # kept open so the pty stays up between driver opens
        self.received = bytearray()
        self._stop = threading.Event()
        self.closed = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.closed:
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                data = os.read(self.master, 256)
            except OSError:
                return
            self.received += data
            self.handle(data)

    def send(self, data: bytes) -> None:
        if not self.closed:
            os.write(self.master, data)

    def unplug(self) -> None:
        """The USB cable is pulled: the controller's end of the line disappears."""
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self._slave)

    def handle(self, data: bytes) -> None:
        raise NotImplementedError

    def moved(self, channel: int, pulse_us: float) -> None:
        """Tell whoever watches the servo (the demo's simulated tray) where it now points."""
        if self.on_move is not None:
            self.on_move(channel, pulse_us)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.unplug()

    def __enter__(self) -> PtyEmulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# Bytes that follow each Maestro command byte.
MAESTRO_PAYLOAD = {0x84: 3, 0x87: 3, 0x89: 3, 0x90: 1, 0x93: 0, 0xA1: 0}


class MaestroEmulator(PtyEmulator):
    """A Pololu Maestro: compact and addressed Pololu protocol, positions in quarter-µs.

    Modes: ok, silent, partial (one byte of a two-byte reply), stuck (the servo
    never reaches its target), errors (error bits set), unplug_on_move.
    ``travel_reads`` makes a slow servo: after a new target, that many position
    reads report positions on the way, and the next one the target.

    ``inputs`` are channels configured as inputs (an interlock switch): Get Position on one answers
    its value, 0..1023 (:meth:`open_lid` / :meth:`close_lid`: 1023 / 0, as a digital input reads
    a switch to GND with a pull-up). ``input_mode``: ok, silent (no answer for an input channel),
    garbage (a value no input has). ``open_lid_after_reads``: the lid opens on that position read
    of a servo on its way.
    """

    def __init__(
        self,
        mode: str = "ok",
        device: int = 12,
        error_bits: int = 0,
        on_move: Callable[[int, float], None] | None = None,
        travel_reads: int = 0,
        inputs: dict[int, int] | None = None,
    ) -> None:
        self.device, self.error_bits, self.travel_reads = device, error_bits, travel_reads
        self.inputs: dict[int, int] = dict(inputs or {})
        self.input_mode = "ok"
        self.open_lid_after_reads: int | None = None
        self.targets: dict[int, int] = {}
        self.positions: dict[int, int] = {}
        self._on_the_way: dict[int, list[int]] = {}
        self.commands: list[bytes] = []
        self._buffer = bytearray()
        super().__init__(mode, on_move)

    def handle(self, data: bytes) -> None:
        self._buffer += data
        while self._buffer:
            start = self._buffer[0]
            if start == 0xAA:
                if len(self._buffer) < 3:
                    return
                command, head = self._buffer[2] | 0x80, 3
                if self._buffer[1] != self.device:
                    need = head + MAESTRO_PAYLOAD.get(command, 0)
                    if len(self._buffer) < need:
                        return
                    del self._buffer[:need]  # another board's command
                    continue
            else:
                command, head = start, 1
            need = head + MAESTRO_PAYLOAD.get(command, 0)
            if command not in MAESTRO_PAYLOAD:
                self.error_bits |= 1 << 4  # serial protocol error
                del self._buffer[:1]
                continue
            if len(self._buffer) < need:
                return
            frame = bytes(self._buffer[:need])
            del self._buffer[:need]
            self.commands.append(frame)
            self.execute(command, frame[head:])

    def execute(self, command: int, payload: bytes) -> None:
        if command == 0x84:
            channel, target = payload[0], payload[1] | payload[2] << 7
            self.targets[channel] = target
            if self.mode == "unplug_on_move":
                self.unplug()
                return
            if self.mode == "stuck":
                return
            if self.travel_reads:
                start, steps = self.positions.get(channel, 6000), self.travel_reads + 1
                self._on_the_way[channel] = [start + (target - start) * i // steps for i in range(1, steps)]
                self._on_the_way[channel].append(target)
            else:
                self.positions[channel] = target
                self.moved(channel, target / 4)
            return
        if command in (0x87, 0x89):
            return
        if self.mode == "silent":
            return
        if command == 0x90 and payload[0] in self.inputs:
            if self.input_mode == "silent":
                return
            value = 0xFFFF if self.input_mode == "garbage" else self.inputs[payload[0]]
            reply = value.to_bytes(2, "little")
        elif command == 0x90:
            if self._on_the_way.get(payload[0]):
                self._travel(payload[0])
            reply = self.positions.get(payload[0], 6000).to_bytes(2, "little")
        elif command == 0x93:
            reply = bytes((int(self.targets != self.positions),))
        else:
            bits = self.error_bits if self.mode != "errors" else self.error_bits | 0b10
            reply = bits.to_bytes(2, "little")
            self.error_bits = 0  # reading the errors clears them, as on the real board
        self.send(reply[:1] if self.mode == "partial" else reply)

    def open_lid(self, channel: int | None = None) -> None:
        """The interlock switch opens: its input reads high (the pull-up)."""
        for ch in [channel] if channel is not None else list(self.inputs):
            self.inputs[ch] = 1023

    def close_lid(self, channel: int | None = None) -> None:
        for ch in [channel] if channel is not None else list(self.inputs):
            self.inputs[ch] = 0

    def _travel(self, channel: int) -> None:
        if self.open_lid_after_reads is not None:
            self.open_lid_after_reads -= 1
            if self.open_lid_after_reads <= 0:
                self.open_lid_after_reads = None
                self.open_lid()
        self.positions[channel] = self._on_the_way[channel].pop(0)
        if not self._on_the_way[channel]:
            self.moved(channel, self.positions[channel] / 4)


class LineEmulator(PtyEmulator):
    """A microcontroller running our line-protocol firmware (docs/line-protocol.md).

    Modes: ok, silent, garbage, partial (a reply without its newline),
    refuse (every move answered with an error), unplug_on_move, event_first
    (an ``EVT BUTTON`` line before every reply).

    ``answers`` replaces the firmware's answer to a command word (``{"PING": "OK PONG"}``);
    ``lost_while_booting`` lines arrive while the bootloader runs and get no answer;
    ``before_next_reply`` is sent once, just ahead of the next reply (say, the rest of a
    line that began before the command).

    The interlock (``LID ON``/``LID OFF``/``LID?``): :meth:`open_lid` / :meth:`close_lid` work the
    switch and report ``EVT LID_OPEN`` / ``EVT LID_CLOSED`` as the firmware does; while it is on and
    open, a MOVE of the guarded channel is ``ERR 8 lid open``. ``open_on_move`` (pulse widths) opens
    the lid just after the next guarded MOVE to one of them is answered: the move stops (home, or
    where it began for HOLD).
    ``lid_mode``: ok, silent (``LID?`` unanswered), garbage (``LID?`` answered ``OK LID MAYBE``).
    """

    NAME, VERSION, MIN_US, MAX_US = "smartbin-servo", "0.1.0", 900, 2100

    def __init__(
        self,
        mode: str = "ok",
        on_move: Callable[[int, float], None] | None = None,
        answers: dict[str, str] | None = None,
        lost_while_booting: int = 0,
    ) -> None:
        self._buffer = bytearray()
        self.positions: dict[int, int] = {}
        self.lines: list[str] = []
        self.answers = answers or {}
        self.lost_while_booting = lost_while_booting
        self.before_next_reply = b""
        self.lid_is_open = False  # the switch
        self.lid: tuple[int, int] | None = None  # LID ON: (guarded channel, home µs or 0 for HOLD)
        self.lid_mode = "ok"
        self.open_on_move: set[int] = set()
        super().__init__(mode, on_move)

    def open_lid(self) -> None:
        self.lid_is_open = True
        if self.lid is not None:
            self.send(b"EVT LID_OPEN\n")

    def close_lid(self) -> None:
        self.lid_is_open = False
        if self.lid is not None:
            self.send(b"EVT LID_CLOSED\n")

    def _lid(self, args: list[str]) -> str:
        if args == ["OFF"]:
            self.lid = None
            return "OK LID OFF"
        if len(args) != 4 or args[0] != "ON" or not args[2].isdigit():
            return "ERR 2 bad arguments"
        if args[1] not in {f"D{n}" for n in range(3, 9)}:
            return f"ERR 7 no input pin {args[1]}"
        self.lid = (int(args[2]), 0 if args[3] == "HOLD" else int(args[3]))
        return "OK LID ON"

    def handle(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer = bytearray(rest)
            self.lines.append(line.decode("ascii", "replace").strip())
            self.reply(self.lines[-1])

    def press(self, long: bool = False) -> None:
        """The tray button, as the firmware reports it: one unasked line (held 2 s or more: long)."""
        self.send(b"EVT BUTTON_LONG\n" if long else b"EVT BUTTON\n")

    def reply(self, line: str) -> None:
        if len(self.lines) <= self.lost_while_booting:
            return
        if self.mode == "event_first":  # a button press that lands just before the reply
            self.press()
        if self.before_next_reply:
            self.send(self.before_next_reply)
            self.before_next_reply = b""
        if self.mode == "silent":
            return
        if self.mode == "garbage":
            self.send(b"\xff\xfe\x00garbage\n")
            return
        words = line.split()
        command, args = (words[0], words[1:]) if words else ("", [])
        if command in self.answers:
            answer = self.answers[command]
        elif command == "PING":
            answer = f"OK PONG {self.NAME} {self.VERSION}"
        elif command == "LID":
            answer = self._lid(args)
        elif command == "LID?":
            if self.lid_mode == "silent":
                return
            state = "OFF" if self.lid is None else "OPEN" if self.lid_is_open else "CLOSED"
            answer = "OK LID MAYBE" if self.lid_mode == "garbage" else f"OK LID {state}"
        elif command == "MOVE" and len(args) == 2 and all(a.isdigit() for a in args):
            channel, pulse = int(args[0]), int(args[1])
            guarded = self.lid is not None and channel == self.lid[0]
            if self.mode == "unplug_on_move":
                self.unplug()
                return
            if self.mode == "refuse" or not self.MIN_US <= pulse <= self.MAX_US:
                answer = f"ERR 3 pulse {pulse} outside {self.MIN_US}..{self.MAX_US}"
            elif guarded and self.lid_is_open:
                answer = "ERR 8 lid open"
            elif guarded and pulse in self.open_on_move:  # answered, then stopped on its way
                self.open_on_move = set()
                home = self.lid[1] or self.positions.get(channel, 0)
                self.positions[channel] = home
                self.moved(channel, home)
                self.send(f"OK {channel} {pulse}\n".encode("ascii"))
                self.open_lid()
                return
            else:
                self.positions[channel] = pulse
                self.moved(channel, pulse)
                answer = f"OK {channel} {pulse}"
        elif command in ("POS", "DETACH") and len(args) == 1 and args[0].isdigit():
            channel = int(args[0])
            answer = f"OK {channel} {self.positions.get(channel, 0)}" if command == "POS" else f"OK {channel}"
        elif command == "ERRORS":
            answer = "OK 0"
        else:
            answer = f"ERR 1 unknown command {command}"
        self.send(answer.encode("ascii") + (b"" if self.mode == "partial" else b"\n"))
