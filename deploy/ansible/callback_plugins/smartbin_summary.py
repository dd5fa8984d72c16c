"""The fleet rollout's summary: every bin's release, model, health and rollback, printed and written as JSON.

The smartbin role notes each bin as a fact, ``smartbin_report``: when the bin is first asked what it runs,
then after its install. This callback keeps the latest note of each bin, adds what Ansible itself saw
(a bin out of reach, a task that failed), and at the end of the run, whether it finished or stopped
(``max_fail_percentage``, a failed canary), prints one line per bin and writes the JSON file named by
the extra variable ``smartbin_summary`` (default ``smartbin-rollout.json`` in the working folder).
A run that never noted a bin (a syntax check, a refused inventory, another playbook) writes nothing.
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: smartbin_summary
    type: aggregate
    short_description: print and write the summary of a smartbin fleet rollout
    description:
      - Keeps each host's smartbin_report fact (set by the smartbin role) and what Ansible saw of it,
        prints one line per bin at the end of the run and writes them as JSON (extra var smartbin_summary).
"""

FIELDS = ("host", "device_id", "groups", "release", "previous", "model_id", "healthy", "rolled_back")


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "smartbin_summary"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self) -> None:
        super().__init__()
        self.reports: dict[str, dict] = {}
        self.path = "smartbin-rollout.json"
        self.playbook = ""
        self.check_mode = False
        self.started = time.time()

    def v2_playbook_on_start(self, playbook) -> None:
        self.playbook = os.path.basename(getattr(playbook, "_file_name", "") or "")

    def v2_playbook_on_play_start(self, play) -> None:
        extra = play.get_variable_manager().extra_vars
        self.path = str(extra.get("smartbin_summary") or self.path)
        self.check_mode = bool(getattr(play, "check_mode", False))

    def _note(self, result) -> None:
        facts = result._result.get("ansible_facts") or {}
        report = facts.get("smartbin_report")
        if isinstance(report, dict):
            self.reports[result._host.get_name()] = {k: _plain(v) for k, v in report.items()}

    def v2_runner_on_ok(self, result) -> None:
        self._note(result)

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        if ignore_errors:
            return
        host = result._host.get_name()
        report = self.reports.get(host)
        if report is not None and not str(report.get("outcome", "")).startswith("FAILED"):
            message = result._result.get("msg") or result._result.get("stderr") or "a task failed"
            report["outcome"] = f"FAILED at '{result._task.get_name()}': {str(message).strip()}"

    def v2_runner_on_unreachable(self, result) -> None:
        host = result._host.get_name()
        report = self.reports.setdefault(host, {"host": host})
        report["outcome"] = "unreachable: " + str(result._result.get("msg", "")).strip()
        report.setdefault("healthy", None)
        report.setdefault("rolled_back", False)

    def v2_playbook_on_stats(self, stats) -> None:
        bins = [self.reports[h] for h in sorted(self.reports)]
        if not any("release" in b or str(b.get("outcome", "")).startswith("unreachable") for b in bins):
            return
        self._display.banner("SMARTBIN FLEET SUMMARY")
        for b in bins:
            healthy = {True: "healthy", False: "NOT HEALTHY", None: "health unknown"}[b.get("healthy")]
            self._display.display(
                f"{b['host']:<20} {str(b.get('device_id') or '-'):<16} {b.get('release') or '-':<18} "
                f"{b.get('model_id') or '-':<20} {healthy:<14} "
                f"{'rolled back' if b.get('rolled_back') else '':<11}  {b.get('outcome', '')}"
            )
        summary = {
            "playbook": self.playbook,
            "check_mode": self.check_mode,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bins": [{**{k: b.get(k) for k in FIELDS}, **b} for b in bins],
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, self.path)
        self._display.display(f"summary of {len(bins)} bins written to {os.path.abspath(self.path)}")


def _plain(value):
    """Ansible's tagged strings, booleans and lists as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return value
    return str(value)
