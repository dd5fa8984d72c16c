"""The actuator over real pseudo-terminals, against emulators speaking the real byte protocols."""

from __future__ import annotations

import os
import stat
import threading
import time
import types
from dataclasses import replace
from functools import partial

import pytest

from edge.config import ServoConfig
from edge.errors import SmartbinError
from edge.retry import backoff_delay
from edge.servo.emulator import LineEmulator, MaestroEmulator
from edge.servo.line import LineController
from edge.servo.link import ActuatorFault, Link
from edge.servo.maestro import (
    MaestroController,
    decode_maestro_errors,
    get_errors,
    get_moving_state,
    get_position,
    set_acceleration,
    set_speed,
    set_target,
)
from edge.servo.protocols import open_controller
from edge.servo.supervisor import Actuator, Calibration, ServoSupervisor
from tests.broker import wait_for

CAL = Calibration(
    channel=0,
    home_us=1500,
    min_us=1000,
    max_us=2000,
    bins={"recyclable": 1100, "kitchen": 1300, "hazardous": 1700, "other": 1900},
    move_timeout_s=0.3,
    dwell_s=0.0,
)


@pytest.fixture()
def emulator(request):
    kind, mode = request.param
    emu = (MaestroEmulator if kind == "maestro" else LineEmulator)(mode)
    yield emu
    emu.stop()


def controller_for(emu, timeout_s: float = 0.2, device: int | None = None):
    link = Link(emu.port, 115200, timeout_s)
    return MaestroController(link, device) if isinstance(emu, MaestroEmulator) else LineController(link)


# --- encoding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel, us, expected",
    [
        (0, 1500, "84 00 70 2e"),  # the Pololu manual's example
        (5, 1000, "84 05 20 1f"),
        (23, 2000, "84 17 40 3e"),
        (1, 0, "84 01 00 00"),  # 0 = stop sending pulses
        (2, 31.75, "84 02 7f 00"),  # 127 quarter-µs: low byte full, high byte empty
        (2, 32, "84 02 00 01"),  # 128: the 7-bit carry
        (3, 4095.75, "84 03 7f 7f"),  # the largest 14-bit target
    ],
)
def test_set_target_bytes(channel, us, expected):
    assert set_target(channel, us).hex(" ") == expected


def test_other_commands_bytes():
    assert set_speed(1, 140).hex(" ") == "87 01 0c 01"
    assert set_acceleration(4, 3).hex(" ") == "89 04 03 00"
    assert get_position(2).hex(" ") == "90 02"
    assert get_moving_state().hex(" ") == "93"
    assert get_errors().hex(" ") == "a1"
    assert set_target(0, 1500, device=12).hex(" ") == "aa 0c 04 00 70 2e"
    assert get_position(2, device=12).hex(" ") == "aa 0c 10 02"
    with pytest.raises(ValueError):
        set_target(0, 4096)


def test_error_bits_decode_to_names():
    assert decode_maestro_errors(0) == []
    assert decode_maestro_errors(0b1) == ["serial signal error"]
    assert decode_maestro_errors(0b10010) == ["serial overrun error", "serial protocol error"]
    assert decode_maestro_errors(1 << 8) == ["script program counter error"]
    assert decode_maestro_errors(1 << 9) == ["unknown error bits 0x0200"]  # the first bit past the names
    assert decode_maestro_errors(1 << 12) == ["unknown error bits 0x1000"]


# --- happy paths --------------------------------------------------------------------


@pytest.mark.parametrize("emulator", [("maestro", "ok"), ("line", "ok")], indirect=True)
def test_sort_moves_to_the_bin_and_returns_home(emulator):
    actuator = Actuator(controller_for(emulator), CAL)
    assert "Maestro" in actuator.controller.ping() or "smartbin-servo 0.1.0" in actuator.controller.ping()
    actuator.sort("hazardous")
    if isinstance(emulator, MaestroEmulator):
        targets = [c.hex(" ") for c in emulator.commands if c[0] == 0x84]
        assert targets == [set_target(0, 1700).hex(" "), set_target(0, 1500).hex(" ")]
        assert emulator.positions[0] == 6000
    else:
        moves = [line for line in emulator.lines if line.startswith("MOVE")]
        assert moves == ["MOVE 0 1700", "MOVE 0 1500"]
    actuator.controller.close()


