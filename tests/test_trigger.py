"""The presence trigger on simulated tray frames: one firing per item, never an empty tray, never twice."""

import numpy as np
import pytest

from edge.config import TriggerConfig
from edge.simulation import SimulatedTray, empty_tray, place_item, synthetic_item
from edge.trigger import ContinuousTrigger, ManualTrigger, PresenceTrigger, TriggerState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(trigger, frames):
    return [trigger.update(f) for f in frames]


def noisy(frame, seed):
    rng = np.random.default_rng(seed)
    return np.clip(frame.astype(np.int16) + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)


TRAY = empty_tray()
ITEM = place_item(TRAY, synthetic_item(1))


def learned(cfg=None, clock=None) -> PresenceTrigger:
    trigger = PresenceTrigger(cfg or TriggerConfig(), clock or Clock())
    states = run(trigger, [noisy(TRAY, i) for i in range(10)])
    assert states[-1] is TriggerState.EMPTY and TriggerState.LEARNING in states
    return trigger


def test_an_item_settles_after_the_configured_still_frames_and_never_on_an_empty_tray():
    trigger = learned()
    assert set(run(trigger, [noisy(TRAY, 100 + i) for i in range(50)])) == {TriggerState.EMPTY}
    states = run(trigger, [noisy(ITEM, i) for i in range(5)])
    # the first frame differs from the one before it (the item landing): moving, then 3 still frames
    assert states == [TriggerState.CHANGING] * 3 + [TriggerState.SETTLED] * 2


def test_a_moving_item_is_not_settled():
    trigger = learned()
    shifted = [place_item(np.roll(TRAY, 0, 0), np.roll(synthetic_item(1), 40 * i, axis=1)) for i in range(8)]
    assert TriggerState.SETTLED not in run(trigger, shifted)


def test_after_a_sort_the_same_item_is_not_triggered_again_until_the_tray_clears():
    trigger = learned()
    run(trigger, [ITEM] * 4)
    assert trigger.state is TriggerState.SETTLED
    trigger.handled()
    assert set(run(trigger, [ITEM] * 20)) == {TriggerState.CLEARING}
    assert run(trigger, [TRAY] * 3)[-1] is TriggerState.EMPTY
    assert run(trigger, [ITEM] * 4)[-1] is TriggerState.SETTLED


def test_a_stuck_item_becomes_part_of_the_tray_after_the_timeout_and_is_never_counted_twice():
    clock = Clock()
    trigger = learned(TriggerConfig(rearm_timeout_s=10), clock)
    run(trigger, [ITEM] * 4)
    trigger.handled()
    run(trigger, [ITEM] * 5)
    clock.now = 11
    assert set(run(trigger, [ITEM] * 30)) == {TriggerState.EMPTY}
    # when someone takes it off, the tray is simply empty again: no trigger on the bare tray
    assert set(run(trigger, [TRAY] * 10)) == {TriggerState.EMPTY}
    assert trigger.baseline is trigger.empty
    assert run(trigger, [ITEM] * 4)[-1] is TriggerState.SETTLED


def test_slow_lighting_changes_are_followed_while_the_tray_is_empty():
    trigger = learned()
    # +60 grey levels over 300 frames (20 s at 15 fps): a cloud, or the lights coming on slowly
    brighter = [np.clip(TRAY.astype(np.int16) + step // 5, 0, 255).astype(np.uint8) for step in range(300)]
    assert set(run(trigger, brighter)) == {TriggerState.EMPTY}
    # a static cfg with adaptation off would see the same light as an item
    frozen = learned(TriggerConfig(adapt_rate=0.0))
    assert TriggerState.SETTLED in run(frozen, brighter)


def test_the_region_of_interest_ignores_changes_outside_it():
    cfg = TriggerConfig(roi=[0.25, 0.0, 0.5, 1.0])
    trigger = learned(cfg)
    outside = TRAY.copy()
    outside[:, :100] = 0  # something dark at the edge of the frame, outside the tray region
    assert set(run(trigger, [outside] * 6)) == {TriggerState.EMPTY}
    assert run(trigger, [ITEM] * 4)[-1] is TriggerState.SETTLED


def test_relearn_after_a_new_view():
    trigger = learned()
    trigger.relearn()
    assert trigger.update(ITEM) is TriggerState.LEARNING


def test_continuous_and_manual_modes():
    continuous = ContinuousTrigger(TriggerConfig(mode="continuous", every_frames=5))
    assert run(continuous, [TRAY] * 5)[-1] is TriggerState.SETTLED
    continuous.handled()
    assert run(continuous, [TRAY] * 4)[-1] is TriggerState.EMPTY
    manual = ManualTrigger(TriggerConfig(mode="manual"))
    assert set(run(manual, [ITEM] * 20)) == {TriggerState.EMPTY}


@pytest.mark.parametrize("gap", [4, 12])
def test_the_simulated_tray_drops_its_item_only_when_the_servo_tips_it(gap):
    tray = SimulatedTray(synthetic=2, fps=0, gap_frames=gap)
    trigger = PresenceTrigger(TriggerConfig())
    fired = 0
    for _ in range(200):
        frame = tray.read()
        if frame is None:
            break
        if trigger.update(frame) is TriggerState.SETTLED:
            fired += 1
            trigger.handled()
            tray.servo_moved(0, 1100.0)
            tray.servo_moved(0, 1500.0)
    assert fired == 2 and tray.placed == 2


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 3, 3), (2000, 500, 3)])
def test_a_frame_of_another_shape_relearns_the_tray_instead_of_crashing(shape, caplog):
    """A camera that renegotiates its size, or a folder with an odd image, must not end the daemon."""
    trigger = learned(TriggerConfig(roi=[0.2, 0.2, 0.6, 0.6]))
    odd = np.full(shape, 128, np.uint8)
    assert trigger.update(odd) is TriggerState.LEARNING
    assert "frames changed shape" in caplog.text
    states = run(trigger, [odd] * 10)
    assert states[-1] is TriggerState.EMPTY
    # and back to the usual camera size: learned again, then an item settles as before
    states = run(trigger, [noisy(TRAY, i) for i in range(10)] + [ITEM] * 5)
    assert TriggerState.SETTLED in states


def test_a_frame_of_the_same_aspect_at_another_size_keeps_the_learned_tray():
    trigger = learned()
    half = TRAY[::2, ::2].copy()
    assert trigger.update(half) is TriggerState.EMPTY
