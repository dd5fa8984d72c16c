"""deploy/ansible/: the fleet rollout against bins that are real sshd logins on loopback, each with a root of
its own (``SMARTBIN_PREFIX``) and systemctl's stand-in (tests/sshbin.py), as the flash.sh tests do.

The playbook runs from a copy of the checkout made once per session (others may be editing the tree
meanwhile, which would change the release's name halfway). One fleet of three bins goes through the
rollouts in order, each a module-scoped fixture that needs the one before it and keeps what the
playbook answered and what each bin held right after:

1. ``first_rollout``: a fresh install of every bin, canary first, then one batch of two; a fourth bin
   cannot be reached, and a fifth has a Python no wheel fits: both are named, neither stops the others;
2. ``canary_fails``: a release whose model is damaged: the canary fails its health check, rolls itself
   back, and no other bin is touched;
3. ``one_fails_in_a_batch``: a new config for every bin, one of which cannot run on it: that bin goes
   back to its old config, the others keep the new one, and the rollout goes on (half the batch failed,
   the limit is more than half); a config edited on a bin is kept;
4. ``limit_stops``: batches of two, a limit of 30%: one bin of the first batch fails (50%), and the
   next batch is never reached; the canary's own edit is overwritten on request (kept as a .bak);
5. then ``--check --diff`` changes nothing, and a release the canary takes well but stops running on
   while it settles sends it back to its previous release, the others untouched.

The summary JSON of each run is compared with what is installed on each bin.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.broker import free_port
from tests.conftest import REPO, SHIPPED
from tests.sshbin import SSHD, Bin, Sshd, review_pair

ANSIBLE = REPO / "deploy" / "ansible"
BIN_DIR = Path(sys.executable).parent
PLAYBOOK = shutil.which("ansible-playbook", path=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
LINT = shutil.which("ansible-lint", path=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")

pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="sshd absent: scripts/test installs it"),
    pytest.mark.skipif(
        PLAYBOOK is None, reason="ansible-playbook absent: pip install 'smartbin[dev]' (scripts/test does)"
    ),
]

SERVO = {"recyclable": 1100, "kitchen": 1300, "hazardous": 1700, "other": 1900}
SETTLE_S = 3
FIRST_SETTLE_S = 6  # the first rollout's, which the test measures


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """This checkout as it is now, copied once: what the playbook builds and runs from."""
    copy = tmp_path_factory.mktemp("checkout") / "smartbin"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = REPO / name
        if name.startswith("tests/") or not (source.exists() or source.is_symlink()):
            continue
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(REPO / ".venv")  # flash.sh and the inventory check use the checkout's Python
    return copy


class Fleet:
    """Bins on one sshd, an inventory for them, and ansible-playbook run as a technician would."""

    def __init__(self, checkout: Path, sshd: Sshd, folder: Path, names: tuple[str, ...]) -> None:
        self.checkout, self.sshd, self.folder = checkout, sshd, folder
        folder.mkdir(parents=True, exist_ok=True)
        self.bins = {name: Bin(folder / name) for name in names}
        self.runs = 0
        self.untouched_e: dict[str, str] = {}
        (shipped,) = (checkout / "models").glob("*/model.json")  # what flash.sh ships by default
        self.shipped_id = json.loads(shipped.read_text())["model_id"]

    def host(self, name: str, **more) -> dict:
        device = self.bins[name]
        return {
            "smartbin_device_id": f"dev-{name}",
            "smartbin_prefix": str(device.root),
            "smartbin_systemctl": str(device.systemctl),
            "smartbin_servo": {"bins": dict(SERVO)},
            **more,
        }

    def inventory(self, hosts: dict[str, dict], **group_vars) -> Path:
        """``hosts`` grouped by building as the example inventory is: a and b in the library, the rest
        in the lab; connection settings for all."""
        buildings: dict[str, dict] = {"library": {"hosts": {}}, "lab": {"hosts": {}}}
        for name, host_vars in hosts.items():
            buildings["library" if name in ("a", "b") else "lab"]["hosts"][name] = host_vars
        data = {
            "all": {
                "children": {"bins": {"children": buildings}},
                "vars": {
                    "ansible_host": "127.0.0.1",
                    "ansible_port": self.sshd.port,
                    "ansible_user": getpass.getuser(),
                    "ansible_ssh_private_key_file": str(self.sshd.key),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                    "-o LogLevel=ERROR",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "smartbin_health_timeout": 1,
                    "smartbin_settle_s": SETTLE_S,
                    **group_vars,
                },
            }
        }
        self.runs += 1
        path = self.folder / f"inventory-{self.runs}.yml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def play(self, playbook: str, inventory: Path, *args: str) -> Run:
        summary = self.folder / f"summary-{self.runs}.json"
        env = {
            **os.environ,
            "ANSIBLE_HOME": str(self.folder / "ansible-home"),
            # ansible.cfg's ssh options, with connections that end soon after the run
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.folder / "cp"),
            "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=2s",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        result = subprocess.run(
            [PLAYBOOK, "-i", str(inventory), playbook, "-e", f"smartbin_summary={summary}", *args],
            cwd=self.checkout / "deploy" / "ansible",
            env=env,
            capture_output=True,
            text=True,
            timeout=580,
        )
        report = json.loads(summary.read_text()) if summary.exists() else None
        return Run(result, report, {name: BinState.of(device) for name, device in self.bins.items()})


class BinState:
    """What a bin holds: its release, model, health, config, deploy log."""

    @classmethod
    def of(cls, device: Bin) -> BinState:
        state = cls()
        root = device.root
        state.current = device.current() if (root / "opt/smartbin/current").is_symlink() else ""
        model = root / "opt/smartbin/current/model/model.json"
        state.model_id = json.loads(model.read_text()).get("model_id") if model.exists() else ""
        state.healthy = (root / "state").exists() and (root / "state").read_text().strip() == "active"
        config = root / "etc/smartbin/smartbin.yaml"
        state.config_text = config.read_text() if config.exists() else ""
        state.config = yaml.safe_load(state.config_text) if state.config_text else {}
        state.backups = sorted(p.name for p in (root / "etc/smartbin").glob("smartbin.yaml.*.bak"))
        state.log = device.log() if (root / "var/log/smartbin-deploy.log").exists() else []
        state.releases = device.releases() if (root / "opt/smartbin/releases").exists() else set()
        calls = root / "systemctl.log"
        state.calls = (
            [line.split(" ", 1) for line in calls.read_text().splitlines()] if calls.exists() else []
        )
        state.restarts = sum(call.startswith("restart") for _, call in state.calls)
        return state

    def times(self, call: str) -> list[float]:
        """When systemctl was called so (``restart``, ``is-active``), in order."""
        return [float(t) for t, c in self.calls if c.startswith(call)]


class Run:
    def __init__(self, result: subprocess.CompletedProcess, summary: dict | None, bins: dict[str, BinState]):
        self.result, self.summary, self.bins = result, summary, bins
        self.output = result.stdout + result.stderr

    def bin(self, host: str) -> dict:
        (found,) = [b for b in self.summary["bins"] if b["host"] == host]
        return found

    def assert_summary_is_what_is_installed(self, *hosts: str) -> None:
        for host in hosts:
            said, held = self.bin(host), self.bins[host]
            assert said["release"] == held.current, (host, said)
            assert said["model_id"] == held.model_id, (host, said)
            assert said["healthy"] is held.healthy, (host, said)


def bundle_named(folder: Path, suffix: str, damaged: bool = False) -> Path:
    """The shipped bundle, its model id ending in ``suffix`` (another release), its model damaged if asked
    (a release the canary must catch)."""
    bundle = folder / f"model{suffix}"
    shutil.copytree(SHIPPED, bundle)
    meta = json.loads((bundle / "model.json").read_text())
    meta["model_id"] += suffix
    (bundle / "model.json").write_text(json.dumps(meta))
    if damaged:
        with open(bundle / "model.tflite", "r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * 64)
    return bundle


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("ansible") / "sshd")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fleet(checkout, sshd, tmp_path_factory) -> Fleet:
    return Fleet(checkout, sshd, tmp_path_factory.mktemp("fleet"), ("a", "b", "c", "e"))


@pytest.fixture(scope="module")
def first_rollout(fleet) -> Run:
    """Every bin installed from nothing: the canary (a), its settling time, then a batch of two (b, c).
    Two more bins cannot take part, two in five being within the limit of 50%: d is out of reach, and
    e's Python (3.99, as it reports) has no wheels, which the build finds as flash.sh's does."""
    hosts = {name: fleet.host(name) for name in ("a", "b", "c")}
    hosts["b"]["smartbin_servo"]["bins"]["kitchen"] = 1350  # each bin its own calibration
    hosts["c"]["smartbin_camera"] = {"source": "/dev/video2"}
    hosts["d"] = {"smartbin_device_id": "dev-d", "ansible_port": free_port()}  # nothing listens there
    python = fleet.folder / "python3.99"
    python.write_text(
        '#!/bin/sh\ncase "$*" in *version_info*) echo 3.99 ;; *) exec /usr/bin/python3 "$@" ;; esac\n'
    )
    python.chmod(0o755)
    hosts["e"] = fleet.host("e", smartbin_python=str(python))
    fleet.untouched_e = fleet.bins["e"].snapshot()
    inventory = fleet.inventory(
        hosts, smartbin_batch=2, smartbin_max_fail_percentage=50, smartbin_settle_s=FIRST_SETTLE_S
    )
    return fleet.play("rollout.yml", inventory)


def test_first_rollout_installs_every_bin_canary_first_and_says_so(first_rollout, fleet):
    run = first_rollout
    assert run.result.returncode == 4, run.output  # 4: a host was unreachable; the others were done
    release = run.bin("a")["release"]
    assert re.fullmatch(r"0\.1\.0-[0-9a-f]{10}", release), run.summary
    for host in ("a", "b", "c"):
        held = run.bins[host]
        assert held.current == release and held.healthy and held.model_id == fleet.shipped_id
        assert run.bin(host)["outcome"] == "updated" and run.bin(host)["rolled_back"] is False
        assert held.config["device_id"] == f"dev-{host}"
        assert held.config["model"]["bundle"] == f"{fleet.bins[host].root}/opt/smartbin/current/model"
        assert held.log[-1].endswith(f"deploy {release}: ok")
    run.assert_summary_is_what_is_installed("a", "b", "c")
    # the inventory's per-bin settings, in each bin's own config
    assert run.bins["b"].config["servo"]["bins"]["kitchen"] == 1350
    assert run.bins["a"].config["servo"]["bins"]["kitchen"] == 1300
    assert run.bins["c"].config["camera"] == {"source": "/dev/video2"}
    # the canary first, alone, asked again after its settling time (longer than the few tasks between its
    # health check and that question take); only then the others, in one batch
    others_restarted = min(run.bins["b"].times("restart")[0], run.bins["c"].times("restart")[0])
    canary_checks = [t for t in run.bins["a"].times("is-active") if t < others_restarted]
    canary_healthy = max(t for t in canary_checks if t < canary_checks[-1])  # its health check's last look
    assert canary_checks[-1] - canary_healthy >= FIRST_SETTLE_S, canary_checks
    assert run.output.count("PLAY [Roll out, the canary first, then in batches]") == 2  # [a], [b, c]
    # the one out of reach is named, and did not stop the others
    assert run.bin("d")["outcome"].startswith("unreachable"), run.summary
    assert "SMARTBIN FLEET SUMMARY" in run.output and re.search(r"\nd +dev-d .*unreachable", run.output)
    # the bin whose Python has no wheels is refused at build time, as flash.sh refuses it, and left as it was
    assert re.search(r"no wheel of [\w.-]+ for x86_64, Python 3\.99", run.bin("e")["outcome"]), run.summary
    assert fleet.bins["e"].snapshot() == fleet.untouched_e
    # built once, for the one kind of bin that can have it, where flash.sh puts it
    assert sorted(p.name for p in (fleet.checkout / "build/release").iterdir()) == [release, f"{release}.tar"]


@pytest.fixture(scope="module")
def canary_fails(first_rollout, fleet, tmp_path_factory) -> Run:
    """A release whose model is damaged: every bin would fail on it; the canary finds out."""
    hosts = {name: fleet.host(name) for name in ("a", "b", "c")}
    hosts["b"]["smartbin_servo"]["bins"]["kitchen"] = 1350
    hosts["c"]["smartbin_camera"] = {"source": "/dev/video2"}
    inventory = fleet.inventory(hosts, smartbin_batch=2)
    bundle = bundle_named(tmp_path_factory.mktemp("models"), "-damaged", damaged=True)
    return fleet.play("rollout.yml", inventory, "-e", f"smartbin_model={bundle}")


def test_a_canary_that_fails_its_health_check_rolls_back_and_stops_the_rollout(first_rollout, canary_fails):
    run, before = canary_fails, first_rollout
    assert run.result.returncode == 2, run.output
    first = before.bin("a")["release"]
    canary = run.bin("a")
    assert canary["rolled_back"] is True and canary["healthy"] is True, canary
    assert canary["release"] == first and canary["model_id"] == before.bin("a")["model_id"]
    assert canary["outcome"] == f"FAILED its health check; rolled back to {first}"
    assert run.bins["a"].releases == {first}  # the failed release is gone from the bin
    assert "FAILED its health check; rolled back to " + first in run.bins["a"].log[-1]
    for host in ("b", "c"):  # never touched
        assert run.bins[host].log == before.bins[host].log
        assert run.bins[host].restarts == before.bins[host].restarts
        assert run.bin(host)["outcome"].startswith("untouched"), run.summary
    run.assert_summary_is_what_is_installed("a", "b", "c")


@pytest.fixture(scope="module")
def one_fails_in_a_batch(canary_fails, fleet) -> Run:
    """Every bin gets a new servo position. Bin c is also told to use a site model it does not have, so
    its service cannot start on the new config. Bin b's config was edited on the bin: it is kept."""
    edited = fleet.bins["b"].root / "etc/smartbin/smartbin.yaml"
    edited.write_text(edited.read_text() + "# kitchen bin re-aimed by hand, 2026-12-01\n")
    hosts = {name: fleet.host(name) for name in ("a", "b", "c")}
    for host in hosts.values():
        host["smartbin_servo"]["bins"]["other"] = 1950
    hosts["c"]["smartbin_config"] = {"model": {"bundle": f"{fleet.bins['c'].root}/opt/smartbin/site-model"}}
    inventory = fleet.inventory(hosts, smartbin_batch=2, smartbin_max_fail_percentage=50)
    return fleet.play("rollout.yml", inventory)


