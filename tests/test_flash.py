"""deploy/flash.sh against a real sshd on loopback, into a temporary root that stands in for a bin.

systemd cannot run here, so SMARTBIN_SYSTEMCTL points at a stand-in: `restart` runs the installed
release's own `smartbin check` on the installed config (model and ledger), and `is-active` reports
whether that passed. Everything else is real: ssh, the wheels built and fetched for this machine's
CPU and Python, the venv, useradd, the config writer, the atomic switch and the rollback.
Each test has a bin of its own, whatever ran before it and in whichever order: an empty one
(``empty_bin``), or one a fresh deploy has just installed (``deployed_bin``: that deploy runs once per
module, and each test gets the bin restored as it left it). The sshd is shared: it keeps no state.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, make_photo_folder, needs_data
from tests.sshbin import FLASH, SSHD, Bin, Sshd, bundle_copy, review_pair

pytestmark = pytest.mark.skipif(not Path(SSHD).exists(), reason="sshd absent: scripts/test installs it")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("flash") / "sshd")
    yield server
    server.stop()


@pytest.fixture()
def empty_bin(sshd, tmp_path):
    """(sshd, a bin nothing was ever deployed to)."""
    return sshd, Bin(tmp_path / "bin")


FRESH_DEPLOY = ("--yes", "--device-id", "bin-07", "--health-timeout", "1")


# where setuptools builds; what an earlier build left there must not reach a release
STALE_MODULE = REPO / "build" / "lib" / "edge" / "stale_leftover.py"


@pytest.fixture(scope="module")
def first_deploy(sshd, tmp_path_factory):
    """One fresh deploy (``FRESH_DEPLOY``) to an empty bin, once per module: the bin, what flash.sh
    answered, and a copy of the bin as the deploy left it."""
    folder = tmp_path_factory.mktemp("deployed")
    device = Bin(folder / "bin")
    STALE_MODULE.parent.mkdir(parents=True, exist_ok=True)
    STALE_MODULE.write_text("raise ImportError('a module deleted from the tree, left by an earlier build')\n")
    result = flash((sshd, device), *FRESH_DEPLOY)
    pristine = folder / "pristine"
    subprocess.run(["cp", "-a", str(device.root), str(pristine)], check=True)
    return device, result, pristine


@pytest.fixture()
def deployed_bin(sshd, first_deploy):
    """(sshd, the bin right after the fresh deploy), as that deploy left it, whatever tests used it
    before: put back from the copy at the same path, since the venv and the config name it, with its
    contents, modes, owners and times (``cp -a``)."""
    device, result, pristine = first_deploy
    assert result.returncode == 0, "the fresh deploy failed:\n" + result.stdout + result.stderr
    shutil.rmtree(device.root)
    subprocess.run(["cp", "-a", str(pristine), str(device.root)], check=True)
    return sshd, device


def flash(
    rig: tuple[Sshd, Bin],
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    after: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """deploy/flash.sh over the rig's sshd, into the rig's bin; ``after`` follows the bin's address."""
    sshd, device = rig
    env = {
        **os.environ,
        "SMARTBIN_PREFIX": str(device.root),
        "SMARTBIN_SYSTEMCTL": str(device.systemctl),
        "SSH_OPTS": "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
        "-o LogLevel=ERROR",
        "PYTHON": sys.executable,
        **(env or {}),
    }
    return subprocess.run(
        [
            str(FLASH),
            "-p",
            str(sshd.port),
            "-i",
            str(sshd.key),
            *args,
            f"{getpass.getuser()}@127.0.0.1",
            *after,
        ],
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=580,
    )