def test_addressed_protocol_reaches_only_its_board():
    with MaestroEmulator(device=12) as emu:
        ours = MaestroController(Link(emu.port, 115200, 0.2), device=12)
        ours.move(1, 1200, 0.3)
        assert emu.positions[1] == 4800
        other = MaestroController(Link(emu.port, 115200, 0.1), device=7)
        with pytest.raises(ActuatorFault, match="sent nothing"):
            other.move(1, 1800, 0.1)
        assert emu.positions[1] == 4800
        assert emu.commands and all(c[0] == 0xAA for c in emu.commands)  # the error check too


# --- limits -------------------------------------------------------------------------


@pytest.mark.parametrize("emulator", [("maestro", "ok")], indirect=True)
def test_targets_outside_the_limits_are_refused_not_clamped(emulator):
    bad = Calibration(0, 1500, 1000, 2000, {"other": 2400}, 0.3, 0.0)
    actuator = Actuator(controller_for(emulator), bad)
    with pytest.raises(ActuatorFault, match="bin 'other' target 2400 µs is outside the calibrated limits"):
        actuator.sort("other")
    with pytest.raises(ActuatorFault, match="^home target 2500 µs is outside"):
        Actuator(actuator.controller, replace(bad, home_us=2500)).home()
    with pytest.raises(ActuatorFault, match="no calibrated position"):
        actuator.sort("compost")
    assert not any(c[0] == 0x84 for c in emulator.commands)


# --- faults -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "emulator, words",
    [
        (("maestro", "silent"), "sent nothing"),
        (("maestro", "partial"), "sent 1 of 2 bytes"),
        (("maestro", "stuck"), "is at 1500 µs, not 1700 µs"),
        (("maestro", "errors"), "Maestro reports: serial overrun error"),
        (("line", "silent"), "sent nothing for MOVE"),
        (("line", "garbage"), "garbage"),
        (("line", "partial"), "partial reply"),
        (("line", "refuse"), "refused 'MOVE 0 1700': 3 pulse 1700 outside"),
    ],
    indirect=["emulator"],
)
def test_faults_are_named_and_never_reported_as_done(emulator, words):
    actuator = Actuator(controller_for(emulator), CAL)
    with pytest.raises(ActuatorFault) as fault:
        actuator.sort("hazardous")
    assert words in fault.value.reason


@pytest.mark.parametrize(
    "emulator", [("maestro", "unplug_on_move"), ("line", "unplug_on_move")], indirect=True
)
def test_port_vanishing_mid_move_is_a_failed_move(emulator):
    controller = controller_for(emulator)
    with pytest.raises(ActuatorFault) as fault:
        controller.move(0, 1700, 0.3)
    assert emulator.closed
    # which read or write meets the dead port first depends on timing; each names the port
    reason = fault.value.reason
    assert any(w in reason for w in ("vanished", "sent nothing", "failed while writing")), reason


def test_unplugging_during_a_dwell_fails_the_return_home():
    emu = MaestroEmulator()
    cal = Calibration(0, 1500, 1000, 2000, {"kitchen": 1300}, 0.3, dwell_s=0.3)
    actuator = Actuator(controller_for(emu), cal)
    threading.Timer(0.1, emu.unplug).start()
    with pytest.raises(ActuatorFault):
        actuator.sort("kitchen")
    emu.stop()


def test_missing_port_names_the_fix(tmp_path):
    with pytest.raises(SmartbinError) as err:
        Link(str(tmp_path / "ttyACM9"), 115200, 0.1)
    assert err.value.problem == f"serial port {tmp_path / 'ttyACM9'} does not exist"
    assert "/dev/serial/by-id" in err.value.fix


