"""The retry bookkeeping every reconnecting part shares: one log line per new fault, growing waits."""

import logging

import pytest

from edge.retry import Retry, backoff_delay


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_up_to_its_cap_and_is_half_random():
    assert [backoff_delay(n, 0.5, 4.0, rng=lambda: 0.0) for n in range(5)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert [backoff_delay(n, 0.5, 4.0, rng=lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_fault_is_logged_once_retried_later_and_cleared_on_recovery(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    retry = Retry("servo fault", logging.getLogger("test"), cap_s=30.0, clock=clock)
    assert retry.due and retry.fault is None and retry.recovered() == 0
    for _ in range(3):
        delay = retry.failed("port gone", "plug it in")
        assert not retry.due and retry.wait_s() == pytest.approx(delay) and delay > 0
        clock.now = retry.retry_at
        assert retry.due
    assert retry.fault == "port gone" and retry.attempts == 3
    assert caplog.messages == ["servo fault: port gone (plug it in)"]
    retry.failed("another reason")
    assert caplog.messages[-1] == "servo fault: another reason" and retry.attempts == 4
    assert retry.recovered() == 4
    assert retry.fault is None and retry.attempts == 0
    assert retry.failed("again") <= 0.5  # the next outage backs off from the first step


def test_the_defaults_half_a_second_doubling_to_thirty():
    top = lambda: 1.0  # noqa: E731
    assert [backoff_delay(n, rng=top) for n in (0, 1, 6, 7)] == [0.5, 1.0, 30.0, 30.0]
    clock = Clock()
    clock.now = 0.0
    retry = Retry("camera fault", logging.getLogger("test"), clock=clock)
    assert retry.due and (retry.base_s, retry.cap_s) == (0.5, 30.0)  # a new part is tried at once
    delays = [retry.failed("gone") for _ in range(9)]
    assert 0.25 <= delays[0] <= 0.5 and 15.0 <= delays[-1] <= 30.0
    narrow = Retry("mqtt", logging.getLogger("test"), cap_s=4.0, clock=clock)
    assert max(narrow.failed("down") for _ in range(6)) <= 4.0


def test_a_failed_attempt_without_a_fault_is_no_recovery_to_report():
    """Telemetry counts an attempt first and names the fault after (schedule, then fault)."""
    retry = Retry("mqtt", logging.getLogger("test"), clock=Clock())
    retry.schedule()
    assert retry.attempts == 1 and retry.recovered() == 0 and retry.attempts == 0
