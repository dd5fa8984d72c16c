"""The line-protocol firmware builds for an ATmega328P, and says what the host and emulator expect."""

import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO
from tests.emulators import LineEmulator

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
    for code in range(1, 7):
        assert re.search(rf"reply_error\({code}|log_error\({code}\)", SOURCE), code
        assert f"| {code} |" in spec