def test_a_bin_that_fails_in_a_batch_rolls_back_and_the_others_go_on(canary_fails, one_fails_in_a_batch):
    run, before = one_fails_in_a_batch, canary_fails
    assert run.result.returncode == 2, run.output  # a bin failed; the rollout went to the end
    assert run.bins["a"].config["servo"]["bins"]["other"] == 1950  # the canary took it
    # c failed on the new config and is back on its old one, running
    failed = run.bin("c")
    assert failed["rolled_back"] is True and failed["healthy"] is True and run.bins["c"].healthy
    assert "FAILED its health check" in failed["outcome"], failed
    assert run.bins["c"].config_text == before.bins["c"].config_text
    assert (
        run.bins["c"].log[-1].endswith("FAILED its health check with the new config; the old config is back")
    )
    # b's own edit is kept, and it says so
    assert run.bins["b"].config_text == before.bins["b"].config_text + (
        "# kitchen bin re-aimed by hand, 2026-12-01\n"
    )
    assert "kept" in run.bin("b")["config"] and run.bin("b")["outcome"] == "unchanged"
    assert "edited on the bin?" in run.output
    run.assert_summary_is_what_is_installed("a", "b", "c")


@pytest.fixture(scope="module")
def limit_stops(one_fails_in_a_batch, fleet) -> Run:
    """Batches of two after the canary, at most 30% of a batch may fail: b fails on a config that names
    a missing model, c takes its new config, and as one of two (50%) failed, the next batch (e, a bin
    nothing was ever installed on) is never reached. The canary's config, edited on the bin, is replaced
    as asked (smartbin_config_overwrite), the edit kept in a .bak."""
    edited = fleet.bins["a"].root / "etc/smartbin/smartbin.yaml"
    edited.write_text(edited.read_text() + "# edited on the bin\n")
    hosts = {name: fleet.host(name) for name in ("a", "b", "c", "e")}
    for host in hosts.values():
        host["smartbin_servo"]["bins"]["other"] = 2000
    hosts["b"]["smartbin_config"] = {"model": {"bundle": f"{fleet.bins['b'].root}/opt/smartbin/site-model"}}
    inventory = fleet.inventory(hosts, smartbin_batch=2, smartbin_max_fail_percentage=30)
    return fleet.play("rollout.yml", inventory, "-e", "smartbin_config_overwrite=true")


