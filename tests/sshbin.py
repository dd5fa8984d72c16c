"""Bins for the deploy tests: a real sshd on loopback, and a temporary root per bin that stands in for
one (``SMARTBIN_PREFIX``), with a stand-in for systemctl (``SMARTBIN_SYSTEMCTL``).

systemd cannot run here, so the stand-in's `restart` runs the installed release's own `smartbin check`
on the installed config (model and ledger), and `is-active` reports whether that passed. Used by
tests/test_flash.py (deploy/flash.sh) and tests/test_ansible.py (deploy/ansible/).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

from tests.broker import free_port, wait_for
from tests.conftest import REPO, SHIPPED

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
FLASH = REPO / "deploy" / "flash.sh"

FAKE_SYSTEMCTL = """#!/bin/bash
# systemctl on the test bin: records each call and its time; `restart` checks the installed release.
echo "$(date +%s.%N) $*" >> {root}/systemctl.log
case "$1" in
    daemon-reload) ;;
    enable) touch {root}/enabled ;;
    is-enabled) [ -e {root}/enabled ] ;;
    restart)
        if STATE_DIRECTORY={root}/var/lib/smartbin {root}/opt/smartbin/current/venv/bin/smartbin check \\
                --config {root}/etc/smartbin/smartbin.yaml --only model,ledger >> {root}/check.log 2>&1; then
            echo active > {root}/state
        else
            echo failed > {root}/state
            exit 1
        fi ;;
    is-active) [ "$(cat {root}/state 2>/dev/null)" = active ] ;;
    *) exit 1 ;;
esac
"""


class Sshd:
    def __init__(self, folder: Path) -> None:
        folder.mkdir()
        self.port = free_port()
        self.key = folder / "id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", folder / "host"], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key], check=True)
        shutil.copy(folder / "id.pub", folder / "authorized_keys")
        (folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
            f"PidFile {folder / 'sshd.pid'}\nSubsystem sftp internal-sftp\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation, as the package would make it
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE
        )

        def accepting() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(accepting, what="sshd")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Bin:
    """The test's bin: a root folder with the few /etc files useradd needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "etc").mkdir(parents=True)
        for name, keep in (("passwd", "root"), ("group", "root|dialout|video"), ("shadow", "root")):
            lines = [
                line
                for line in Path("/etc", name).read_text().splitlines()
                if line.split(":")[0] in keep.split("|")
            ]
            (root / "etc" / name).write_text("\n".join(lines) + "\n")
        (root / "etc" / "gshadow").write_text("")
        self.systemctl = root / "fake-systemctl"
        self.systemctl.write_text(FAKE_SYSTEMCTL.format(root=root))
        self.systemctl.chmod(0o755)

    def current(self) -> str:
        return os.readlink(self.root / "opt/smartbin/current").removeprefix("releases/")

    def previous(self) -> str:
        return os.readlink(self.root / "opt/smartbin/previous").removeprefix("releases/")

    def releases(self) -> set[str]:
        return {p.name for p in (self.root / "opt/smartbin/releases").iterdir()}

    def log(self) -> list[str]:
        return (self.root / "var/log/smartbin-deploy.log").read_text().splitlines()

    def snapshot(self) -> dict[str, str]:
        """Every path under the root with its content hash (or link target), the deploy log left out."""
        tree = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if rel in ("var/log/smartbin-deploy.log", "systemctl.log", "check.log") or "__pycache__" in rel:
                continue
            if path.is_symlink():
                tree[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                tree[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f" {path.stat().st_mtime_ns}"
            else:
                tree[rel] = "dir"
        return tree


def bundle_copy(folder: Path, name: str, corrupt: bool = False) -> Path:
    """The shipped bundle under another name (so another release), optionally with a damaged model."""
    bundle = folder / name
    shutil.copytree(SHIPPED, bundle)
    (bundle / "NOTE").write_text(name)
    if corrupt:
        with open(bundle / "model.tflite", "r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * 64)
    return bundle


def review_pair(folder: Path, name: str) -> None:
    """What the daemon writes: the JPEG, then its JSON (each renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jpg").write_bytes(b"\xff\xd8" + name.encode())
    (folder / f"{name}.json").write_text(json.dumps({"id": name, "label": None}))
