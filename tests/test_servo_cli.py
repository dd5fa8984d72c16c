"""`smartbin servo` against emulated controllers on real ptys, and the shipped example config."""

import io

import pytest

from edge.config import Config, load_config
from edge.service.cli import main
from edge.servo.emulator import LineEmulator, MaestroEmulator
from tests.conftest import REPO

CONFIG = """\
# bin 7, third floor
device_id: bin-7
servo:
  protocol: {protocol}
  port: {port}      # the controller
  reply_timeout_s: 0.2
  move_timeout_s: 0.3
  dwell_s: 0
  startup_s: 0.5
  bins:
    recyclable: 1100   # left
    kitchen: 1300
    hazardous: 1700
    other: 1900
"""


@pytest.fixture(params=["maestro", "line"])
def rig(request, tmp_path):
    emu = (MaestroEmulator if request.param == "maestro" else LineEmulator)()
    path = tmp_path / "smartbin.yaml"
    path.write_text(CONFIG.format(protocol=request.param, port=emu.port))
    yield emu, path
    emu.stop()


def test_example_config_is_the_defaults():
    assert load_config(REPO / "config" / "smartbin.yaml") == Config()


def test_ping_move_cycle(rig, capsys):
    emu, path = rig
    assert main(["servo", "ping", "--config", str(path)]) == 0
    assert "controller:" in capsys.readouterr().out
    assert main(["servo", "move", "--bin", "kitchen", "--config", str(path)]) == 0
    assert "moved to kitchen (1300 µs) and back home (1500 µs)" in capsys.readouterr().out
    assert main(["servo", "cycle", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("ok")] == [
        "recyclable",
        "kitchen",
        "hazardous",
        "other",
    ]


def test_calibrate_steps_and_saves_keeping_comments(rig, monkeypatch, capsys):
    emu, path = rig
    monkeypatch.setattr("sys.stdin", io.StringIO("+\n++\n-\n5000\ns\n"))
    assert main(["servo", "calibrate", "--bin", "kitchen", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "5000 µs is outside the limits 1000–2000 µs; staying at 1350" in out
    text = path.read_text()
    assert "    kitchen: 1350\n" in text
    assert "# bin 7, third floor" in text and "# left" in text and "# the controller" in text
    assert load_config(path).servo.bins["kitchen"] == 1350
    assert load_config(path).device_id == "bin-7"


def test_calibrate_quit_leaves_the_file_alone(rig, monkeypatch):
    emu, path = rig
    before = path.read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("++\nq\n"))
    assert main(["servo", "calibrate", "--bin", "other", "--config", str(path)]) == 0
    assert path.read_text() == before


def test_silent_controller_is_one_clear_error(tmp_path, capsys):
    emu = MaestroEmulator("silent")
    path = tmp_path / "smartbin.yaml"
    path.write_text(CONFIG.format(protocol="maestro", port=emu.port))
    try:
        assert main(["servo", "ping", "--config", str(path)]) == 2
    finally:
        emu.stop()
    err = capsys.readouterr().err
    assert "servo fault" in err and "sent nothing" in err and "Traceback" not in err


def test_missing_port_and_bad_bin(tmp_path, capsys):
    assert main(["servo", "ping", "--port", str(tmp_path / "ttyUSB7")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["servo", "move"]) == 2
    assert "needs --bin" in capsys.readouterr().err


def test_maestro_speed_and_acceleration_are_sent_on_connect(tmp_path):
    emu = MaestroEmulator()
    path = tmp_path / "smartbin.yaml"
    path.write_text(CONFIG.format(protocol="maestro", port=emu.port) + "  speed: 140\n  acceleration: 3\n")
    try:
        assert main(["servo", "ping", "--config", str(path)]) == 0
    finally:
        emu.stop()
    assert [c.hex(" ") for c in emu.commands[:2]] == ["87 00 0c 01", "89 00 03 00"]
