"""The actuator over real pseudo-terminals, against emulators speaking the real byte protocols."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from edge.actuator import (
    Actuator,
    ActuatorFault,
    Calibration,
    LineController,
    Link,
    MaestroController,
    ServoSupervisor,
    decode_maestro_errors,
    get_errors,
    get_moving_state,
    get_position,
    set_acceleration,
    set_speed,
    set_target,
)
from edge.backoff import backoff_delay
from edge.errors import SmartbinError
from edge.servo_emulator import LineEmulator, MaestroEmulator
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
    emu = MaestroEmulator(device=12)
    try:
        ours = MaestroController(Link(emu.port, 115200, 0.2), device=12)
        ours.move(1, 1200, 0.3)
        assert emu.positions[1] == 4800
        other = MaestroController(Link(emu.port, 115200, 0.1), device=7)
        with pytest.raises(ActuatorFault, match="sent nothing"):
            other.move(1, 1800, 0.1)
        assert emu.positions[1] == 4800
    finally:
        emu.stop()


# --- limits -------------------------------------------------------------------------


@pytest.mark.parametrize("emulator", [("maestro", "ok")], indirect=True)
def test_targets_outside_the_limits_are_refused_not_clamped(emulator):
    bad = Calibration(0, 1500, 1000, 2000, {"other": 2400}, 0.3, 0.0)
    actuator = Actuator(controller_for(emulator), bad)
    with pytest.raises(ActuatorFault, match="2400 µs is outside the calibrated limits 1000–2000"):
        actuator.sort("other")
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
        (("line", "silent"), "sent nothing"),
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
    assert "does not exist" in err.value.problem and "/dev/serial/by-id" in err.value.fix


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
    assert "not permitted" in err.value.problem and "dialout" in err.value.fix


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
    assert supervisor.attempts == 2
    with pytest.raises(ActuatorFault, match="no calibrated position"):
        supervisor.tip("compost")
    assert supervisor.attempts == 2


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
    from edge.actuator import open_controller
    from edge.config import ServoConfig

    emu = MaestroEmulator(device=12)
    try:
        cfg = ServoConfig(
            port=emu.port, device_number=12, channel=2, speed=20, acceleration=5, tolerance_us=4
        )
        controller = open_controller(cfg)
        wait_for(lambda: len(emu.commands) >= 2, what="speed and acceleration")
        assert emu.commands[:2] == [set_speed(2, 20, 12), set_acceleration(2, 5, 12)]  # addressed to #12
        assert isinstance(controller, MaestroController)
        assert (controller.device, controller.tolerance_us) == (12, 4)
        controller.close()
    finally:
        emu.stop()


def test_open_controller_waits_for_a_line_controller_and_gives_up_on_a_silent_one():
    from edge.actuator import open_controller
    from edge.config import ServoConfig

    emu = LineEmulator()
    try:
        controller = open_controller(ServoConfig(port=emu.port, protocol="line", startup_s=0.5))
        assert isinstance(controller, LineController) and emu.lines[0] == "PING"
        controller.close()
        emu.mode = "silent"
        with pytest.raises(ActuatorFault, match="sent nothing for PING"):
            open_controller(ServoConfig(port=emu.port, protocol="line", startup_s=0.3, reply_timeout_s=0.1))
    finally:
        emu.stop()


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
    emu = MaestroEmulator() if kind == "maestro" else LineEmulator()
    try:
        controller = controller_for(emu)
        controller.move(0, 1300, 0.3)
        assert controller.position_us(0) == 1300
        controller.close()
    finally:
        emu.stop()


def test_a_garbled_position_answer_is_a_fault():
    emu = LineEmulator()
    try:
        controller = controller_for(emu)
        emu.reply = lambda line: emu.send(b"OK 0 far-away\n")
        with pytest.raises(ActuatorFault, match="answered POS 0 with '0 far-away'"):
            controller.position_us(0)
    finally:
        emu.stop()


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
