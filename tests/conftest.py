"""Shared fixtures: real photos from ../shared, a tiny real training run, the shipped bundle.

The photos are in ``../shared/datasets`` beside the checkout, the ImageNet weights in
``../shared/weights``. ``SMARTBIN_DATA`` moves both: it names the datasets folder, and the weights
are looked for in ``weights/`` beside it (its parent's), as ../shared lays them out.
``SMARTBIN_WEIGHTS`` (the weights file itself, as ``smartbin-train`` reads it) overrides that.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SMARTBIN_DATA") or REPO.parent / "shared" / "datasets")
GARBAGE12 = SHARED / "garbage12"
GARBAGE26CN = SHARED / "garbage26cn"
TRASHNET = SHARED / "trashnet-trash"
WEIGHTS = Path(
    os.environ.get("SMARTBIN_WEIGHTS")
    or SHARED.parent / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
)
SHIPPED = REPO / "models" / "household38-mnv2"
TINY_CLASSES = ("battery", "biological", "clothes")
# The tiny run's second folder: battery merges with garbage12's, paint-bucket is its own label.
TINY_CN_CLASSES = ("battery", "paint-bucket")
TINY_LABELS = sorted({*TINY_CLASSES, *TINY_CN_CLASSES, "trash"})

needs_data = pytest.mark.skipif(
    not GARBAGE12.is_dir(), reason=f"real photos absent: {GARBAGE12} (set SMARTBIN_DATA)"
)
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"ImageNet weights absent: {WEIGHTS} (set SMARTBIN_WEIGHTS)"
)


def real_photos(label: str, n: int, source: Path = GARBAGE12) -> list[Path]:
    return sorted((source / label).iterdir())[:n]


def shipped_bundle_with(folder: Path, drop: tuple[str, ...] = (), **meta) -> Path:
    """A copy of the shipped bundle in ``folder``, its model.json with ``meta`` set (json writes NaN too)
    and the blocks named in ``drop`` removed (a bundle made before them)."""
    import json

    copy = Path(shutil.copytree(SHIPPED, folder / "bundle"))
    data = json.loads((copy / "model.json").read_text())
    data.update(meta)
    for key in drop:
        del data[key]
    (copy / "model.json").write_text(json.dumps(data))
    return copy


def make_photo_folder(root: Path, per_class: int, classes=TINY_CLASSES, source: Path = GARBAGE12) -> Path:
    """A labelled folder of real photos (symlinks into ../shared, nothing copied into the repo)."""
    for label in classes:
        (root / label).mkdir(parents=True)
        for photo in real_photos(label, per_class, source):
            (root / label / photo.name).symlink_to(photo)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    if not GARBAGE12.is_dir():
        pytest.skip(f"real photos absent: {GARBAGE12}")
    return make_photo_folder(tmp_path_factory.mktemp("tiny") / "garbage12", per_class=14)


@pytest.fixture(scope="session")
def tiny_sources(tiny_data, tmp_path_factory) -> list[Path]:
    """The tiny run's three folders: garbage12, garbage26cn and trashnet-trash subsets."""
    for folder in (GARBAGE26CN, TRASHNET):
        if not folder.is_dir():
            pytest.skip(f"real photos absent: {folder}")
    root = tmp_path_factory.mktemp("tiny-more")
    return [
        tiny_data,
        make_photo_folder(root / "garbage26cn", 12, TINY_CN_CLASSES, GARBAGE26CN),
        make_photo_folder(root / "trashnet-trash", 12, ("trash",), TRASHNET),
    ]


@pytest.fixture(scope="session")
def tiny_run(tiny_sources, tmp_path_factory) -> Path:
    """One real training run on three folders (tiny preset: 96 px, few photos, few steps)."""
    if not WEIGHTS.is_file():
        pytest.skip(f"ImageNet weights absent: {WEIGHTS}")
    from host_training.cli import main

    out = tmp_path_factory.mktemp("run")
    data = [arg for folder in tiny_sources for arg in ("--data", str(folder))]
    code = main(["--preset", "tiny", *data, "--out", str(out), "--weights", str(WEIGHTS)])
    assert code == 0
    return out


@pytest.fixture()
def tiny_bundle(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run's bundle, free to damage."""
    return Path(shutil.copytree(tiny_run / "bundle", tmp_path / "bundle"))


@pytest.fixture(autouse=True)
def stop_leftover_daemons():
    yield
    for name in ("tests.test_daemon", "test_daemon"):
        if name in sys.modules:
            sys.modules[name].Running.stop_leftovers()


@pytest.fixture()
def broker(tmp_path):
    """A real Mosquitto on a free loopback port, for one test."""
    from tests.broker import Broker

    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture()
def emulator():
    """A Maestro emulated on a real pty, tipping a simulated tray of three synthetic items (``.tray``)."""
    from edge.camera.simulation import SimulatedTray
    from edge.servo.emulator import MaestroEmulator

    tray = SimulatedTray(synthetic=3, fps=0)
    e = MaestroEmulator(on_move=tray.servo_moved)
    e.tray = tray
    yield e
    e.stop()


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MiB tmpfs as the state folder (``tmp_path / "state"``), so that a full disk is a real one."""
    import subprocess

    folder = tmp_path / "state"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("a real full disk needs mount(8) and root to mount a tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a real full disk needs root to mount a tmpfs: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write zeros until the file system says it is full; the filler file, to free the space again."""
    import errno

    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler
