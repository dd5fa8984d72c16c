"""The line-protocol firmware builds for an ATmega328P, and says what the host and emulator expect."""

import re
import shutil
import subprocess

import pytest

from edge.servo.emulator import LineEmulator
from tests.conftest import REPO

FIRMWARE = REPO / "deploy" / "firmware"
SOURCE = (FIRMWARE / "smartbin_servo.c").read_text()

needs_avr = pytest.mark.skipif(
    shutil.which("avr-gcc") is None, reason="avr-gcc absent: scripts/test installs it"
)


def define(name: str) -> str:
    return re.search(rf"#define {name} (\S+)", SOURCE).group(1).strip('"')


@needs_avr
def test_firmware_builds_and_fits(tmp_path):
    out = subprocess.run(["make", "-C", str(FIRMWARE), f"BUILD={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "smartbin_servo.hex").read_text().startswith(":")
    program = int(re.search(r"Program:\s+(\d+) bytes", out.stdout).group(1))
    data = int(re.search(r"Data:\s+(\d+) bytes", out.stdout).group(1))
    assert program < 30 * 1024  # 32 KiB flash less the 2 KiB bootloader
    assert data < 1536  # 2 KiB RAM, leaving room for the stack


@needs_avr
def test_firmware_refuses_limits_outside_the_servo_range(tmp_path):
    out = subprocess.run(
        ["make", "-C", str(FIRMWARE), f"BUILD={tmp_path}", "SERVO_MIN_US=300"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "servo limits must lie within" in out.stderr


def test_emulator_and_spec_match_the_firmware():
    assert define("FIRMWARE_NAME") == LineEmulator.NAME
    assert define("FIRMWARE_VERSION") == LineEmulator.VERSION
    assert int(define("SERVO_MIN_US")) == LineEmulator.MIN_US
    assert int(define("SERVO_MAX_US")) == LineEmulator.MAX_US
    spec = (REPO / "docs" / "line-protocol.md").read_text()
    assert f"{LineEmulator.MIN_US}..{LineEmulator.MAX_US}" in spec
    assert f"at most {define('LINE_MAX')} characters" in spec
    for code in range(1, 9):
        assert re.search(rf"reply_error\({code}|log_error\({code}\)", SOURCE), code
        assert f"| {code} |" in spec


needs_simavr = pytest.mark.skipif(
    shutil.which("avr-gcc") is None
    or subprocess.run(["pkg-config", "--exists", "simavr", "simavrparts"], capture_output=True).returncode,
    reason="simavr or avr-gcc absent: scripts/test installs them",
)


class SimulatedBoard:
    def __init__(self, port: str, sim: subprocess.Popen) -> None:
        self.port, self.sim = port, sim

    def press_button(self, hold_ms: int = 100) -> None:
        """Pin D2 pulled to ground for ``hold_ms`` of simulated time."""
        self.tell(f"PRESS {hold_ms}")

    def tell(self, line: str) -> None:
        self.sim.stdin.write(line + "\n")
        self.sim.stdin.flush()

    def lid(self, open: bool) -> None:
        """The interlock switch on pin D3: open (high), or closed (pulled to GND)."""
        self.tell("LID OPEN" if open else "LID CLOSED")

    def open_lid_at(self, us: int) -> None:
        """Open the switch the moment channel 0's pulse reaches ``us`` (a move under way)."""
        self.tell(f"OPEN_AT {us}")

    def pulse(self) -> tuple[int, bool]:
        """Channel 0's pulse width as Timer1 sends it on D9 (OCR1A), and whether it is sent at all."""
        self.tell("PULSE")
        for line in self.sim.stdout:
            if line.startswith("PULSE "):
                _, us, on = line.split()
                return int(us), on == "1"
        raise AssertionError("the simulator ended")


@pytest.fixture(scope="module")
def simulated_board(tmp_path_factory):
    """The compiled firmware running under simavr, its UART on a pty: a board without the board."""
    build = tmp_path_factory.mktemp("firmware")
    subprocess.run(["make", "-C", str(FIRMWARE), f"BUILD={build}"], check=True, capture_output=True)
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "simavr", "simavrparts"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    harness = build / "simavr_uart_pty"
    source = REPO / "tests" / "firmware_sim" / "simavr_uart_pty.c"
    subprocess.run(["cc", str(source), *flags, "-o", str(harness)], check=True)
    sim = subprocess.Popen(
        [str(harness), str(build / "smartbin_servo.elf")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for line in sim.stdout:
            if line.startswith("PTY "):
                yield SimulatedBoard(line.split()[1], sim)
                break
        else:
            pytest.fail("simavr did not open a pty")
    finally:
        sim.kill()
        sim.wait()


@needs_simavr
def test_real_firmware_through_the_real_driver(simulated_board):
    from edge.servo.line import LineController
    from edge.servo.link import ActuatorFault, Link

    controller = LineController(Link(simulated_board.port, 115200, 0.5))
    assert (
        controller.wait_ready(3.0)
        == f"{define('FIRMWARE_NAME')} {define('FIRMWARE_VERSION')} (line protocol)"
    )
    controller.request("ERRORS")  # start from a clean log
    controller.move(0, 1700, 1.0)
    assert controller.request("POS 0") == ["0", "1700"]
    refusals = {
        "MOVE 0 3000": "3 pulse 3000 outside 900..2100",
        "MOVE 5 1500": "5 no channel 5",
        "FLY": "1 unknown command FLY",
        "MOVE x 1": "2 bad arguments",
        "X" * 60: "4 line too long",
        "LID ON D3 0 0": "3 pulse 0 outside 900..2100",  # a home of 0 is an error, never a silent HOLD
    }
    for request, words in refusals.items():
        with pytest.raises(ActuatorFault, match=words):
            controller.request(request)
    assert controller.request("ERRORS") == ["6", "3", "5", "1", "2", "4", "3"]
    assert controller.request("POS 0") == ["0", "1700"]  # refused moves moved nothing
    controller.close()


@needs_simavr
def test_servo_cycle_cli_against_the_simulated_board(simulated_board, tmp_path, capsys):
    from edge.service.cli import main

    config = tmp_path / "smartbin.yaml"
    config.write_text(f"servo:\n  protocol: line\n  port: {simulated_board.port}\n  dwell_s: 0\n")
    assert main(["servo", "cycle", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "smartbin-servo 0.1.0" in out
    assert sum(line.startswith("ok ") for line in out.splitlines()) == 4


@needs_simavr
def test_the_button_on_d2_reaches_the_driver_as_one_event(simulated_board):
    import time

    from edge.servo.line import LineController
    from edge.servo.link import Link

    controller = LineController(Link(simulated_board.port, 115200, 0.5))
    controller.wait_ready(3.0)
    assert controller.events() == []
    simulated_board.press_button()
    deadline = time.monotonic() + 10
    events: list[str] = []
    while not events and time.monotonic() < deadline:
        events = controller.events()
        time.sleep(0.05)
    assert events == ["BUTTON"]  # one press, debounced: one event
    controller.move(0, 1500, 1.0)  # requests still work after it
    time.sleep(0.5)
    assert controller.events() == []
    controller.close()


@needs_simavr
def test_a_long_press_is_its_own_event(simulated_board):
    """Held 2.5 s: ``BUTTON_LONG`` (the bins were emptied), and no ``BUTTON`` (no sort) with it."""
    import time

    from edge.servo.line import LineController
    from edge.servo.link import Link

    controller = LineController(Link(simulated_board.port, 115200, 0.5))
    controller.wait_ready(3.0)
    controller.events()
    simulated_board.press_button(2500)
    deadline = time.monotonic() + 30
    events: list[str] = []
    while not events and time.monotonic() < deadline:
        events = controller.events()
        time.sleep(0.05)
    assert events == ["BUTTON_LONG"]
    simulated_board.press_button(1500)  # under LONG_PRESS_MS: a short press
    deadline = time.monotonic() + 30
    events = []
    while not events and time.monotonic() < deadline:
        events = controller.events()
        time.sleep(0.05)
    assert events == ["BUTTON"]
    controller.close()


def lid_events(controller, want: list[str], within_s: float = 10.0) -> list[str]:
    import time

    deadline, seen = time.monotonic() + within_s, []
    while len(seen) < len(want) and time.monotonic() < deadline:
        seen += [e for e in controller.events() if e.startswith("LID_")]
        time.sleep(0.02)
    return seen


@pytest.fixture()
def guarded(simulated_board):
    """The real driver on the simulated board, lid closed, interlock on D3 off again afterwards."""
    from edge.servo.line import LineController
    from edge.servo.link import Link

    simulated_board.lid(open=False)
    controller = LineController(Link(simulated_board.port, 115200, 0.5))
    controller.wait_ready(3.0)
    controller.request("LID OFF")
    controller.move(0, 1000, 1.0)
    controller.events()
    yield controller
    simulated_board.lid(open=False)
    controller.request("LID OFF")
    controller.close()


@needs_simavr
def test_the_interlock_is_off_until_asked_and_refuses_a_move_while_the_lid_is_open(simulated_board, guarded):
    from edge.servo.link import LidOpen

    assert guarded.request("LID?") == ["LID", "OFF"]
    simulated_board.lid(open=True)  # off: today's firmware, the switch means nothing
    guarded.move(0, 1100, 1.0)
    assert guarded.lid() is None and guarded.events() == []
    assert guarded.enable_interlock("D3", 0, 1000) is True
    with pytest.raises(LidOpen, match="lid open"):
        guarded.move(0, 1700, 1.0)
    with pytest.raises(LidOpen, match="8 lid open"):  # the firmware's own check, not only the host's
        guarded.request("MOVE 0 1700")
    assert guarded.request("POS 0") == ["0", "1100"] and simulated_board.pulse() == (1100, True)
    simulated_board.lid(open=False)
    assert lid_events(guarded, ["LID_CLOSED"]) == ["LID_CLOSED"]
    guarded.move(0, 1700, 2.0)  # ramps, and is confirmed once POS reads the target
    assert simulated_board.pulse() == (1700, True)
    simulated_board.lid(open=True)
    assert lid_events(guarded, ["LID_OPEN"]) == ["LID_OPEN"]  # one debounced event per change
    assert guarded.lid() is True


@needs_simavr
@pytest.mark.parametrize("stop", ["home", "hold"])
def test_a_move_under_way_is_stopped_when_the_lid_opens(simulated_board, guarded, stop):
    import time

    from edge.servo.link import LidOpen

    guarded.enable_interlock("D3", 0, 1000 if stop == "home" else None)
    simulated_board.open_lid_at(1400)
    with pytest.raises(LidOpen, match="lid opened during the move to 2000"):
        guarded.move(0, 2000, 3.0)
    time.sleep(0.5)  # whatever it does next, it has done it by now
    us, _ = simulated_board.pulse()
    if stop == "home":
        assert us == 1000  # back at the tray level
    else:
        assert 1400 <= us < 1600  # stopped a debounce past where the lid opened
        time.sleep(0.3)
        assert simulated_board.pulse()[0] == us  # and stays there (detached HOLD_MS later, as ever)
    assert guarded.request("POS 0") == ["0", str(us)]
    with pytest.raises(LidOpen):
        guarded.request("MOVE 0 2000")
    simulated_board.lid(open=False)
    assert lid_events(guarded, ["LID_OPEN", "LID_CLOSED"]) == ["LID_OPEN", "LID_CLOSED"]
    guarded.move(0, 2000, 3.0)  # closed again: the move goes through
    assert simulated_board.pulse() == (2000, True)


@needs_simavr
def test_an_interlock_pin_the_firmware_does_not_have_is_refused(guarded):
    from edge.servo.link import ActuatorFault

    with pytest.raises(ActuatorFault, match="7 no input pin D9"):
        guarded.enable_interlock("D9", 0, None)
    assert guarded.request("LID?") == ["LID", "OFF"]
