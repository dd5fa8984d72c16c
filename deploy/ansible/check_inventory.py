"""Refuse a fleet inventory before any bin changes: run by rollout.yml on the control machine.

Reads, on stdin, JSON: ``{"bins": [{"host", "device_id", "config", "account"}...], "all_ids": {host:
device_id}, "reserved": [user names]}``: each bin of the play with the config the playbook composed
for it from the inventory, and the device id of every bin of the inventory (a ``--limit`` run still
refuses a duplicate). Each problem is printed with the host and the key that hold it, and its fix;
exit status 2 if there is any, 0 (with one line) if there is none.

The config is checked by smartbin's own validation (``edge.config.parse_config``, what the bin's
``smartbin check --only config`` runs): every key, bound and servo position, here, for every bin at
once. What a bin's disk decides (the model bundle, the password file) is checked on the bin itself
before its config is replaced.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's edge/

from edge.config import parse_config  # noqa: E402
from edge.errors import SmartbinError  # noqa: E402
from edge.schema import problems_of  # noqa: E402

# the inventory variable each config section comes from (the rest: smartbin_config)
SECTION_VARS = {"servo": "smartbin_servo", "camera": "smartbin_camera", "mqtt": "smartbin_mqtt"}
# a bin's broker account is its device id: the ACL's pattern rules (%u) and Home Assistant's node id
# (edge/mqtt/discovery.py keeps [a-zA-Z0-9_-]) must both see that id unchanged
ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def problems(data: dict) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    reserved = set(data.get("reserved", []))
    for bin_ in data["bins"]:
        host, device_id, config = bin_["host"], bin_.get("device_id"), bin_["config"]
        if device_id in (None, ""):
            found.append(
                (
                    f"host {host}: smartbin_device_id is not set",
                    f"give {host} its own smartbin_device_id in the inventory (host_vars or the host's line)",
                )
            )
            config = {k: v for k, v in config.items() if k != "device_id"}
        try:
            parse_config(config, source=f"host {host}")
        except SmartbinError as exc:
            for problem in problems_of(exc):
                text = problem.problem
                key = text.removeprefix(f"host {host}: ").split(" ", 1)[0]
                where = SECTION_VARS.get(key.split(".", 1)[0], "smartbin_config")
                if key != "device_id":
                    text += f" (from {where} in the inventory)"
                found.append((text if text.startswith("host ") else f"host {host}: {text}", problem.fix))
        if bin_.get("account") and device_id:
            username = (config.get("mqtt") or {}).get("username")
            if not ACCOUNT_ID.match(str(device_id)):
                found.append(
                    (
                        f"host {host}: smartbin_device_id = {device_id!r} cannot be a broker account: with "
                        "smartbin_mqtt_password the bin logs in as its device id",
                        "use letters, digits, '-' and '_' only (the ACL's %u and Home Assistant's node id)",
                    )
                )
            if username != device_id:
                found.append(
                    (
                        f"host {host}: mqtt.username = {username!r} is not the device id {device_id!r}",
                        "leave mqtt.username out of smartbin_mqtt and smartbin_config: a bin's broker "
                        "account is its device id, which the ACL's pattern rules rely on",
                    )
                )
            if device_id in reserved:
                found.append(
                    (
                        f"host {host}: smartbin_device_id = {device_id!r} is the name of the operator's or "
                        "the fleet page's broker account",
                        "give the bin another device id",
                    )
                )
    by_id: dict[str, list[str]] = {}
    for host, device_id in data.get("all_ids", {}).items():
        if device_id not in (None, ""):
            by_id.setdefault(str(device_id), []).append(host)
    for device_id, hosts in sorted(by_id.items()):
        if len(hosts) > 1:
            found.append(
                (
                    f"hosts {', '.join(sorted(hosts))}: smartbin_device_id = {device_id!r} for each of them",
                    "every bin needs a device id of its own: its topics, its broker account and its "
                    "review folder are named after it",
                )
            )
    return found


def main() -> int:
    data = json.load(sys.stdin)
    found = problems(data)
    if not found:
        print(f"inventory: {len(data['bins'])} bins, each with a device id of its own and a valid config")
        return 0
    print(f"inventory refused, nothing was changed on any bin: {len(found)} problems", file=sys.stderr)
    for problem, fix in found:
        print(f"  - {problem}", file=sys.stderr)
        if fix:
            print(f"    fix: {fix}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
