"""A simulated camera over a tray, for ``smartbin demo``, the tests and the benchmarks.

It stands in for what cannot exist without hardware: a camera looking down
at a tray. Each item (a photo, or a drawn synthetic shape) is placed on an
empty tray and stays there until the servo tips the tray, exactly as a real
item does; the emulated servo controller tells the tray where the servo
points (``servo_moved``). Frames carry a little sensor noise so that the
presence trigger works on them as it does on a camera.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from edge.camera.sources import Pacer
from edge.errors import SmartbinError
from edge.images import read_image

log = logging.getLogger(__name__)

FRAME_HEIGHT, FRAME_WIDTH = 480, 640
TIP_US = 50.0  # a servo this far from home has tipped the tray


def empty_tray(height: int = FRAME_HEIGHT, width: int = FRAME_WIDTH) -> np.ndarray:
    """A matte grey tray with a darker rim, lit a little unevenly, as a camera sees it."""
    shade = np.linspace(150, 175, width, dtype=np.float32)[np.newaxis, :].repeat(height, 0)
    tray = np.dstack([shade * 0.95, shade, shade * 1.05]).clip(0, 255).astype(np.uint8)
    rim = max(4, height // 40)
    cv2.rectangle(tray, (rim, rim), (width - rim, height - rim), (95, 100, 105), rim)
    return tray


def place_item(tray: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """The photo's centre square, scaled to the tray's height and laid in its middle.

    The classifier's centre crop then sees the photo and nothing else, so the
    bin classifies a photo on the simulated tray as it classifies the photo.
    """
    height, width = tray.shape[:2]
    h, w = photo.shape[:2]
    side = min(h, w)
    square = photo[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    frame = tray.copy()
    left = (width - height) // 2
    frame[:, left : left + height] = cv2.resize(square, (height, height), interpolation=cv2.INTER_AREA)
    return frame


def synthetic_item(index: int, side: int = 320) -> np.ndarray:
    """A drawn object, not a photo: the demo's feed when no photos are given."""
    rng = np.random.default_rng(index)
    image = np.full((side, side, 3), 235, np.uint8)
    colour = tuple(int(c) for c in rng.integers(30, 220, 3))
    centre = (side // 2, side // 2)
    shape = index % 3
    if shape == 0:
        cv2.rectangle(image, (side // 4, side // 8), (3 * side // 4, 7 * side // 8), colour, -1)
    elif shape == 1:
        cv2.circle(image, centre, side // 3, colour, -1)
    else:
        cv2.ellipse(image, centre, (side // 3, side // 6), 30 * index, 0, 360, colour, -1)
    cv2.putText(image, "SYNTHETIC", (side // 10, side - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
    return image


class SimulatedTray:
    """A camera over a tray that a servo tips: items appear one by one and leave when tipped."""

    finite = True

    def __init__(
        self,
        items: list[Path] | None = None,
        synthetic: int = 8,
        fps: float = 10.0,
        gap_frames: int = 8,
        lead_frames: int = 20,
        home_us: float = 1500.0,
        seed: int = 0,
    ) -> None:
        self.items = list(items) if items is not None else None
        self.total = len(self.items) if self.items is not None else synthetic
        what = f"{self.total} photos" if self.items is not None else f"{self.total} drawn synthetic items"
        self.description = f"simulated tray camera ({what})"
        self.tray = empty_tray()
        rng = np.random.default_rng(seed)
        self._noise = [rng.integers(0, 6, self.tray.shape, dtype=np.uint8) for _ in range(4)]
        self.pacer = Pacer(fps)
        self.gap_frames, self.home_us = gap_frames, home_us
        self.placed = 0  # items put on the tray so far
        self.current: np.ndarray | None = None
        self.current_name: str | None = None
        self.current_label: str | None = None
        self.tipped = False
        self.skipped: list[str] = []  # why each photo that could not be read was left out
        self._gap = lead_frames  # the empty tray the trigger learns at start
        self._frames = 0
        self._lock = threading.Lock()

    def take_back(self) -> None:
        """A person takes the item off the tray by hand (one the bin held); the next comes after a gap."""
        with self._lock:
            if self.current is not None:
                self.current, self._gap = None, self.gap_frames

    def drop_next(self) -> None:
        """The next item lands on the next frame, however long the gap before it was to be."""
        with self._lock:
            if self.current is None:
                self._gap = 0

    def servo_moved(self, channel: int, pulse_us: float) -> None:
        """Called by the emulated controller: a tipped tray drops its item."""
        with self._lock:
            self.tipped = abs(pulse_us - self.home_us) > TIP_US
            if self.tipped and self.current is not None:
                self.current = None
                self._gap = self.gap_frames

    def _next_item(self) -> bool:
        """Lay the next item on the tray; False for a photo that cannot be read (skipped and logged)."""
        index = self.placed
        self.placed += 1
        if self.items is None:
            photo, self.current_name, self.current_label = synthetic_item(index), f"synthetic-{index}", None
        else:
            path = self.items[index]
            try:
                photo = read_image(path)
            except SmartbinError as exc:
                log.warning("simulated tray: skipped %s", exc.problem)
                self.skipped.append(exc.problem)
                return False
            self.current_name, self.current_label = path.name, path.parent.name
        self.current = place_item(self.tray, photo)
        return True

    def read(self) -> np.ndarray | None:
        self.pacer.wait()
        with self._lock:
            self._frames += 1
            if self.tipped:
                scene = np.roll(self.tray, 40, axis=0)
            elif self.current is not None:
                scene = self.current
            elif self._gap > 0:
                self._gap -= 1
                scene = self.tray
            elif self.placed < self.total:
                scene = self.current if self._next_item() else self.tray
            else:
                return None
            return cv2.add(scene, self._noise[self._frames % len(self._noise)])

    def close(self) -> None:
        pass
