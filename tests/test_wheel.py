"""The wheel is whole: installed outside the checkout, smartbin finds its default bundle, taxonomy,
reference config and training presets inside the package (importlib.resources), not in a checkout.

The new venv gets its dependencies from this checkout's venv (a path in a .pth file; the editable
install's import hook there is not run), so the test needs no network and reads no checkout file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.paths import REFERENCE_CONFIG
from tests.conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv outside the checkout with the wheel built from the tree installed in it: its bin/."""
    root = tmp_path_factory.mktemp("wheel")
    build = root / "tree"
    # a copy of the tracked files (the links followed, as a source archive would be): no build/ leftovers
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source, target = REPO / name, build / name
        if source.is_file() and not source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    wheels = root / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(build)]
    # pip fetches the build backend (setuptools) from the package index into an isolated environment;
    # an index that does not answer once is tried again, and a second failure says what pip said
    for _attempt in (1, 2):
        built = subprocess.run(command, capture_output=True, text=True)
        if built.returncode == 0:
            break
    assert built.returncode == 0, f"pip wheel failed twice:\n{built.stdout[-2000:]}\n{built.stderr[-3000:]}"
    (wheel,) = wheels.glob("smartbin-*.whl")
    assert "edge/shipped/models/household38-mnv2/model.tflite" in zipfile.ZipFile(wheel).namelist()
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "checkout-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin/python"),
            "install",
            "-q",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMARTBIN_DATA")}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    result = run(
        installed,
        "python",
        "-c",
        "import edge, edge.paths; print(edge.__file__, edge.paths.DEFAULT_BUNDLE)",
        cwd=tmp_path,
    )
    module, bundle = result.stdout.split()
    assert str(REPO) not in module and str(REPO) not in bundle, result.stdout
    assert Path(bundle, "model.tflite").is_file()


def test_classify_uses_the_bundle_inside_the_wheel(installed, tmp_path):
    photo = tmp_path / "cup.jpg"
    image = np.full((240, 320, 3), 200, np.uint8)
    cv2.circle(image, (160, 120), 60, (30, 90, 200), -1)
    cv2.imwrite(str(photo), image)
    result = run(installed, "smartbin", "classify", str(photo), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    header, _, row = result.stdout.splitlines()
    assert header.startswith("model household38-mnv2") and "taxonomy cn-4bin" in header, result.stdout
    assert row.split()[0].endswith("cup.jpg") and "%" in row, result.stdout


def test_config_check_and_train_help_find_what_ships_inside(installed, tmp_path):
    config = run(installed, "smartbin", "config", cwd=tmp_path)
    assert config.returncode == 0 and config.stdout == REFERENCE_CONFIG.read_text(encoding="utf-8")
    check = run(installed, "smartbin", "check", "--only", "model", cwd=tmp_path)
    assert check.returncode == 0 and "ok    model" in check.stdout, check.stdout + check.stderr
    train = run(installed, "smartbin-train", "--help", cwd=tmp_path)
    presets = "(household-deep, household34, teach, tiny, workstation)"
    assert train.returncode == 0 and presets in " ".join(train.stdout.split()), train.stdout
