"""The interlock (a lid, door or light-curtain switch) in the daemon: a move the controller refused or
stopped because the lid is open holds the item on the tray (a ``tray`` fault saying "lid open"), is
never counted, and the item is sorted once when the lid closes. Real parts: the shipped model, a
simulated tray, the line firmware and the Maestro emulated on real ptys, a real ledger. (The firmware
itself under simavr: tests/test_firmware.py.)"""

from __future__ import annotations

import pytest

from edge.camera.simulation import SimulatedTray
from edge.ledger import Ledger
from edge.service.daemon import Daemon
from edge.servo.emulator import LineEmulator, MaestroEmulator
from edge.servo.link import ActuatorFault, LidOpen, Link
from edge.servo.maestro import MaestroController, set_target
from tests.broker import wait_for
from tests.test_daemon import Running, config_for

LID_CHANNEL = 5


def line_bin(tmp_path, stop: str = "home"):
    tray = SimulatedTray(synthetic=1, fps=0)
    emulator = LineEmulator(on_move=tray.servo_moved)
    config = config_for(tmp_path, emulator.port)
    config.servo.protocol, config.servo.interlock, config.servo.interlock_stop = "line", "D3", stop
    return tray, emulator, config


def maestro_bin(tmp_path, stop: str = "home"):
    tray = SimulatedTray(synthetic=1, fps=0)
    emulator = MaestroEmulator(on_move=tray.servo_moved, travel_reads=3, inputs={LID_CHANNEL: 0})
    config = config_for(tmp_path, emulator.port)
    config.servo.interlock, config.servo.interlock_stop = LID_CHANNEL, stop
    return tray, emulator, config


def held_then_sorted_once(daemon: Daemon, config, open_lid, close_lid) -> None:
    """The item waits on the tray while the lid is open, never counted; sorted once after it closes."""
    seen = []
    daemon.on_sorted = seen.append
    running = Running(daemon)
    wait_for(
        lambda: daemon.started and "lid open" in daemon.faults().get("tray", ""),
        what="the item held for the lid",
    )
    assert "held on the tray" in daemon.status()["faults"]["tray"]
    assert "lid open" in daemon.status_text()
    assert seen == [] and Ledger(config.ledger.path).counts() == {}
    assert "servo" not in daemon.faults()  # the lid, not the controller
    close_lid()
    assert running.join() == 0
    assert len(seen) == 1
    assert sum(Ledger(config.ledger.path).counts().values()) == 1
    assert "tray" not in daemon.faults()


def guarded_bin_moves(lines: list[str], config) -> list[str]:
    bins = {f"MOVE 0 {round(us)}" for us in config.servo.bins.values()}
    return [line for line in lines if line in bins]


def test_line_an_item_waits_while_the_lid_is_open_and_is_sorted_once_it_closes(tmp_path):
    tray, emulator, config = line_bin(tmp_path)
    with emulator:
        emulator.lid_is_open = True
        daemon = Daemon(config, opener=lambda cfg: tray)
        held_then_sorted_once(daemon, config, emulator.open_lid, emulator.close_lid)
        assert emulator.lines[1:2] == ["LID ON D3 0 1500"]  # at connect, after the PING
        assert len(guarded_bin_moves(emulator.lines, config)) == 1  # never tried while open


@pytest.mark.parametrize("stop", ["home", "hold"])
def test_line_a_move_the_firmware_stopped_is_not_counted_and_is_sorted_once_the_lid_closes(tmp_path, stop):
    tray, emulator, config = line_bin(tmp_path, stop)
    with emulator:
        emulator.open_on_move = {round(us) for us in config.servo.bins.values()}
        daemon = Daemon(config, opener=lambda cfg: tray)
        held_then_sorted_once(daemon, config, emulator.open_lid, emulator.close_lid)
        assert emulator.lines[1] == f"LID ON D3 0 {'1500' if stop == 'home' else 'HOLD'}"
        assert len(guarded_bin_moves(emulator.lines, config)) == 2  # stopped once, then done