def test_forbidden_port_hints_at_dialout():
    """Opened as a user outside the pty's group, as the daemon's user is outside dialout."""
    emu = MaestroEmulator()
    os.chmod(emu.port, stat.S_IRUSR | stat.S_IWUSR)
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(65534)  # nobody; the real uid stays root, so it can come back
        with pytest.raises(SmartbinError) as err:
            Link(emu.port, 115200, 0.1)
    finally:
        if as_root:
            os.seteuid(0)
        emu.stop()
    assert "not permitted" in err.value.problem and "sudo usermod -aG dialout $USER" in err.value.fix


# --- supervision: the daemon's view -------------------------------------------------


def test_backoff_grows_is_capped_and_jittered():
    assert backoff_delay(0, 0.5, 30, rng=lambda: 0.0) == 0.25
    assert backoff_delay(3, 0.5, 30, rng=lambda: 1.0) == 4.0
    assert backoff_delay(20, 0.5, 30, rng=lambda: 1.0) == 30.0
    assert 15.0 <= backoff_delay(20, 0.5, 30) <= 30.0


def test_supervisor_survives_an_unplug_and_reconnects_through_the_stable_path(tmp_path, caplog):
    """The by-id symlink stays; the device behind it goes and comes back, as on a real USB replug."""
    caplog.set_level("INFO")
    by_id = tmp_path / "usb-Pololu_Maestro-if00"
    first = MaestroEmulator()
    by_id.symlink_to(first.port)
    supervisor = ServoSupervisor(
        lambda: MaestroController(Link(str(by_id), 115200, 0.2)), CAL, base_s=0.2, cap_s=0.2
    )
    supervisor.tip("kitchen")
    assert supervisor.fault is None

    first.mode = "unplug_on_move"
    with pytest.raises(ActuatorFault):
        supervisor.tip("kitchen")  # in flight when the port died: failed, not done
    assert supervisor.fault and supervisor.actuator is None
    with pytest.raises(ActuatorFault, match="offline .* next try in"):
        supervisor.tip("kitchen")
    assert caplog.text.count("servo fault:") == 1

    second = MaestroEmulator()
    by_id.unlink()
    by_id.symlink_to(second.port)
    wait_for(lambda: supervisor.ready, timeout_s=2, what="the reconnection backoff to pass")
    supervisor.tip("other")
    assert supervisor.fault is None
    assert [c[0] for c in second.commands].count(
        0x84
    ) == 1  # the tip: the daemon sends it home after counting
    assert "servo controller back" in caplog.text
    supervisor.close()
    first.stop()
    second.stop()


def test_supervisor_with_no_port_records_the_fault_and_the_fix(tmp_path):
    clock = [100.0]
    supervisor = ServoSupervisor(
        lambda: MaestroController(Link(str(tmp_path / "ttyACM0"), 115200, 0.1)), CAL, clock=lambda: clock[0]
    )
    with pytest.raises(ActuatorFault, match="does not exist"):
        supervisor.tip("kitchen")
    assert "/dev/serial/by-id" in supervisor.fault
    with pytest.raises(ActuatorFault, match="next try"):
        supervisor.tip("kitchen")
    clock[0] += 60
    with pytest.raises(ActuatorFault, match="does not exist"):
        supervisor.tip("kitchen")
    assert supervisor.retry.attempts == 2
    with pytest.raises(ActuatorFault, match="no calibrated position"):
        supervisor.tip("compost")
    assert supervisor.retry.attempts == 2


def test_button_events_are_kept_whether_they_arrive_between_or_before_replies():
    emu = LineEmulator()
    controller = LineController(Link(emu.port, 115200, 0.5))
    emu.press()
    wait_for(lambda: controller.link.port.in_waiting >= len(b"EVT BUTTON\n"), what="the event on the line")
    controller.move(0, 1500, 1.0)  # the event waiting on the line is not taken for the reply
    assert controller.events() == ["BUTTON"]
    emu.mode = "event_first"
    controller.move(0, 1600, 1.0)
    assert controller.events() == ["BUTTON"] and emu.positions[0] == 1600
    assert controller.events() == []
    emu.stop()


# --- opening the configured controller, and where it holds the tray --------------------


