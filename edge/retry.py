"""Retry bookkeeping shared by every part that reconnects (camera, servo controller, MQTT broker)."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable


def backoff_delay(
    attempt: int, base_s: float = 0.5, cap_s: float = 30.0, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff, half fixed and half random, so that fifty bins never retry in step."""
    step = min(cap_s, base_s * 2**attempt)
    return step / 2 + rng() * step / 2


class Retry:
    """One part's fault, when it may be tried again, and one log line per new fault (not per attempt).

    The part calls :meth:`failed` after each failed attempt, waits until :attr:`due`, and calls
    :meth:`recovered` once it works again.
    """

    def __init__(
        self,
        log_prefix: str,
        logger: logging.Logger,
        cap_s: float = 30.0,
        base_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_prefix, self.logger = log_prefix, logger
        self.cap_s, self.base_s, self.clock = cap_s, base_s, clock
        self.fault: str | None = None
        self.attempts = 0  # failed attempts since the part last worked
        self.retry_at = 0.0

    def failed(self, reason: str, detail: str = "") -> float:
        """Record a failed attempt (logged when ``reason`` is new, with ``detail``); returns the delay."""
        if reason != self.fault:
            self.logger.error("%s: %s%s", self.log_prefix, reason, f" ({detail})" if detail else "")
        self.fault = reason
        return self.schedule()

    def schedule(self) -> float:
        """Count a failed attempt and set the next one, logging nothing (the caller has); the delay."""
        delay = backoff_delay(self.attempts, self.base_s, self.cap_s)
        self.retry_at = self.clock() + delay
        self.attempts += 1
        return delay

    @property
    def due(self) -> bool:
        return self.clock() >= self.retry_at

    def wait_s(self) -> float:
        return self.retry_at - self.clock()

    def recovered(self) -> int:
        """The part works again; returns how many attempts had failed (0: it had not failed)."""
        failed = self.attempts if self.fault is not None else 0
        self.fault, self.attempts = None, 0
        return failed
