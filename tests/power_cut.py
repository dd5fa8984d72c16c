"""The daemon as ``smartbin run`` starts it, with the one part that cannot exist here faked: the camera.

``python -m tests.power_cut CONFIG TRAY_FILE`` runs the real ``Daemon`` (signals, ledger, telemetry, the
servo controller on the port named in CONFIG) over a camera that draws the tray described in TRAY_FILE,
which the test harness rewrites. The harness owns the tray and the emulated controller, so both outlive
this process when the test kills it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np

from edge.camera.simulation import empty_tray, place_item, synthetic_item
from edge.camera.sources import Pacer
from edge.config import load_config
from edge.service.cli import setup_logging
from edge.service.daemon import Daemon


class TrayFileCamera:
    """Frames of the tray the harness describes: ``{"item": <synthetic item index> | null}``."""

    finite = False

    def __init__(self, path: Path, fps: float = 30.0) -> None:
        self.path, self.pacer = path, Pacer(fps)
        self.description = f"tray drawn from {path}"
        self.tray = empty_tray()
        self.items = {i: place_item(self.tray, synthetic_item(i)) for i in range(3)}
        rng = np.random.default_rng()
        self.noise = [rng.integers(0, 6, self.tray.shape, dtype=np.uint8) for _ in range(4)]
        self.frames = 0

    def read(self) -> np.ndarray:
        self.pacer.wait()
        item = json.loads(self.path.read_text())["item"]
        self.frames += 1
        scene = self.tray if item is None else self.items[item % 3]
        return cv2.add(scene, self.noise[self.frames % len(self.noise)])

    def close(self) -> None:
        pass


def main(config_path: str, tray_path: str) -> int:
    setup_logging()
    daemon = Daemon(load_config(config_path), config_path, opener=lambda cfg: TrayFileCamera(Path(tray_path)))
    daemon.install_signals()
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