def test_the_failure_limit_stops_the_rollout(one_fails_in_a_batch, limit_stops, fleet):
    run, before = limit_stops, one_fails_in_a_batch
    assert run.result.returncode == 2, run.output
    assert run.bins["a"].config["servo"]["bins"]["other"] == 2000 and "edited on the bin" not in (
        run.bins["a"].config_text
    )
    assert len(run.bins["a"].backups) == 1 + len(before.bins["a"].backups)
    assert run.bin("b")["rolled_back"] is True and run.bins["b"].healthy
    assert run.bins["c"].config["servo"]["bins"]["other"] == 2000 and run.bin("c")["outcome"] == (
        "restarted with the new config"
    )
    # one of two failed, more than 30%: the third batch never came
    assert run.output.count("PLAY [Roll out, the canary first, then in batches]") == 2  # [a], [b, c]; not [e]
    assert run.bin("e")["outcome"].startswith("untouched"), run.summary
    assert fleet.bins["e"].snapshot() == fleet.untouched_e
    run.assert_summary_is_what_is_installed("a", "b", "c")


def test_check_diff_shows_each_bins_config_change_and_changes_nothing(limit_stops, fleet):
    hosts = {name: fleet.host(name) for name in ("a", "b", "c")}
    for host in hosts.values():
        host["smartbin_servo"]["bins"]["hazardous"] = 1750
    before = {name: BinState.of(device) for name, device in fleet.bins.items()}
    run = fleet.play("rollout.yml", fleet.inventory(hosts, smartbin_batch=2), "--check", "--diff")
    assert run.result.returncode == 0, run.output
    assert re.search(r"^-\s+hazardous: 1700$", run.output, re.M), run.output  # each bin's diff
    assert len(re.findall(r"^\+\s+hazardous: 1750$", run.output, re.M)) == 3, run.output
    assert "would: " in run.output  # deploy/remote.sh's dry run, step by step
    for name in ("a", "b", "c"):
        held = run.bins[name]
        assert held.config_text == before[name].config_text and held.log == before[name].log
        assert held.restarts == before[name].restarts and held.current == before[name].current
        assert run.bin(name)["outcome"] == "check mode: nothing changed"


