"""The presence trigger on simulated tray frames: one firing per item, never an empty tray, never twice."""

import numpy as np
import pytest

from edge.camera.simulation import SimulatedTray, empty_tray, place_item, synthetic_item
from edge.camera.trigger import (
    ContinuousTrigger,
    ManualTrigger,
    PresenceTrigger,
    TriggerState,
    analysis_view,
    changed_share,
    load_tray,
    make_trigger,
    save_tray,
)
from edge.config import TriggerConfig


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


# The analysis view and the share of changed pixels: what every decision of the trigger is made on.


def test_the_analysis_view_is_the_regions_grey_level_averaged_over_each_block_of_pixels():
    """Sensor noise averages out over the pixels that make one analysis pixel (area averaging)."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (480, 640, 3)).astype(np.uint8)
    view = analysis_view(noise, None)
    assert view.shape == (120, 160) and view.dtype == np.float32
    # each analysis pixel is the mean of a 4x4 block: the grey noise (std ~43) becomes ~11, ~3.4 after
    # the blur; a view that samples pixels instead (bilinear) keeps twice as much, ~6.8
    assert view.std() < 4.5
    blue = np.zeros((40, 160, 3), np.uint8)
    blue[..., 0] = 255
    assert analysis_view(blue, None) == pytest.approx(np.full((40, 160), 29.0), abs=1)  # 0.114 * 255


def test_the_analysis_view_of_a_roi_is_the_view_of_that_part_of_the_frame():
    frame = np.random.default_rng(1).integers(0, 256, (100, 200, 3)).astype(np.uint8)
    np.testing.assert_array_equal(
        analysis_view(frame, [0.25, 0.5, 0.5, 0.25]), analysis_view(frame[50:75, 50:150], None)
    )
    # a region thinner than one pixel keeps one row (and is still a full-width view)
    thin = analysis_view(frame, [0.0, 0.5, 1.0, 0.001])
    np.testing.assert_array_equal(thin, analysis_view(frame[50:51], None))
    assert thin.shape == (1, 160)
    np.testing.assert_array_equal(
        analysis_view(frame, [0.5, 0.0, 0.001, 1.0]), analysis_view(frame[:, 100:101], None)
    )


def test_changed_share_counts_the_pixels_that_differ_by_more_than_the_level():
    reference = np.zeros((4, 5), np.float32)
    view = reference.copy()
    view[:2] = 25.0  # exactly the level: not changed
    view[3, :] = 26.0
    assert changed_share(view, reference, 25.0) == pytest.approx(5 / 20)
    assert changed_share(view, reference, 24.0) == pytest.approx(15 / 20)


# Exact counts and boundaries of the presence trigger's state machine


def adopted(cfg: TriggerConfig | None = None, clock=None) -> PresenceTrigger:
    """A trigger started from a remembered empty tray, as the daemon starts one."""
    trigger = PresenceTrigger(cfg or TriggerConfig(), clock or Clock())
    trigger.adopt(analysis_view(TRAY, (cfg or TriggerConfig()).roi))
    return trigger


def test_a_new_trigger_cannot_tell_whether_the_tray_shows_an_item_until_it_has_learned_the_tray():
    trigger = PresenceTrigger(TriggerConfig(learn_frames=4), Clock())
    assert trigger.shows_item is None and trigger.learned_tray() is None
    states = run(trigger, [TRAY] * 4)
    assert states == [TriggerState.LEARNING] * 3 + [TriggerState.EMPTY]
    assert trigger.shows_item is None and trigger.learned_tray() is not None
    trigger.update(TRAY)
    assert trigger.shows_item is False
    trigger.relearn()
    trigger.update(TRAY)
    assert trigger.learned_tray() is None  # half learned


def test_an_item_sorted_on_command_while_the_tray_is_learned_restarts_the_learning():
    """A sort command (MQTT, the button) may come before the empty tray is learned; handling that item
    used to leave the trigger waiting for a clear tray with nothing learned to compare with (the next
    frame raised AttributeError in the loop; found by tests/test_config_properties.py)."""
    trigger = PresenceTrigger(TriggerConfig(learn_frames=4), Clock())
    tray = empty_tray()
    run(trigger, [noisy(tray, i) for i in range(2)])
    trigger.handled()
    assert trigger.state is TriggerState.LEARNING and trigger.learned == 0
    assert run(trigger, [noisy(tray, i) for i in range(4)])[-1] is TriggerState.EMPTY


def test_the_learned_tray_is_the_mean_of_the_learning_frames():
    trigger = PresenceTrigger(TriggerConfig(learn_frames=4), Clock())
    run(trigger, [np.full((120, 160, 3), level, np.uint8) for level in (10, 20, 30, 60)])
    assert trigger.learned_tray() == pytest.approx(np.full((120, 160), 30.0), abs=0.01)


def test_an_adopted_tray_is_used_from_the_first_frame_so_an_item_already_there_is_sorted():
    trigger = adopted()
    assert trigger.state is TriggerState.EMPTY
    assert trigger.learned_tray().dtype == np.float32
    np.testing.assert_array_equal(trigger.learned_tray(), analysis_view(TRAY, None))
    # no movement at all: the item has been lying there since before the start
    assert run(trigger, [ITEM] * 3) == [TriggerState.CHANGING] * 2 + [TriggerState.SETTLED]
    assert trigger.shows_item is True


def test_an_item_settles_after_exactly_settle_frames_still_frames():
    # a lenient `still`: the item's arrival does not count as movement, so every frame counts
    trigger = learned(TriggerConfig(still=1.0, settle_frames=3))
    run(trigger, [TRAY] * 3)
    assert run(trigger, [ITEM] * 3) == [TriggerState.CHANGING] * 2 + [TriggerState.SETTLED]


def test_no_movement_at_all_counts_as_still_even_with_still_at_zero():
    trigger = learned(TriggerConfig(still=0.0))
    assert run(trigger, [ITEM] * 4) == [TriggerState.CHANGING] * 3 + [TriggerState.SETTLED]
    # and the empty tray follows light changes below the pixel level while nothing moves
    trigger = learned(TriggerConfig(still=0.0, adapt_rate=0.5))
    before = trigger.learned_tray().mean()
    run(trigger, [np.clip(TRAY.astype(np.int16) + 10, 0, 255).astype(np.uint8)] * 3)
    assert trigger.learned_tray().mean() > before + 5


def item_share() -> float:
    """The share of the watched region that ITEM changes from the adopted TRAY."""
    trigger = adopted()
    trigger.update(ITEM)
    return trigger.changed


def test_an_item_that_changes_exactly_the_configured_area_is_present():
    share = item_share()
    at = adopted(TriggerConfig(area=share))
    assert at.update(ITEM) is TriggerState.CHANGING and at.shows_item is True
    above = adopted(TriggerConfig(area=float(np.nextafter(share, 1.0))))
    assert above.update(ITEM) is TriggerState.EMPTY and above.shows_item is False


def test_movement_of_exactly_the_still_share_counts_as_still():
    share = item_share()
    # the frame before is the bare tray, so the item's arrival moves exactly `share` of the region
    trigger = learned(TriggerConfig(still=share, settle_frames=1))
    run(trigger, [TRAY])
    assert trigger.update(ITEM) is TriggerState.SETTLED
    trigger = learned(TriggerConfig(still=float(np.nextafter(share, 0.0)), settle_frames=1))
    run(trigger, [TRAY])
    assert trigger.update(ITEM) is TriggerState.CHANGING


def test_after_a_sort_exactly_empty_frames_bare_frames_re_arm_the_trigger():
    trigger = learned(TriggerConfig(empty_frames=3))
    run(trigger, [ITEM] * 4)
    trigger.handled()
    assert run(trigger, [TRAY] * 3) == [TriggerState.CLEARING] * 2 + [TriggerState.EMPTY]
    run(trigger, [ITEM] * 4)
    trigger.handled()
    # a hand back over the tray starts the count again
    states = run(trigger, [TRAY, TRAY, ITEM, TRAY, TRAY, TRAY])
    assert states == [TriggerState.CLEARING] * 5 + [TriggerState.EMPTY]


def test_the_stuck_item_timeout_fires_at_the_configured_second_and_says_so(caplog):
    caplog.set_level("INFO")
    clock = Clock()
    trigger = learned(TriggerConfig(rearm_timeout_s=10), clock)
    run(trigger, [ITEM] * 4)
    trigger.handled()
    clock.now = 9.99
    assert trigger.update(ITEM) is TriggerState.CLEARING
    clock.now = 10.0
    assert trigger.update(ITEM) is TriggerState.EMPTY
    assert "has not cleared 10 s after the item was handled" in caplog.text
    run(trigger, [TRAY])
    assert "the stuck item has gone; the tray is empty again" in caplog.text


def test_a_change_of_frame_shape_is_logged_with_the_new_size(caplog):
    trigger = learned()
    trigger.update(np.full((7, 5, 3), 128, np.uint8))
    assert "frames changed shape (now 5x7)" in caplog.text


def test_the_continuous_trigger_fires_on_every_nth_frame_and_starts_again_after_a_sort():
    trigger = ContinuousTrigger(TriggerConfig(mode="continuous", every_frames=3))
    assert run(trigger, [TRAY] * 3) == [TriggerState.EMPTY] * 2 + [TriggerState.SETTLED]
    trigger.handled()
    assert trigger.state is TriggerState.EMPTY
    assert run(trigger, [TRAY] * 3) == [TriggerState.EMPTY] * 2 + [TriggerState.SETTLED]
    trigger.relearn()
    assert run(trigger, [TRAY] * 3) == [TriggerState.EMPTY] * 2 + [TriggerState.SETTLED]


@pytest.mark.parametrize(
    "mode, kind",
    [("presence", PresenceTrigger), ("continuous", ContinuousTrigger), ("manual", ManualTrigger)],
)
def test_make_trigger_builds_the_configured_mode(mode, kind):
    cfg = TriggerConfig(mode=mode, every_frames=7)
    trigger = make_trigger(cfg)
    assert type(trigger) is kind
    if kind is PresenceTrigger:
        assert trigger.cfg is cfg


# The remembered empty tray


def test_a_saved_tray_loads_back_for_the_same_frame_size_and_roi(tmp_path):
    path = tmp_path / "empty-tray.npz"
    tray = analysis_view(TRAY, [0.1, 0.1, 0.8, 0.8])
    save_tray(path, tray, TRAY.shape, [0.1, 0.1, 0.8, 0.8])
    assert [p.name for p in tmp_path.iterdir()] == ["empty-tray.npz"]
    loaded = load_tray(path, TRAY.shape, [0.1, 0.1, 0.8, 0.8])
    np.testing.assert_array_equal(loaded, tray)
    assert loaded.dtype == np.float32
    # no ROI is the same as an empty one
    save_tray(path, tray, TRAY.shape, None)
    np.testing.assert_array_equal(load_tray(path, TRAY.shape, []), tray)


@pytest.mark.parametrize(
    "shape, roi",
    [((240, 320, 3), [0.1, 0.1, 0.8, 0.8]), (TRAY.shape, [0.1, 0.1, 0.7, 0.8]), (TRAY.shape, None)],
)
def test_a_saved_tray_is_not_used_for_another_frame_size_or_roi(tmp_path, shape, roi, caplog):
    caplog.set_level("INFO")
    path = tmp_path / "empty-tray.npz"
    save_tray(path, analysis_view(TRAY, None), TRAY.shape, [0.1, 0.1, 0.8, 0.8])
    assert load_tray(path, shape, roi) is None
    assert "learned for another frame size or ROI" in caplog.text


def test_no_saved_tray_is_none_and_an_unreadable_one_is_named(tmp_path, caplog):
    path = tmp_path / "empty-tray.npz"
    assert load_tray(path, TRAY.shape, None) is None
    assert caplog.text == ""
    path.write_bytes(b"PK\x03\x04 half a zip")
    assert load_tray(path, TRAY.shape, None) is None
    assert f"the remembered empty tray {path} cannot be read (File is not a zip file)" in caplog.text
    assert "learning it again" in caplog.text