def test_open_controller_sets_the_maestros_speed_and_acceleration_on_its_own_board():
    from edge.config import ServoConfig
    from edge.servo.protocols import open_controller

    with MaestroEmulator(device=12) as emu:
        cfg = ServoConfig(
            port=emu.port, device_number=12, channel=2, speed=20, acceleration=5, tolerance_us=4
        )
        controller = open_controller(cfg)
        wait_for(lambda: len(emu.commands) >= 2, what="speed and acceleration")
        assert emu.commands[:2] == [set_speed(2, 20, 12), set_acceleration(2, 5, 12)]  # addressed to #12
        assert isinstance(controller, MaestroController)
        assert (controller.device, controller.tolerance_us) == (12, 4)
        controller.close()


def test_open_controller_waits_for_a_line_controller_and_gives_up_on_a_silent_one():
    from edge.config import ServoConfig
    from edge.servo.protocols import open_controller

    with LineEmulator() as emu:
        controller = open_controller(ServoConfig(port=emu.port, protocol="line", startup_s=0.5))
        assert isinstance(controller, LineController) and emu.lines[0] == "PING"
        controller.close()
        emu.mode = "silent"
        with pytest.raises(ActuatorFault, match="sent nothing for PING"):
            open_controller(ServoConfig(port=emu.port, protocol="line", startup_s=0.3, reply_timeout_s=0.1))


def test_the_calibration_is_the_configs_and_knows_a_bins_position_within_the_tolerance():
    from edge.config import ServoConfig

    cfg = ServoConfig(
        channel=3,
        home_us=1450,
        min_us=900,
        max_us=2100,
        bins={"kitchen": 1200.0, "other": 1800.0},
        move_timeout_s=1.5,
        dwell_s=0.4,
        tolerance_us=6,
    )
    cal = Calibration.from_config(cfg)
    assert cal == Calibration(3, 1450, 900, 2100, {"kitchen": 1200.0, "other": 1800.0}, 1.5, 0.4, 6)
    assert cal.at(1206, "kitchen") and cal.at(1194, "kitchen")
    assert not cal.at(1207, "kitchen") and not cal.at(1800, "kitchen") and not cal.at(1200, "compost")


@pytest.mark.parametrize("kind", ["maestro", "line"])
def test_the_controller_says_where_it_holds_the_tray(kind):
    with MaestroEmulator() if kind == "maestro" else LineEmulator() as emu:
        controller = controller_for(emu)
        controller.move(0, 1300, 0.3)
        assert controller.position_us(0) == 1300
        controller.close()


def test_a_garbled_position_answer_is_a_fault():
    with LineEmulator() as emu:
        controller = controller_for(emu)
        emu.reply = lambda line: emu.send(b"OK 0 far-away\n")
        with pytest.raises(ActuatorFault, match="answered POS 0 with '0 far-away'"):
            controller.position_us(0)


def test_the_supervisor_cannot_say_where_the_tray_is_while_the_controller_is_offline(tmp_path):
    supervisor = ServoSupervisor(lambda: MaestroController(Link(str(tmp_path / "ttyACM0"), 115200, 0.1)), CAL)
    assert supervisor.position_us() is None and "does not exist" in supervisor.fault


def test_every_maestro_command_has_an_addressed_form_for_a_daisy_chain():
    assert set_speed(2, 20, 12).hex(" ") == "aa 0c 07 02 14 00"
    assert set_acceleration(2, 5, 12).hex(" ") == "aa 0c 09 02 05 00"
    assert get_moving_state(12).hex(" ") == "aa 0c 13"
    assert get_errors(12).hex(" ") == "aa 0c 21"
    assert get_position(3, 0).hex(" ") == "aa 00 10 03"  # board 0 is a board, not "no board"
    assert get_errors(127).hex(" ") == "aa 7f 21"
    for device in (128, -1):
        with pytest.raises(ValueError, match="not 0..127"):
            get_errors(device)


# --- the serial link ------------------------------------------------------------------


