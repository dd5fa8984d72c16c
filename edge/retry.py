"""Retry timing shared by every part that reconnects (servo controller, MQTT broker)."""

from __future__ import annotations

import random
from typing import Callable


def backoff_delay(
    attempt: int, base_s: float = 0.5, cap_s: float = 30.0, rng: Callable[[], float] = random.random
) -> float:
    """Exponential backoff, half fixed and half random, so that fifty bins never retry in step."""
    step = min(cap_s, base_s * 2**attempt)
    return step / 2 + rng() * step / 2