@pytest.mark.parametrize("stop", ["home", "hold"])
def test_maestro_a_move_stopped_by_the_lid_is_not_counted_and_is_sorted_once_it_closes(tmp_path, stop):
    """servo.interlock_stop: home sends the tray home at once; hold stops it where it got to."""
    tray, emulator, config = maestro_bin(tmp_path, stop)
    with emulator:
        emulator.open_lid_after_reads = 2  # the lid opens while the servo is on its way
        daemon = Daemon(config, opener=lambda cfg: tray)
        held_then_sorted_once(daemon, config, emulator.open_lid, emulator.close_lid)
        targets = [f[2] | f[3] << 7 for f in emulator.commands if f[0] == 0x84]
        bins = {round(us * 4) for us in config.servo.bins.values()}
        first_bin = next(i for i, t in enumerate(targets) if t in bins)
        if stop == "home":
            assert targets[first_bin + 1] == 1500 * 4  # stopped: sent home at once
        else:  # stopped where it had got to, between home and the bin
            assert (
                min(1500 * 4, targets[first_bin]) < targets[first_bin + 1] < max(1500 * 4, targets[first_bin])
            )
        assert sum(t in bins for t in targets) == 2


def test_an_item_taken_off_while_the_lid_is_open_is_never_tipped_or_counted(tmp_path):
    """Someone takes the waiting item out through the open lid: closing the lid tips nothing."""
    tray, emulator, config = line_bin(tmp_path)
    with emulator:
        emulator.lid_is_open = True
        seen = []
        daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
        running = Running(daemon)
        held = lambda: daemon.started and "lid open" in daemon.faults().get("tray", "")  # noqa: E731
        wait_for(held, what="the item held for the lid")
        with tray._lock:
            tray.current, tray._gap = None, 10**9  # taken out by hand; no next item comes
        wait_for(lambda: daemon.pending is None, what="the move closed")
        assert "tray" not in daemon.faults() and daemon.ledger.moving() == []
        emulator.close_lid()
        wait_for(lambda: emulator.lines.count("LID?") >= 3, what="the loop going on")
        assert running.stop() == 0
        assert seen == [] and guarded_bin_moves(emulator.lines, config) == []
    assert Ledger(config.ledger.path).counts() == {}


def test_maestro_a_lid_open_at_the_start_holds_the_item_until_it_closes(tmp_path):
    tray, emulator, config = maestro_bin(tmp_path)
    with emulator:
        emulator.open_lid()
        daemon = Daemon(config, opener=lambda cfg: tray)
        held_then_sorted_once(daemon, config, emulator.open_lid, emulator.close_lid)


@pytest.mark.parametrize("kind", ["line-silent", "line-garbage", "maestro-silent", "maestro-garbage"])
def test_an_interlock_that_never_answers_is_a_servo_fault_and_nothing_moves(tmp_path, kind):
    protocol, mode = kind.split("-")
    tray, emulator, config = (line_bin if protocol == "line" else maestro_bin)(tmp_path)
    with emulator:
        if protocol == "line":
            emulator.lid_mode = mode
        else:
            emulator.input_mode = mode
        seen = []
        daemon = Daemon(config, opener=lambda cfg: tray, on_sorted=seen.append)
        running = Running(daemon)
        wait_for(lambda: daemon.started and "servo" in daemon.faults(), what="a servo fault")
        assert any(word in daemon.faults()["servo"] for word in ("LID?", "interlock"))
        assert running.stop() == 0
    assert seen == [] and Ledger(config.ledger.path).counts() == {}
    if protocol == "line":
        assert guarded_bin_moves(emulator.lines, config) == []
    else:
        assert not any(f[0] == 0x84 and (f[2] | f[3] << 7) != 1500 * 4 for f in emulator.commands)


def test_the_maestro_reads_the_input_before_and_during_a_move_and_holds_where_it_stopped():
    with MaestroEmulator(travel_reads=4, inputs={LID_CHANNEL: 0}) as emulator:
        controller = MaestroController(
            Link(emulator.port, 115200, 0.2), None, 10.0, interlock=LID_CHANNEL, stop_us=None
        )
        controller.move(0, 1500, 1.0)
        emulator.open_lid()
        with pytest.raises(LidOpen, match="was not started"):
            controller.move(0, 1900, 1.0)
        assert emulator.targets[0] == 1500 * 4  # never commanded
        emulator.close_lid()
        emulator.open_lid_after_reads = 2
        with pytest.raises(LidOpen, match="lid opened during the move to 1900"):
            controller.move(0, 1900, 1.0)
        wait_for(lambda: emulator.commands[-1][0] == 0x84, what="the stop reaching the board")
        held = emulator.commands[-1]  # the stop: a new target, where the servo had got to
        assert held[0] == 0x84 and 1500 * 4 < (held[2] | held[3] << 7) < 1900 * 4
        assert held == set_target(0, emulator.positions[0] / 4)
        emulator.input_mode = "garbage"
        with pytest.raises(ActuatorFault, match="reads 65535"):
            controller.lid()
        controller.close()