@pytest.fixture()
def empty_fleet(checkout, sshd, tmp_path) -> Fleet:
    return Fleet(checkout, sshd, tmp_path / "fleet", ("a", "b", "c"))


def test_a_bad_inventory_is_refused_before_any_bin_changes_naming_host_and_key(empty_fleet):
    fleet = empty_fleet
    hosts = {name: fleet.host(name) for name in ("a", "b", "c")}
    del hosts["a"]["smartbin_device_id"]
    hosts["c"]["smartbin_device_id"] = "dev-b"
    hosts["b"]["smartbin_servo"]["bins"]["kitchen"] = 2600
    before = {name: device.snapshot() for name, device in fleet.bins.items()}
    run = fleet.play("rollout.yml", fleet.inventory(hosts))
    assert run.result.returncode == 2, run.output
    assert "host a: smartbin_device_id is not set" in run.output
    assert "hosts b, c: smartbin_device_id = 'dev-b' for each of them" in run.output
    assert re.search(r"host b: servo\.bins\.kitchen = 2600 .*outside.* \(from smartbin_servo", run.output)
    assert "TASK [smartbin : Ask the bin what it is" not in run.output  # no bin was even asked
    assert {name: device.snapshot() for name, device in fleet.bins.items()} == before


def test_the_playbooks_pass_syntax_check_and_ansible_lint(checkout):
    result = subprocess.run(
        [
            PLAYBOOK,
            "--syntax-check",
            "-i",
            "inventory/example.yml",
            "rollout.yml",
            "pull-review.yml",
            "broker.yml",
        ],
        cwd=checkout / "deploy" / "ansible",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    if LINT is None:
        pytest.skip("ansible-lint absent: pip install 'smartbin[dev]' (scripts/test does)")
    result = subprocess.run(
        [LINT, "--offline", "--nocolor", "."],
        cwd=checkout / "deploy" / "ansible",
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pull_review_takes_whole_pairs_from_every_bin_and_never_overwrites_a_label(
    first_rollout, fleet, tmp_path
):
    """Two bins, two pulls; between them a label is written here and new pairs arrive on the bins."""
    reviews = {name: fleet.bins[name].root / "var/lib/smartbin/review" for name in ("a", "b")}
    review_pair(reviews["a"], "20261201-100000.000001-a1")
    review_pair(reviews["a"], "20261201-100001.000001-a2")
    (reviews["a"] / "20261201-100002.000001-a3.jpg").write_bytes(b"\xff\xd8")  # its JSON not written yet
    review_pair(reviews["b"], "20261201-110000.000001-b1")
    (reviews["b"] / "20261201-110001.000001-link.jpg").symlink_to("/etc/passwd")
    (reviews["b"] / "20261201-110001.000001-link.json").write_text("{}")
    hosts = {name: fleet.host(name) for name in ("a", "b")}
    inventory = fleet.inventory(hosts)
    dest = tmp_path / "review"
    run = fleet.play("pull-review.yml", inventory, "-e", f"smartbin_review_dir={dest}")
    assert run.result.returncode == 0, run.output
    assert sorted(p.name for p in (dest / "dev-a").iterdir()) == [
        "20261201-100000.000001-a1.jpg",
        "20261201-100000.000001-a1.json",
        "20261201-100001.000001-a2.jpg",
        "20261201-100001.000001-a2.json",
    ]
    assert sorted(p.name for p in (dest / "dev-b").iterdir()) == [
        "20261201-110000.000001-b1.jpg",
        "20261201-110000.000001-b1.json",
    ]
    assert "20261201-110001.000001-link.json or its JPEG is not a plain file" in run.output, run.output
    labelled = dest / "dev-a" / "20261201-100000.000001-a1.json"
    labelled.write_text(json.dumps({"id": "a1", "label": "cup"}))
    review_pair(reviews["a"], "20261201-100003.000001-a4")
    review_pair(reviews["b"], "20261201-110002.000001-b2")
    run = fleet.play(
        "pull-review.yml", inventory, "-e", f"smartbin_review_dir={dest}", "-e", "smartbin_review_delete=true"
    )
    assert run.result.returncode == 0, run.output
    assert json.loads(labelled.read_text())["label"] == "cup"  # written here since: never overwritten
    assert (dest / "dev-a" / "20261201-100003.000001-a4.json").exists()
    assert (dest / "dev-b" / "20261201-110002.000001-b2.json").exists()
    # removed on the bins: exactly what arrived whole; the unfinished pair and the link stay
    assert sorted(p.name for p in reviews["a"].iterdir()) == ["20261201-100002.000001-a3.jpg"]
    assert sorted(p.name for p in reviews["b"].iterdir()) == [
        "20261201-110001.000001-link.jpg",
        "20261201-110001.000001-link.json",
    ]


def test_a_canary_that_stops_while_it_settles_goes_back_and_stops_the_rollout(limit_stops, fleet, tmp_path):
    """A release that starts well on the canary, which then stops running during its settling time (the
    test stops it as soon as its deploy is logged ok): the canary is switched back to its previous
    release, and no other bin is touched."""
    before = {name: BinState.of(fleet.bins[name]) for name in ("a", "b", "c")}
    canary = fleet.bins["a"]
    stopped = threading.Event()

    def stop_the_canary_once_deployed() -> None:
        log = canary.root / "var/log/smartbin-deploy.log"
        while not stopped.is_set():
            lines = log.read_text().splitlines()
            if len(lines) > len(before["a"].log) and lines[-1].endswith(": ok"):
                (canary.root / "state").write_text("failed\n")  # what is-active reads
                stopped.set()
            time.sleep(0.05)

    watcher = threading.Thread(target=stop_the_canary_once_deployed, daemon=True)
    watcher.start()
    hosts = {name: fleet.host(name) for name in ("a", "b", "c")}
    for host in hosts.values():
        host["smartbin_servo"]["bins"]["other"] = 2000
    bundle = bundle_named(tmp_path, "-settles")
    run = fleet.play(
        "rollout.yml", fleet.inventory(hosts, smartbin_batch=2), "-e", f"smartbin_model={bundle}"
    )
    stopped.set()
    assert run.result.returncode == 2, run.output
    said = run.bin("a")
    assert (
        said["outcome"] == f"FAILED: stopped running while it settled; rolled back to {before['a'].current}"
    )
    assert said["rolled_back"] is True and said["release"] == before["a"].current and run.bins["a"].healthy
    assert run.bins["a"].model_id == before["a"].model_id
    assert "rollback " in run.bins["a"].log[-1] and run.bins["a"].log[-1].endswith(": ok")
    for host in ("b", "c"):
        assert run.bins[host].log == before[host].log and run.bins[host].restarts == before[host].restarts
        assert run.bin(host)["outcome"].startswith("untouched"), run.summary
    run.assert_summary_is_what_is_installed("a", "b", "c")
