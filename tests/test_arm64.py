"""The bin's own CPU, emulated: the aarch64 release flash.sh builds, installed and run on a Raspberry Pi's
Python under qemu-user.

The "bin" is Debian 12's python3.11 for arm64 in a sysroot (scripts/arm64-sysroot) run by qemu-aarch64
as a Raspberry Pi 4 (cortex-a72: ARMv8.0, no LSE atomics) and a Raspberry Pi 5 (cortex-a76). What it
installs are the exact wheels `deploy/flash.sh --build-only` puts in the release for such a bin, with
pip running on the emulated Python itself and no index. Emulation proves that the wheels load together
and compute the same answers on that instruction set; it says nothing about a Pi's speed, its camera
drivers or its serial timing (docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Config
from edge.ledger import Ledger
from edge.servo.emulator import MaestroEmulator
from tests.broker import mosquitto_path, wait_for
from tests.conftest import GARBAGE12, REPO, SHARED, SHIPPED
from tests.test_daemon import NotifySocket, bin_moves
from tests.tray import choose_sure_photos, folder_bin, record_session, write_config

SYSROOT = Path(os.environ.get("SMARTBIN_ARM64_SYSROOT") or REPO / ".cache" / "arm64-sysroot")
CPUS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}
PHOTOS_PER_LABEL = 2  # of the shipped bundle's test split: 68 photos, about a minute per emulated CPU


def qemu_major() -> int:
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        return 0
    found = re.search(
        r"version (\d+)", subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    )
    return int(found.group(1)) if found else 0


pytestmark = [
    pytest.mark.skipif(qemu_major() == 0, reason="qemu-aarch64 absent: scripts/test installs qemu-user"),
    pytest.mark.skipif(
        0 < qemu_major() < 8, reason="qemu-user before 8 crashes inside LiteRT: scripts/test installs 10"
    ),
    pytest.mark.skipif(
        not (SYSROOT / ".complete").exists(), reason=f"no arm64 sysroot at {SYSROOT}: scripts/arm64-sysroot"
    ),
    pytest.mark.skipif(not GARBAGE12.is_dir(), reason=f"real photos absent: {GARBAGE12}"),
]


def emulated(cpu: str, program: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """``program`` (an aarch64 executable) run as on the ``cpu`` of a Raspberry Pi."""
    env = {**os.environ, "QEMU_LD_PREFIX": str(SYSROOT), "QEMU_CPU": cpu, **kwargs.pop("env", {})}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["qemu-aarch64", str(program), *args], env=env, capture_output=True, text=True, **kwargs
    )


def emulated_python(*args: str) -> str:
    result = emulated("cortex-a72", SYSROOT / "usr/bin/python3.11", *args, check=True)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def release() -> Path:
    """The release flash.sh builds for a bin that reports what the emulated one does."""
    python = emulated_python("-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    glibc = emulated_python("-c", "import platform; print(platform.libc_ver()[1])")
    result = subprocess.run(
        [str(REPO / "deploy/flash.sh"), "--build-only", f"aarch64:{python}:{glibc}"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    folder = Path(result.stdout.splitlines()[-1])
    wheels = sorted(p.name for p in (folder / "wheels").iterdir())
    assert any("aarch64" in name and name.startswith("ai_edge_litert") for name in wheels), wheels
    return folder


@pytest.fixture(scope="module")
def bin_python(release, tmp_path_factory) -> Path:
    """A venv of the emulated Python with the release installed by pip on that Python, from its wheels
    alone (``--no-index``), as the bin's own pip does it."""
    venv = tmp_path_factory.mktemp("arm64") / "venv"
    emulated_python("-m", "venv", "--without-pip", str(venv))
    (pip,) = (SYSROOT / "usr/share/python-wheels").glob("pip-*.whl")
    result = emulated(
        "cortex-a72",
        venv / "bin/python",
        f"{pip}/pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(release / "wheels"),
        "smartbin[edge]",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin/python"


@pytest.fixture(scope="module")
def parity_photos() -> list[Path]:
    """The first PHOTOS_PER_LABEL photos of each label in the shipped bundle's test split."""
    chosen: dict[str, list[Path]] = {}
    for photo in json.loads((SHIPPED / "test_split.json").read_text()):
        path = SHARED / photo["source"] / photo["path"]
        if path.is_file() and len(chosen.setdefault(photo["label"], [])) < PHOTOS_PER_LABEL:
            chosen[photo["label"]].append(path)
    return [path for paths in chosen.values() for path in paths]


def classify(command: list[str], photos: list[Path], **kwargs) -> dict[str, dict]:
    result = subprocess.run([*command, "-m", "edge", "classify", "--json", *map(str, photos)], **kwargs)
    assert result.returncode == 0, result.stderr[-3000:]
    return {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}


@pytest.mark.parametrize("cpu", list(CPUS))
def test_the_emulated_bin_gives_the_same_item_and_bin_as_x86(cpu, bin_python, parity_photos, capsys):
    """Item and bin of every photo equal x86's; int8 kernels may round differently in the last bit, so the
    probabilities are compared for the largest difference only, which is printed."""
    env = {**os.environ, "QEMU_LD_PREFIX": str(SYSROOT), "QEMU_CPU": cpu}
    env.pop("PYTHONPATH", None)
    arm = classify(["qemu-aarch64", str(bin_python)], parity_photos, env=env, capture_output=True, text=True)
    x86 = classify([sys.executable], parity_photos, capture_output=True, text=True)
    assert arm.keys() == x86.keys() and len(arm) == len(parity_photos)
    differ = [p for p in x86 if (arm[p]["item"], arm[p]["bin"]) != (x86[p]["item"], x86[p]["bin"])]
    assert not differ, f"{cpu}: item or bin differs from x86 on {differ}"
    largest = max(abs(arm[p]["bins"][b] - x86[p]["bins"][b]) for p in x86 for b in x86[p]["bins"])
    with capsys.disabled():
        print(
            f"\n  {cpu} ({CPUS[cpu]}): {len(x86)} photos, same item and bin; largest bin probability "
            f"difference {largest:.4f}"
        )


def test_eval_on_the_emulated_bin_scores_as_on_x86(bin_python, parity_photos, tmp_path):
    folder = tmp_path / "photos"
    for photo in parity_photos:
        (folder / photo.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / photo.parent.name / f"{photo.parent.parent.name}-{photo.name}").symlink_to(photo)
    command = ["-m", "edge", "eval", "--data", str(folder), "--json"]
    arm = emulated("cortex-a72", bin_python, *command)
    assert arm.returncode == 0, arm.stderr[-3000:]
    x86 = subprocess.run([sys.executable, *command], capture_output=True, text=True, check=True)
    assert json.loads(arm.stdout) == json.loads(x86.stdout)


@pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto absent: scripts/test installs it")
def test_smartbin_run_on_the_emulated_bin_sorts_and_stops_on_sigterm(bin_python, tmp_path, broker):
    """`smartbin run` on the emulated Pi 4: READY on the notify socket, a few photos (one per bin) on a
    recorded tray sorted through a Maestro emulated on a real pty, and a clean stop on SIGTERM."""
    photos = list({folder_bin(p): p for p in choose_sure_photos()}.values())
    record_session(tmp_path / "frames", photos)
    emulator = MaestroEmulator()
    config = write_config(tmp_path, tmp_path / "frames", emulator.port, broker, replay_fps=2)
    listener = NotifySocket(tmp_path / "notify.sock")
    env = {
        **os.environ,
        "QEMU_LD_PREFIX": str(SYSROOT),
        "QEMU_CPU": "cortex-a72",
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        ["qemu-aarch64", str(bin_python), "-m", "edge", "run", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "READY=1" in listener.fields(), timeout_s=120, what="READY from the emulated bin")
        wait_for(lambda: len(bin_moves(emulator, Config())) >= 2, timeout_s=240, what="two items sorted")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        emulator.stop()
        listener.close()
    assert process.returncode == 0, err[-3000:]
    moves = bin_moves(emulator, Config())
    assert moves == [folder_bin(p) for p in photos[: len(moves)]]
    assert sum(Ledger(tmp_path / "state" / "ledger.db").counts().values()) == len(moves)
    assert "STOPPING=1" in listener.fields() and "stopped:" in err