def test_help_is_written_for_a_technician():
    result = subprocess.run([str(FLASH), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for words in (
        "Usage: deploy/flash.sh [options] user@host",
        "--rollback",
        "--dry-run",
        "Examples:",
        "journalctl",
    ):
        assert words in result.stdout


def test_bad_arguments_stop_before_anything_happens(empty_bin):
    result = flash(empty_bin, "--model", "/nowhere")
    assert result.returncode == 2 and "is not a model bundle" in result.stderr and "fix:" in result.stderr
    result = flash(empty_bin, "--keep", "0")
    assert result.returncode == 2 and "--keep 0" in result.stderr


def test_a_bin_whose_python_no_wheel_fits_is_refused_before_anything_changes(empty_bin, tmp_path):
    """A bin reporting a Python that a dependency has no wheel for (3.99 here): flash.sh names the
    package and the Python while building the release, and the bin is left as it was."""
    _, device = empty_bin
    python = tmp_path / "python3"
    python.write_text(
        '#!/bin/sh\ncase "$*" in *version_info*) echo 3.99 ;; *) exec /usr/bin/python3 "$@" ;; esac\n'
    )
    python.chmod(0o755)
    before = device.snapshot()
    result = flash(empty_bin, "--yes", env={"SMARTBIN_PYTHON": str(python)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert re.search(r"no wheel of [\w.-]+ for x86_64, Python 3\.99 \(glibc [\d.]+\)", result.stderr), (
        result.stderr
    )
    assert "fix: give the bin a Python that" in result.stderr
    assert device.snapshot() == before
    assert not list((REPO / "build" / "release").glob("*.tmp"))


def test_build_only_wants_cpu_python_and_glibc():
    result = subprocess.run([str(FLASH), "--build-only", "aarch64:3.11"], capture_output=True, text=True)
    assert (
        result.returncode == 2
        and "is not CPU:PYTHON:GLIBC" in result.stderr
        and "aarch64:3.11:2.36" in result.stderr
    )


def test_without_yes_and_without_a_terminal_it_refuses_to_change_the_bin(empty_bin):
    _, device = empty_bin
    before = device.snapshot()
    result = flash(empty_bin)
    assert result.returncode == 2 and "pass --yes" in result.stderr
    assert device.snapshot() == before


def test_dry_run_prints_every_step_and_touches_nothing(empty_bin):
    _, device = empty_bin
    before = device.snapshot()
    builds = set((REPO / "build" / "release").glob("*")) if (REPO / "build" / "release").exists() else set()
    result = flash(empty_bin, "--dry-run")
    assert result.returncode == 0, result.stderr
    for words in (
        "would: python3 -m venv --system-site-packages",
        "would: useradd",
        "would: mv -T",
        "write a new config",
        "would: " + str(device.systemctl) + " restart smartbin",
    ):
        assert words in result.stdout
    assert device.snapshot() == before
    after = set((REPO / "build" / "release").glob("*")) if (REPO / "build" / "release").exists() else set()
    assert after == builds


def test_a_fresh_deploy_installs_release_user_unit_config_and_is_healthy(first_deploy, deployed_bin):
    """``first_deploy`` ran ``FRESH_DEPLOY`` on an empty bin; ``deployed_bin`` is that bin as it left it."""
    _, result, _ = first_deploy
    _, device = deployed_bin
    assert result.returncode == 0, result.stdout + result.stderr
    release = device.current()
    assert (device.root / "opt/smartbin/releases" / release / ".complete").exists()
    assert (device.root / "etc/systemd/system/smartbin.service").read_text() == (
        REPO / "systemd" / "smartbin.service"
    ).read_text()
    assert "smartbin:x:" in (device.root / "etc/passwd").read_text()
    groups = (device.root / "etc/group").read_text()
    assert "dialout:x:20:smartbin" in groups and "video:x:44:smartbin" in groups
    # parsed, not searched as text: the config writer folds a value past 80 columns onto the next line
    config = yaml.safe_load((device.root / "etc/smartbin/smartbin.yaml").read_text())
    assert config["device_id"] == "bin-07"
    assert config["model"]["bundle"] == f"{device.root}/opt/smartbin/current/model"
    assert oct((device.root / "etc/smartbin/smartbin.yaml").stat().st_mode)[-3:] == "640"
    assert "restart smartbin" in (device.root / "systemctl.log").read_text()
    assert "ok    model" in (device.root / "check.log").read_text()
    assert device.log()[-1].endswith(f"deploy {release}: ok")
    # the wheel is whole (the default bundle inside it) and holds only what the tree holds
    (site,) = (device.root / "opt/smartbin/releases" / release / "venv/lib").glob("python3*/site-packages")
    assert (site / "edge/shipped/models/household38-mnv2/model.tflite").is_file()
    assert not (site / "edge" / STALE_MODULE.name).exists()


def test_a_redeploy_changes_nothing(deployed_bin):
    _, device = deployed_bin
    before = device.snapshot()
    calls = (device.root / "systemctl.log").read_text()
    result = flash(deployed_bin, "--yes", "--health-timeout", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "already on the bin: nothing to build or copy" in result.stdout and "nothing changed" in result.stdout
    )
    assert device.snapshot() == before
    assert "restart" not in (device.root / "systemctl.log").read_text().removeprefix(calls)
    assert device.log()[-1].endswith("nothing changed") and len(device.log()) == 2


def test_a_release_that_fails_its_health_check_is_rolled_back(deployed_bin, tmp_path):
    _, device = deployed_bin
    first = device.current()
    result = flash(
        deployed_bin,
        "--yes",
        "--health-timeout",
        "1",
        "--model",
        str(bundle_copy(tmp_path, "broken", corrupt=True)),
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed its health check" in result.stderr and f"roll back to {first}" in result.stdout
    assert device.current() == first and device.releases() == {first}
    assert "FAILED its health check; rolled back to " + first in device.log()[-1]
    assert (device.root / "state").read_text().strip() == "active"  # the old release runs again


def test_a_second_release_then_rollback_by_hand(deployed_bin, tmp_path):
    _, device = deployed_bin
    first = device.current()
    result = flash(
        deployed_bin, "--yes", "--health-timeout", "1", "--model", str(bundle_copy(tmp_path, "second"))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    second = device.current()
    assert second != first and device.previous() == first
    assert "keep the bin's config" in result.stdout  # never overwritten
    result = flash(deployed_bin, "--yes", "--rollback", "--health-timeout", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert device.current() == first and device.previous() == second
    assert device.log()[-1].endswith(f"rollback {second} -> {first}: ok")


def test_config_is_replaced_only_on_purpose_and_the_old_one_kept(deployed_bin, tmp_path):
    _, device = deployed_bin
    old = (device.root / "etc/smartbin/smartbin.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("trigger: {area: 7}\n")
    result = flash(deployed_bin, "--yes", "--health-timeout", "1", "--config", str(bad))
    assert result.returncode == 2 and "trigger.area" in result.stdout + result.stderr
    assert (device.root / "etc/smartbin/smartbin.yaml").read_text() == old
    good = tmp_path / "good.yaml"
    good.write_text(f"device_id: bin-07b\nmodel: {{bundle: {device.root}/opt/smartbin/current/model}}\n")
    result = flash(deployed_bin, "--yes", "--health-timeout", "1", "--config", str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (device.root / "etc/smartbin/smartbin.yaml").read_text() == good.read_text()
    (backup,) = (device.root / "etc/smartbin").glob("smartbin.yaml.*.bak")
    assert backup.read_text() == old


DEBIAN_PYTHON = "/usr/bin/python3"  # as on Raspberry Pi OS; python3 over ssh may be another one here


def debian_python_has_opencv() -> bool:
    if not Path(DEBIAN_PYTHON).exists():
        return False
    return subprocess.run([DEBIAN_PYTHON, "-c", "import cv2"], capture_output=True).returncode == 0


def test_system_opencv_refuses_a_bin_without_opencv(empty_bin, tmp_path):
    _, device = empty_bin
    before = device.snapshot()
    bare = tmp_path / "python-without-site"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # no site packages, so no cv2
    bare.chmod(0o755)
    result = flash(empty_bin, "--yes", "--system-opencv", env={"SMARTBIN_PYTHON": str(bare)})
    assert result.returncode == 2
    assert "cannot import cv2" in result.stderr and "apt install python3-opencv" in result.stderr
    assert device.snapshot() == before


@pytest.mark.skipif(not debian_python_has_opencv(), reason="python3-opencv absent: scripts/test installs it")
def test_system_opencv_installs_on_the_bins_opencv_and_numpy_and_reads_gstreamer(empty_bin, tmp_path):
    _, device = empty_bin
    result = flash(
        empty_bin, "--yes", "--system-opencv", "--health-timeout", "1", env={"SMARTBIN_PYTHON": DEBIAN_PYTHON}
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the bin's OpenCV" in result.stdout and "GStreamer: YES" in result.stdout
    release = device.root / "opt/smartbin/releases" / device.current()
    assert (release / "SYSTEM_OPENCV").exists()
    assert not [*release.glob("wheels/opencv*"), *release.glob("wheels/numpy-*")]
    python = release / "venv/bin/python"
    found = subprocess.run(
        [python, "-c", "import cv2, numpy; print(cv2.__file__); print(numpy.__file__)"],
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    assert all(line.startswith("/usr/lib/python3/dist-packages/") for line in found.stdout.split())
    # the installed smartbin reads a GStreamer pipeline, which the pip wheel cannot
    config = tmp_path / "gstreamer.yaml"
    pipeline = "videotestsrc ! video/x-raw,width=640,height=480 ! videoconvert ! appsink"
    config.write_text(f'camera: {{source: "{pipeline}"}}\n')
    check = subprocess.run(
        [release / "venv/bin/smartbin", "check", "--config", config, "--only", "camera"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "ok    camera" in check.stdout, check.stdout + check.stderr


def test_pull_review_copies_whole_pairs_never_overwrites_a_label_and_deletes_on_request(
    deployed_bin, tmp_path
):
    _, device = deployed_bin
    review = device.root / "var/lib/smartbin/review"
    review_pair(review, "20261125-010000.000001-aaa")
    review_pair(review, "20261125-010001.000001-bbb")
    (review / "20261125-010002.000001-ccc.jpg").write_bytes(b"\xff\xd8")  # its JSON is not written yet
    (review / ".20261125-010003.000001-ddd.jpg.0123abcd.tmp").write_bytes(b"\xff")  # being written
    dest = tmp_path / "pulled"
    result = flash(deployed_bin, "--pull-review", after=(str(dest),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in dest.iterdir()) == [
        "20261125-010000.000001-aaa.jpg",
        "20261125-010000.000001-aaa.json",
        "20261125-010001.000001-bbb.jpg",
        "20261125-010001.000001-bbb.json",
    ]
    assert "2 new pairs" in result.stdout and len(list(review.iterdir())) == 6  # nothing removed
    labelled = dest / "20261125-010000.000001-aaa.json"
    labelled.write_text(json.dumps({"id": "aaa", "label": "cup"}))
    review_pair(review, "20261125-010004.000001-eee")
    result = flash(deployed_bin, "--pull-review", "--delete", after=(str(dest),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(labelled.read_text())["label"] == "cup"  # labelled here since: never overwritten
    assert (dest / "20261125-010004.000001-eee.json").exists() and "1 new pairs" in result.stdout
    assert sorted(p.name for p in review.iterdir()) == [
        ".20261125-010003.000001-ddd.jpg.0123abcd.tmp",
        "20261125-010002.000001-ccc.jpg",
    ]
    assert "removed 3 pairs" in result.stdout


def test_pull_review_takes_only_plain_files_from_a_bin_it_does_not_trust(deployed_bin, tmp_path):
    """A link on the bin (to a file of the bin, or one the technician's machine would then serve) or a
    FIFO named like a frame never arrives here, never hangs the pull, and is left on the bin."""
    _, device = deployed_bin
    review = device.root / "var/lib/smartbin/review"
    review_pair(review, "20261125-020000.000001-ok")
    review_pair(review, "20261125-020001.000001-jpglink")
    (review / "20261125-020001.000001-jpglink.jpg").unlink()
    (review / "20261125-020001.000001-jpglink.jpg").symlink_to("/etc/passwd")
    (review / "20261125-020002.000001-jsonlink.jpg").write_bytes(b"\xff\xd8")
    (review / "20261125-020002.000001-jsonlink.json").symlink_to("/etc/hostname")
    (review / "20261125-020003.000001-fifo.jpg").write_bytes(b"\xff\xd8")
    os.mkfifo(review / "20261125-020003.000001-fifo.json")
    dest = tmp_path / "pulled"
    result = flash(deployed_bin, "--pull-review", "--delete", after=(str(dest),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in dest.iterdir()) == [
        "20261125-020000.000001-ok.jpg",
        "20261125-020000.000001-ok.json",
    ]
    assert not any(p.is_symlink() for p in dest.iterdir()) and "1 new pairs" in result.stdout
    assert "removed 1 pairs" in result.stdout
    assert len(list(review.iterdir())) == 6  # the odd ones are left on the bin, for a person to look at


def test_pull_review_from_a_bin_that_kept_nothing_yet_says_so(deployed_bin, tmp_path):
    result = flash(deployed_bin, "--pull-review", after=(str(tmp_path / "pulled"),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "none yet" in result.stderr and "0 new pairs" in result.stdout


@needs_data
def test_the_gate_refuses_a_model_that_sorts_the_bins_photos_worse(deployed_bin, tiny_bundle, tmp_path):
    """--gate scores the model the bin runs and the one being shipped on the bin's labelled photos:
    the tiny test model (five labels, none of them for paper, metal or glass) is refused before the bin
    changes, with the figures; the same model as the bin's passes."""
    _, device = deployed_bin
    photos = make_photo_folder(tmp_path / "labelled", per_class=3, classes=("paper", "metal", "green-glass"))
    before = device.snapshot()
    worse = flash(deployed_bin, "--yes", "--model", str(tiny_bundle), "--gate", str(photos))
    assert worse.returncode == 2, worse.stdout + worse.stderr
    assert "would put fewer photos in the right bin than the model" in worse.stderr
    assert re.search(r"\d+\.\d% against \d+\.\d% bin accuracy on 9 photos", worse.stderr), worse.stderr
    assert device.snapshot() == before
    same = flash(deployed_bin, "--yes", "--gate", str(photos))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "against" in same.stdout and "nothing to build" in same.stdout
