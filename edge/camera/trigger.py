"""Trigger: when is there an item on the tray, still, and not yet sorted?

The presence trigger compares each frame with the empty tray it learned at
start: an item is *present* when enough of the watched region differs from
the empty tray, and *settled* when it has been present and still (little
change from the previous frame) for ``settle_frames`` frames in a row. After
the item is handled, the trigger waits for the tray to look empty again
before it re-arms, so the same item is never classified twice. If the tray
never clears (an item stuck on it), the scene as it is becomes the new
baseline after ``rearm_timeout_s``; the learned empty tray is kept, and the
baseline returns to it once the stuck item is gone. While the tray is empty,
the learned tray follows slow lighting changes.

The daemon keeps the learned tray in its state folder (:func:`save_tray`) and
starts from it (:meth:`PresenceTrigger.adopt`) when the view is the same, so an
item already on the tray at start is sorted, not learned as the tray.

All of it runs on a small blurred grey copy of the region, so it costs far
less than one classification.
"""

from __future__ import annotations

import enum
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from edge.config import TriggerConfig

log = logging.getLogger(__name__)

ANALYSIS_WIDTH = 160


class TriggerState(enum.Enum):
    LEARNING = "learning the empty tray"
    EMPTY = "empty"
    CHANGING = "item moving"
    SETTLED = "item settled"
    CLEARING = "waiting for the tray to clear"


class Trigger(Protocol):
    state: TriggerState
    shows_item: bool | None
    """Whether the last frame differs from the empty tray; ``None`` where this trigger cannot tell."""

    def update(self, frame_bgr: np.ndarray) -> TriggerState: ...

    def handled(self) -> None:
        """The item was classified (and sorted or parked): wait for the next one."""

    def relearn(self) -> None:
        """The view changed (camera reopened): learn the empty tray again."""

    def learned_tray(self) -> np.ndarray | None:
        """The empty tray as learned (an analysis view), once learning is done."""

    def adopt(self, tray: np.ndarray) -> None:
        """Start from an empty tray learned in an earlier run instead of learning it now."""


def analysis_view(frame_bgr: np.ndarray, roi: list[float] | None) -> np.ndarray:
    """The watched region as a small blurred grey float image."""
    h, w = frame_bgr.shape[:2]
    if roi:
        x, y, rw, rh = roi
        # at least one pixel, however small the frame
        top, left = min(int(y * h), h - 1), min(int(x * w), w - 1)
        frame_bgr = frame_bgr[top : max(top + 1, int((y + rh) * h)), left : max(left + 1, int((x + rw) * w))]
        h, w = frame_bgr.shape[:2]
    small = cv2.resize(
        frame_bgr, (ANALYSIS_WIDTH, max(1, round(h * ANALYSIS_WIDTH / w))), interpolation=cv2.INTER_AREA
    )
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return cv2.GaussianBlur(grey, (5, 5), 0).astype(np.float32)


def changed_share(view: np.ndarray, reference: np.ndarray, pixel_level: float) -> float:
    """The share of pixels that differ from ``reference`` by more than ``pixel_level``."""
    return float(np.count_nonzero(cv2.absdiff(view, reference) > pixel_level)) / view.size


