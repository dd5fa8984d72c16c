"""Where smartbin finds the files it ships with, and where a bin keeps its state.

One folder holds a bin's state: the ledger, the pid file, the learned empty
tray and the review folder. It is the ledger's folder when ``ledger.path`` is
set, else :func:`state_directory`.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.config import Config, LedgerConfig

# What the package ships with (edge/shipped/: the checkout's models/ and config/ link there), found the
# same way in a checkout and in an installed wheel.
SHIPPED = Path(str(importlib.resources.files("edge") / "shipped"))
DEFAULT_BUNDLE = SHIPPED / "models" / "household38-mnv2"
REFERENCE_CONFIG = SHIPPED / "config" / "smartbin.yaml"
TAXONOMIES = SHIPPED / "config" / "taxonomy"
TRAINING_PRESETS = SHIPPED / "config" / "training"
REPO_ROOT = Path(__file__).resolve().parent.parent  # a checkout's root (in a wheel: site-packages)
SHARED = REPO_ROOT.parent / "shared"  # photos and weights beside a workstation's checkout
SERVICE_STATE = Path("/var/lib/smartbin")


def state_directory() -> Path:
    """Where the service keeps its state: systemd's $STATE_DIRECTORY when it runs as the service;
    for a technician's `smartbin counts` or `smartbin sort` on the bin, the service's folder;
    elsewhere (a workstation, the tests) the working folder."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return SERVICE_STATE if SERVICE_STATE.is_dir() else Path(".")


def ledger_file(cfg: LedgerConfig) -> Path:
    return Path(cfg.path) if cfg.path else state_directory() / "ledger.db"


def state_folder(config: Config) -> Path:
    return ledger_file(config.ledger).parent


def pid_file(config: Config) -> Path:
    return state_folder(config) / "smartbin.pid"


def tray_file(config: Config) -> Path:
    """The learned empty tray, kept across restarts (edge.camera.trigger.save_tray)."""
    return state_folder(config) / "empty-tray.npz"


def review_folder(config: Config) -> Path:
    folder = config.sorting.review_folder
    return Path(folder) if folder else state_folder(config) / "review"
