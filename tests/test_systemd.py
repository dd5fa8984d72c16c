"""The unit file passes systemd-analyze verify, keeps its hardening, and the shell scripts pass shellcheck."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "smartbin.service"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@needs_analyze
def test_systemd_analyze_verify_passes(tmp_path):
    """As installed, except ExecStart points at this checkout's smartbin (systemd checks that it exists)."""
    release = tmp_path / "current" / "venv" / "bin"
    release.mkdir(parents=True)
    (release / "smartbin").symlink_to(Path(sys.executable).parent / "smartbin")
    unit = tmp_path / "smartbin.service"
    unit.write_text(UNIT.read_text().replace("/opt/smartbin/current", str(tmp_path / "current")))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
    )
    exposure = float(
        re.search(r"Overall exposure level for smartbin.service: ([\d.]+)", result.stdout).group(1)
    )
    assert exposure <= 2.0, result.stdout[-2000:]
    assert f"exposure level {exposure}" in (REPO / "docs" / "deploy.md").read_text()


def test_the_unit_has_what_the_service_needs():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"] and d["Restart"] == ["on-failure"] and "WatchdogSec" in d
    assert "StartLimitBurst" in d and "StartLimitIntervalSec" in d
    assert d["User"] == ["smartbin"] and d["SupplementaryGroups"] == ["dialout video"]
    assert d["StateDirectory"] == ["smartbin"] and d["ConfigurationDirectory"] == ["smartbin"]
    assert d["ExecStart"] == [
        "/opt/smartbin/current/venv/bin/smartbin run --config /etc/smartbin/smartbin.yaml"
    ]
    for key, value in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("DevicePolicy", "closed"),
    ]:
        assert d[key] == [value]
    assert {"char-ttyACM rw", "char-ttyUSB rw", "char-video4linux rw"} <= set(d["DeviceAllow"])
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck absent: scripts/test installs it")
def test_shell_scripts_are_shellcheck_clean():
    scripts = [REPO / "deploy" / "flash.sh", REPO / "deploy" / "remote.sh", REPO / ".ci" / "run"]
    scripts += sorted((REPO / "scripts").iterdir())
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