class PresenceTrigger:
    def __init__(self, cfg: TriggerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.clock = cfg, clock
        self.relearn()

    def relearn(self) -> None:
        self.state = TriggerState.LEARNING
        self.empty: np.ndarray | None = None  # the learned empty tray
        self.baseline: np.ndarray | None = (
            None  # what counts as "nothing new": the empty tray or a stuck item
        )
        self.previous: np.ndarray | None = None
        self.learned = 0
        self.still_run = self.empty_run = 0
        self.clear_by = 0.0
        self.changed = self.motion = 0.0
        self.shows_item: bool | None = None

    def learned_tray(self) -> np.ndarray | None:
        return None if self.state is TriggerState.LEARNING else self.empty

    def adopt(self, tray: np.ndarray) -> None:
        self.relearn()
        self.empty = tray.astype(np.float32)
        self.baseline, self.learned, self.state = self.empty, self.cfg.learn_frames, TriggerState.EMPTY

    def handled(self) -> None:
        if self.state is TriggerState.LEARNING:  # sorted on command before the tray was learned:
            self.relearn()  # the frames learned so far may show that item, not the empty tray
            return
        self.state = TriggerState.CLEARING
        self.empty_run = 0
        self.clear_by = self.clock() + self.cfg.rearm_timeout_s

    def update(self, frame_bgr: np.ndarray) -> TriggerState:
        cfg = self.cfg
        view = analysis_view(frame_bgr, cfg.roi)
        if self.state is not TriggerState.LEARNING and view.shape != self.baseline.shape:
            log.warning(
                "trigger: the camera's frames changed shape (now %dx%d); learning the empty tray again",
                frame_bgr.shape[1],
                frame_bgr.shape[0],
            )
            self.relearn()
        previous, self.previous = (view if self.previous is None else self.previous), view
        if self.state is TriggerState.LEARNING:
            if self.empty is None or self.empty.shape != view.shape:
                self.empty, self.learned = view.copy(), 0
            cv2.accumulateWeighted(view, self.empty, 1.0 / (self.learned + 1))
            self.learned += 1
            if self.learned >= cfg.learn_frames:
                self.baseline = self.empty
                self.state = TriggerState.EMPTY
            return self.state
        self.changed = changed_share(view, self.baseline, cfg.pixel_level)
        self.motion = changed_share(view, previous, cfg.pixel_level)
        present = self.changed >= cfg.area
        on_empty = (
            self.changed if self.baseline is self.empty else changed_share(view, self.empty, cfg.pixel_level)
        )
        self.shows_item = on_empty >= cfg.area
        if self.baseline is not self.empty and not self.shows_item:
            log.info("trigger: the stuck item has gone; the tray is empty again")
            self.baseline, present = self.empty, False
        if self.state is TriggerState.CLEARING:
            self.empty_run = 0 if present else self.empty_run + 1
            if self.empty_run >= cfg.empty_frames:
                self.state = TriggerState.EMPTY
            elif self.clock() >= self.clear_by:
                log.warning(
                    "trigger: the tray has not cleared %.0f s after the item was handled; treating "
                    "what is on it as part of the tray until it is gone",
                    cfg.rearm_timeout_s,
                )
                self.baseline = view
                self.state = TriggerState.EMPTY
            return self.state
        if not present:
            self.still_run = 0
            self.state = TriggerState.EMPTY
            if self.baseline is self.empty and self.motion <= cfg.still:
                cv2.accumulateWeighted(view, self.empty, cfg.adapt_rate)
        elif self.motion <= cfg.still:
            self.still_run += 1
            self.state = (
                TriggerState.SETTLED if self.still_run >= cfg.settle_frames else TriggerState.CHANGING
            )
        else:
            self.still_run = 0
            self.state = TriggerState.CHANGING
        return self.state


class ContinuousTrigger:
    """Every ``every_frames`` frames: for models that know what an empty tray looks like."""

    shows_item = None  # no empty tray to compare with: the model says whether anything is there

    def __init__(self, cfg: TriggerConfig) -> None:
        self.every = cfg.every_frames
        self.relearn()

    def relearn(self) -> None:
        self.frames = 0
        self.state = TriggerState.EMPTY

    def learned_tray(self) -> np.ndarray | None:
        return None

    def adopt(self, tray: np.ndarray) -> None:
        pass

    def handled(self) -> None:
        self.frames = 0
        self.state = TriggerState.EMPTY

    def update(self, frame_bgr: np.ndarray) -> TriggerState:
        self.frames += 1
        self.state = TriggerState.SETTLED if self.frames >= self.every else TriggerState.EMPTY
        return self.state


class ManualTrigger(ContinuousTrigger):
    """Never fires by itself: only the sort command (MQTT, ``smartbin sort``) starts a classification."""

    def __init__(self, cfg: TriggerConfig) -> None:
        self.relearn()

    def update(self, frame_bgr: np.ndarray) -> TriggerState:
        return self.state


def make_trigger(cfg: TriggerConfig) -> Trigger:
    return {"presence": PresenceTrigger, "continuous": ContinuousTrigger, "manual": ManualTrigger}[cfg.mode](
        cfg
    )


def save_tray(path: Path, tray: np.ndarray, frame_shape: tuple[int, ...], roi: list[float] | None) -> None:
    """Keep the learned empty tray with the frame size and ROI it was learned for (written atomically)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as fh:
        np.savez(fh, tray=tray, frame_shape=np.array(frame_shape[:2]), roi=np.array(roi or [], float))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, path)


def load_tray(path: Path, frame_shape: tuple[int, ...], roi: list[float] | None) -> np.ndarray | None:
    """The remembered empty tray if it was learned for this frame size and ROI; else ``None``."""
    try:
        with np.load(path) as saved:
            tray, shape, saved_roi = saved["tray"], tuple(saved["frame_shape"]), list(saved["roi"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        log.warning("trigger: the remembered empty tray %s cannot be read (%s); learning it again", path, exc)
        return None
    roi = roi or []
    if shape != tuple(frame_shape[:2]) or len(saved_roi) != len(roi) or not np.allclose(saved_roi, roi):
        log.info(
            "trigger: the remembered empty tray was learned for another frame size or ROI; learning again"
        )
        return None
    return tray