def device_gone(link: Link) -> None:
    """The device behind an open port disappears: its descriptor fails every ioctl, as a hung-up USB tty's
    does (a pty's slave keeps answering after its master closes, so unplugging the emulator is not enough)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, link.port.fd)
    os.close(null)


def test_a_link_opens_its_port_at_the_configured_baud_rate():
    with MaestroEmulator() as emu:
        link = Link(emu.port, 57600, 0.2)
        assert link.port.baudrate == 57600
        link.close()


def test_a_write_nobody_reads_fails_instead_of_hanging_the_daemon():
    master, slave = os.openpty()  # a controller that takes nothing in: the line fills up
    link = Link(os.ttyname(slave), 115200, 0.2)
    reasons: list[str] = []

    def write() -> None:
        try:
            link.write(bytes(1 << 20))
        except ActuatorFault as fault:
            reasons.append(fault.reason)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(timeout=10)
    hung = writer.is_alive()
    os.close(master)  # ends a write that hangs, so that the test does not
    os.close(slave)
    link.close()
    assert not hung
    assert reasons and f"serial port {link.port_name} failed while writing" in reasons[0]


@pytest.mark.parametrize("kind", ["a directory", "a plain file"])
def test_a_port_that_cannot_be_opened_for_another_reason_says_so_and_points_at_the_cable(tmp_path, kind):
    port = tmp_path / "ttyACM0"
    if kind == "a directory":
        port.mkdir()
    else:
        port.write_text("")
    with pytest.raises(SmartbinError) as err:
        Link(str(port), 115200, 0.1)
    assert err.value.problem.startswith(f"serial port {port} cannot be opened: ")
    assert err.value.fix == "check the cable and the port"


def test_a_port_that_vanishes_while_an_answer_is_awaited_is_a_fault_naming_the_port():
    emu = LineEmulator()
    link = Link(emu.port, 115200, 0.2)
    emu.stop()
    for read in (lambda: link.readline("PING"), lambda: link.read(2, "get position")):
        with pytest.raises(ActuatorFault) as fault:
            read()
        assert fault.value.reason.startswith(f"serial port {emu.port} vanished while reading ")
    link.close()


def test_a_stale_byte_on_the_line_is_not_read_as_the_maestros_answer():
    with MaestroEmulator() as emu:
        controller = controller_for(emu)
        emu.send(b"\x07")
        wait_for(lambda: controller.link.port.in_waiting == 1, what="the stale byte")
        assert controller.position_us(0) == 1500
        controller.close()


# --- the Maestro's moves ----------------------------------------------------------------


def test_a_slow_servo_is_followed_until_it_arrives_and_confirmed_as_soon_as_it_does():
    with MaestroEmulator(travel_reads=3) as emu:
        controller = controller_for(emu)
        controller.move(0, 1700, 0.5)
        assert emu.positions[0] == 6800
        assert [c[0] for c in emu.commands] == [0x84, 0x90, 0x90, 0x90, 0x90, 0xA1]
        controller.close()


def test_a_servo_that_stops_exactly_the_tolerance_short_has_arrived_and_a_hair_further_has_not():
    with MaestroEmulator("stuck") as emu:
        controller = controller_for(emu)
        emu.positions[0] = 1690 * 4
        controller.move(0, 1700, 0.3)
        emu.positions[0] = 1690 * 4 - 1
        with pytest.raises(ActuatorFault, match="is at 1689.75 µs, not 1700 µs"):
            controller.move(0, 1700, 0.1)
        controller.close()


def test_the_calibrated_limits_themselves_are_allowed():
    cal = Calibration(0, 1500, 1000, 2000, {"first": 1000, "last": 2000})
    assert (cal.target("first"), cal.target("last")) == (1000, 2000)


def test_sort_reports_how_long_the_move_and_the_return_took(monkeypatch):
    """On a clock that only the servo moves: each confirmed move takes 250 ms of it."""
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(
        "edge.servo.supervisor.time", types.SimpleNamespace(monotonic=lambda: clock.now, sleep=time.sleep)
    )

    def moved(channel: int, pulse_us: float) -> None:
        clock.now += 0.25

    with LineEmulator(on_move=moved) as emu:
        actuator = Actuator(controller_for(emu), CAL)
        assert actuator.sort("hazardous") == {"move_ms": 250.0, "home_ms": 250.0}
        actuator.controller.close()


# --- the line protocol --------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, answer, fault",
    [
        ("PING", "HELLO THERE", "sent an unexpected reply to 'PING': 'HELLO THERE'"),
        ("MOVE", "ERR 3", "refused 'MOVE 0 1700': 3"),
        ("PING", "OK PONG", "answered PING with 'PONG', not PONG <name> <version>"),
        ("PING", "OK HELLO a b", "answered PING with 'HELLO a b', not PONG <name> <version>"),
        ("MOVE", "OK 0 1600", "confirmed '0 1600' for MOVE 0 1700"),
        ("POS", "OK 0 1500 7", "answered POS 0 with '0 1500 7'"),
    ],
)
def test_an_answer_the_protocol_does_not_allow_is_a_fault_that_quotes_it(command, answer, fault):
    with LineEmulator(answers={command: answer}) as emu:
        controller = controller_for(emu)
        ask = {
            "PING": controller.ping,
            "MOVE": lambda: controller.move(0, 1700, 1.0),
            "POS": lambda: controller.position_us(0),
        }[command]
        with pytest.raises(ActuatorFault) as raised:
            ask()
        assert fault in raised.value.reason
        controller.close()


def test_a_button_press_while_nothing_is_asked_is_reported():
    with LineEmulator() as emu:
        controller = controller_for(emu)
        emu.press()
        wait_for(lambda: controller.link.port.in_waiting == len(b"EVT BUTTON\n"), what="the event")
        assert controller.events() == ["BUTTON"]
        controller.close()


def test_a_button_press_just_before_the_answer_to_ping_is_kept_and_the_answer_read():
    with LineEmulator("event_first") as emu:
        controller = controller_for(emu)
        assert controller.ping() == "smartbin-servo 0.1.0 (line protocol)"
        assert controller.events() == ["BUTTON"]
        controller.close()


def test_a_button_line_that_arrives_in_two_pieces_between_polls_is_reported_once():
    with LineEmulator() as emu:
        controller = controller_for(emu)
        emu.send(b"EVT BU")
        wait_for(lambda: controller.link.port.in_waiting == 6, what="the first piece")
        assert controller.events() == []
        emu.send(b"TTON\n")
        wait_for(lambda: controller.link.port.in_waiting == 5, what="the second piece")
        assert controller.events() == ["BUTTON"]
        assert controller.events() == []
        controller.close()


def test_a_line_begun_before_a_command_and_finished_just_ahead_of_the_reply_is_read_whole():
    with LineEmulator() as emu:
        controller = controller_for(emu)
        emu.send(b"EVT BU")
        wait_for(lambda: controller.link.port.in_waiting == 6, what="the first piece")
        emu.before_next_reply = b"TTON\n"
        controller.move(0, 1600, 1.0)
        assert controller.events() == ["BUTTON"] and emu.positions[0] == 1600
        controller.close()


def test_line_noise_that_is_not_ascii_is_dropped_between_requests():
    with LineEmulator() as emu:
        controller = controller_for(emu)
        emu.send(b"\xff\xfe\x00noise\nEVT BUTTON\n")
        wait_for(lambda: controller.link.port.in_waiting == 20, what="the noise and the event")
        assert controller.events() == ["BUTTON"]
        emu.send(b"\xc3\x28\n")
        wait_for(lambda: controller.link.port.in_waiting == 3, what="more noise")
        controller.move(0, 1600, 1.0)
        assert emu.positions[0] == 1600
        controller.close()


def test_a_line_controller_is_pinged_until_its_bootloader_has_finished():
    with LineEmulator(lost_while_booting=2) as emu:
        controller = LineController(Link(emu.port, 115200, 0.1))
        assert controller.wait_ready(startup_s=10) == "smartbin-servo 0.1.0 (line protocol)"
        assert emu.lines == ["PING", "PING", "PING"]
        controller.close()


# --- the supervisor: backoff, logs, and each way in -----------------------------------------


@pytest.fixture()
def top_of_the_jitter(monkeypatch):
    """The real backoff, with its random half pinned at its largest: each delay is its whole step."""
    monkeypatch.setattr("edge.retry.backoff_delay", partial(backoff_delay, rng=lambda: 1.0))


def offline_delays(supervisor: ServoSupervisor, clock: list[float], failures: int) -> list[float]:
    """How long the supervisor waits after each of ``failures`` failed connections, each tried when due."""
    delays = []
    for _ in range(failures):
        clock[0] = supervisor.retry.retry_at
        with pytest.raises(ActuatorFault, match="does not exist"):
            supervisor.tip("kitchen")
        delays.append(supervisor.retry.retry_at - clock[0])
    return delays


@pytest.mark.parametrize(
    "limits, delays",
    [
        ({}, [0.5, 1, 2, 4, 8, 16, 30, 30]),  # the daemon's: the first retry within 0.25-0.5 s
        ({"base_s": 0.25, "cap_s": 1.5}, [0.25, 0.5, 1, 1.5, 1.5]),
    ],
)
def test_the_supervisor_waits_longer_after_each_failure_up_to_its_cap(
    tmp_path, top_of_the_jitter, limits, delays
):
    clock = [100.0]
    missing = str(tmp_path / "ttyACM0")
    supervisor = ServoSupervisor(
        lambda: MaestroController(Link(missing, 115200, 0.1)), CAL, clock=lambda: clock[0], **limits
    )
    assert offline_delays(supervisor, clock, len(delays)) == delays


def test_a_first_connection_is_not_logged_as_a_reconnection(caplog):
    caplog.set_level("INFO")
    with MaestroEmulator() as emu:
        supervisor = ServoSupervisor(lambda: controller_for(emu), CAL)
        assert supervisor.fault is None
        supervisor.tip("kitchen")
        assert "servo controller back" not in caplog.text
        supervisor.close()


def test_a_reconnection_is_logged_once_and_the_next_failure_starts_the_backoff_afresh(
    tmp_path, caplog, top_of_the_jitter
):
    caplog.set_level("INFO")
    clock = [100.0]
    by_id = tmp_path / "usb-Pololu_Maestro-if00"
    supervisor = ServoSupervisor(
        lambda: MaestroController(Link(str(by_id), 115200, 0.1)),
        CAL,
        clock=lambda: clock[0],
    )
    with pytest.raises(ActuatorFault):
        supervisor.tip("kitchen")
    assert f"servo fault: serial port {by_id} does not exist" in caplog.text
    emu = MaestroEmulator()
    try:
        by_id.symlink_to(emu.port)
        clock[0] = supervisor.retry.retry_at
        supervisor.tip("kitchen")
        assert caplog.text.count("servo controller back after 1 failed attempts") == 1
        supervisor.tip("other")
        assert caplog.text.count("servo controller back") == 1
        emu.mode = "silent"
        with pytest.raises(ActuatorFault, match="sent nothing"):
            supervisor.tip("kitchen")
        assert supervisor.retry.retry_at - clock[0] == 0.5
    finally:
        supervisor.close()
        emu.stop()


def test_a_controller_that_fails_its_first_ping_is_a_fault_with_the_reason():
    with LineEmulator("silent") as emu:
        cfg = ServoConfig(port=emu.port, protocol="line", startup_s=0.1, reply_timeout_s=0.1)
        supervisor = ServoSupervisor(lambda: open_controller(cfg), CAL)
        with pytest.raises(ActuatorFault, match="sent nothing for PING"):
            supervisor.tip("kitchen")
        assert "sent nothing for PING" in supervisor.fault


def test_closing_the_supervisor_closes_the_port_and_a_later_tip_opens_it_again():
    emu = MaestroEmulator()
    links: list[Link] = []

    def connect() -> MaestroController:
        links.append(Link(emu.port, 115200, 0.2))
        return MaestroController(links[-1])

    try:
        supervisor = ServoSupervisor(connect, CAL)
        supervisor.tip("kitchen")
        supervisor.close()
        assert not links[0].port.is_open and supervisor.actuator is None
        supervisor.tip("other")
        assert len(links) == 2 and emu.positions[0] == 1900 * 4
        supervisor.close()
    finally:
        emu.stop()


def test_the_supervisor_says_where_the_tray_is_and_records_a_controller_that_goes_silent():
    with MaestroEmulator() as emu:
        supervisor = ServoSupervisor(lambda: controller_for(emu), CAL)
        supervisor.tip("kitchen")
        assert supervisor.position_us() == 1300
        emu.mode = "silent"
        assert supervisor.position_us() is None
        assert "sent nothing for get position" in supervisor.fault and supervisor.actuator is None


def test_the_supervisors_events_come_from_the_connected_controller_and_a_failed_poll_is_a_fault():
    with LineEmulator() as emu:
        supervisor = ServoSupervisor(lambda: controller_for(emu), CAL)
        assert supervisor.events() == []  # not connected yet
        supervisor.tip("kitchen")
        emu.press()
        wait_for(lambda: supervisor.actuator.controller.link.port.in_waiting > 0, what="the event")
        assert supervisor.events() == ["BUTTON"]
        device_gone(supervisor.actuator.controller.link)
        assert supervisor.events() == []
        assert f"serial port {emu.port} vanished" in supervisor.fault and supervisor.actuator is None


def test_home_now_tries_at_once_whatever_the_backoff_and_plain_home_waits(tmp_path):
    clock = [100.0]
    by_id = tmp_path / "usb-Pololu_Maestro-if00"
    supervisor = ServoSupervisor(
        lambda: MaestroController(Link(str(by_id), 115200, 0.1)),
        CAL,
        clock=lambda: clock[0],
    )
    with pytest.raises(ActuatorFault, match="does not exist"):
        supervisor.home()
    emu = MaestroEmulator()
    try:
        by_id.symlink_to(emu.port)
        with pytest.raises(ActuatorFault, match="offline .* next try in"):
            supervisor.home()
        supervisor.home(now=True)
        assert emu.positions[0] == 1500 * 4
        emu.mode = "silent"
        with pytest.raises(ActuatorFault):
            supervisor.home()
        assert "sent nothing" in supervisor.fault
    finally:
        supervisor.close()
        emu.stop()


def test_a_failed_return_home_drops_the_connection_with_the_reason():
    with MaestroEmulator() as emu:
        supervisor = ServoSupervisor(lambda: controller_for(emu), CAL)
        supervisor.tip("kitchen")
        supervisor.return_home()
        assert emu.positions[0] == 1500 * 4
        supervisor.tip("kitchen")
        emu.mode = "stuck"
        with pytest.raises(ActuatorFault, match="is at 1300 µs, not 1500 µs"):
            supervisor.return_home()
        assert "is at 1300 µs" in supervisor.fault and supervisor.actuator is None


def test_an_unknown_protocol_is_refused_with_the_known_ones_never_taken_for_another():
    from edge.config import ServoConfig, parse_config
    from edge.errors import SmartbinError

    with pytest.raises(SmartbinError) as opened:
        open_controller(ServoConfig(protocol="pololu", port="/dev/null"))
    assert "'pololu' is unknown" in str(opened.value) and "maestro, line" in opened.value.fix
    with pytest.raises(SmartbinError) as validated:
        parse_config({"servo": {"protocol": "pololu"}})
    assert "servo.protocol = 'pololu'" in str(validated.value) and "maestro, line" in str(validated.value)


def test_a_protocol_added_to_the_registry_is_opened_validated_and_described(monkeypatch):
    """A new controller protocol is one registry entry: config validation, its reference and
    open_controller all read the same table."""
    from edge.config import Config, parse_config
    from edge.schema import describe
    from edge.servo.protocols import PROTOCOLS, ServoProtocol

    reference = describe(Config)
    assert all(f"{p.name} ({p.help})" in reference for p in PROTOCOLS.values())
    opened = []
    monkeypatch.setitem(PROTOCOLS, "test", ServoProtocol("test", "a test board", opened.append))
    config = parse_config({"servo": {"protocol": "test", "port": "/dev/ttyTEST"}})
    open_controller(config.servo)
    assert [cfg.port for cfg in opened] == ["/dev/ttyTEST"]
