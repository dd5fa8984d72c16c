"""``smartbin review DIR``: a labelling page for the frames a bin kept, served on this machine.

The folder is what ``deploy/flash.sh --pull-review`` copied: ``<name>.jpg`` with ``<name>.json``
beside it (edge.service.review). The page shows each frame with the model's top guesses and its bin;
one click or key sets the label, which is written into the JSON at once (``label`` and ``label_bin``),
under a temporary name and renamed, so that a crash or a second technician labelling the same folder
never leaves a damaged file: the last label written for a photo wins. A label may be any item of the
taxonomy, ``empty`` ("not an item": a bare tray, a hand), or a new item typed in with its bin.

Only this folder's pairs are served (every link followed, and refused if it leads out of the folder;
only regular files, size-capped); the server listens on localhost unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any, Iterator

from edge.errors import SmartbinError
from edge.images import LABEL
from edge.model.taxonomy import Taxonomy
from edge.service.review import write_atomically
from edge.service.web import PageHandler, PageServer, listen, strict_json

log = logging.getLogger(__name__)

NOT_AN_ITEM = "empty"
PAGE = Path(__file__).with_name("labelling.html")
NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_BODY = 4096
MAX_SIDECAR = 1 << 20
MAX_PHOTO = 32 << 20
MAX_SHOWN = 200


class LabelError(ValueError):
    """A label refused, with the reason the page shows."""


class Unreadable(ValueError):
    """A file of the folder that is not read, with the reason."""


def read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; anything else (a FIFO, a device, a folder) is refused
    without waiting on it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise Unreadable(f"cannot be opened ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unreadable("not a regular file")
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise Unreadable(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Unreadable(f"larger than the {limit // 1024} KiB read")
    return data


def sidecar_data(raw: bytes) -> dict[str, Any]:
    try:
        data = strict_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Unreadable(f"not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise Unreadable("not a JSON object")
    return data


def probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise Unreadable(f"probability {str(value)[:40]} is not a number from 0 to 1")
    return float(value)


def top_guesses(data: dict[str, Any]) -> list[list[Any]]:
    """The five most probable labels of a sidecar, with their probability."""
    probabilities = data.get("probabilities")
    if not isinstance(probabilities, dict):
        raise Unreadable("no probabilities")
    ranked = sorted(((label, probability(p)) for label, p in probabilities.items()), key=lambda kv: -kv[1])
    return [[label, round(p, 4)] for label, p in ranked[:5]]


def shown(value: Any) -> str | None:
    """A sidecar's field as the page shows it: text (at most ``MAX_SHOWN`` characters) or None."""
    if value is None:
        return None
    return (value if isinstance(value, str) else json.dumps(value))[:MAX_SHOWN]


def item_view(name: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "top": top_guesses(data),
        "bin": shown(data.get("bin")),
        "kept": shown(data.get("kept", "uncertain")),
        "label": shown(data.get("label")),
        "label_bin": shown(data.get("label_bin")),
    }


def checked_label(label: Any, bin_id: Any, taxonomy: Taxonomy) -> tuple[str, str | None]:
    """The label and its bin as a sidecar keeps them; a label the taxonomy does not know needs ``bin_id``."""
    if not isinstance(label, str):
        raise LabelError("a label is text")
    if any(unicodedata.category(c) == "Cc" for c in label):
        raise LabelError(
            f"{label[:60]!r} holds a control character (a line break, a tab): a label is lower-case "
            "letters, digits and '-'"
        )
    if label == NOT_AN_ITEM:
        return label, None
    if label in taxonomy.items:
        return label, taxonomy.bin_of(label)
    if not LABEL.fullmatch(label):
        raise LabelError(f"{label[:60]!r} is not a label: lower-case letters, digits and '-', at most 40")
    if not isinstance(bin_id, str) or bin_id not in taxonomy.bin_ids:
        raise LabelError(f"{label!r} is a new item: say which bin it goes to ({', '.join(taxonomy.bin_ids)})")
    return label, bin_id


def read_request(length: str | None, body: IO[bytes]) -> dict[str, Any]:
    """A label request: a JSON object of 1 to ``MAX_BODY`` bytes."""
    size = int(length) if (length or "").strip().isdigit() else 0
    if not 0 < size <= MAX_BODY:
        raise LabelError(f"a label request is 1 to {MAX_BODY} bytes of JSON")
    try:
        request = strict_json(body.read(size))
    except ValueError as exc:
        raise LabelError(f"a label request is JSON: {str(exc)[:120]}") from None
    if not isinstance(request, dict):
        raise LabelError("a label request is a JSON object")
    return request


@contextmanager
def about(file: str) -> Iterator[None]:
    """Names ``file`` first in the reason of an Unreadable raised within."""
    try:
        yield
    except Unreadable as exc:
        raise Unreadable(f"{file}: {exc}") from None


@dataclass
class ReviewFolder:
    folder: Path
    taxonomy: Taxonomy

    def path(self, name: str, suffix: str) -> Path:
        """A file of one of this folder's pairs, every link followed; one elsewhere is Unreadable."""
        if not NAME.fullmatch(name):
            raise Unreadable("not a frame's name (letters, digits, '.', '_', '-')")
        root = self.folder.resolve()
        try:
            real = (root / f"{name}{suffix}").resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a loop of links, before Python 3.13
            raise Unreadable(f"a link that leads nowhere ({exc})") from None
        if root not in real.parents:
            raise Unreadable("a link out of the folder")
        return real

    def sidecar(self, name: str) -> dict[str, Any]:
        return sidecar_data(read_regular(self.path(name, ".json"), MAX_SIDECAR))

    def item(self, name: str) -> dict[str, Any]:
        """One pair as the page shows it; Unreadable says why it is not shown."""
        with about(f"{name[:80]}.jpg"):
            if not self.path(name, ".jpg").is_file():
                raise Unreadable("not a regular file")
            if not (self.folder / f"{name}.json").exists():
                raise Unreadable("no JSON beside it (still being written, or lost)")
        with about(f"{name}.json: unreadable"):
            return item_view(name, self.sidecar(name))

    def pairs(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every whole pair as the page shows it, and what is wrong with the rest (not shown)."""
        items, problems = [], []
        for image in sorted(self.folder.glob("*.jpg")):
            try:
                items.append(self.item(image.stem))
            except Unreadable as exc:
                problems.append(f"{exc}: not shown")
        return items, problems

    def catalogue(self) -> dict[str, Any]:
        items, problems = self.pairs()
        return {
            "folder": str(self.folder),
            "taxonomy": self.taxonomy.name,
            "labels": {label: self.taxonomy.bin_of(label) for label in sorted(self.taxonomy.items)},
            "bins": self.taxonomy.bin_ids,
            "not_an_item": NOT_AN_ITEM,
            "items": items,
            "problems": problems,
        }

    def photo(self, name: str) -> bytes:
        """The JPEG of a pair of this folder; another folder, ``..`` or a link out of it is refused."""
        with about(f"{name[:80]}.jpg"):
            return read_regular(self.path(name, ".jpg"), MAX_PHOTO)

    def label(self, name: str, label: Any, bin_id: Any = None) -> dict[str, Any]:
        """Write ``label`` into the pair's JSON; a label the taxonomy does not know needs ``bin_id``."""
        label, bin_id = checked_label(label, bin_id, self.taxonomy)
        try:
            with about(name[:80]):
                if not self.path(name, ".jpg").is_file():
                    raise Unreadable("no photo of that name in this folder")
                sidecar, data = self.path(name, ".json"), self.sidecar(name)
        except Unreadable as exc:
            raise LabelError(f"{exc}: label not written") from None
        data["label"], data["label_bin"] = label, bin_id
        write_atomically(sidecar, json.dumps(data, indent=1, allow_nan=False).encode("utf-8"))
        log.info("%s: %s (%s)", name, label, bin_id or "no bin")
        return {"name": name, "label": label, "label_bin": bin_id}


def handler_for(review: ReviewFolder) -> type[PageHandler]:
    class Handler(PageHandler):
        def get(self, path: str) -> None:
            if path == "/":
                self.send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/items":
                self.send_json(HTTPStatus.OK, review.catalogue())
            elif path.startswith("/photo/") and path.endswith(".jpg"):
                try:
                    photo = review.photo(path[len("/photo/") : -len(".jpg")])
                except Unreadable as exc:
                    self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such photo: {exc}"})
                    return
                self.send(HTTPStatus.OK, photo, "image/jpeg")
            else:
                super().get(path)

        def post(self, path: str) -> None:
            if path != "/api/label":
                super().post(path)
                return
            try:
                request = read_request(self.headers.get("Content-Length"), self.rfile)
                result = review.label(str(request.get("name")), request.get("label"), request.get("bin"))
            except LabelError as exc:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            self.send_json(HTTPStatus.OK, result)

    return Handler


def make_server(review: ReviewFolder, host: str = "127.0.0.1", port: int = 8765) -> PageServer:
    if not review.folder.is_dir():
        raise SmartbinError(
            f"review folder {review.folder} does not exist",
            "copy a bin's review folder first: deploy/flash.sh --pull-review pi@bin.local DIR",
        )
    return listen(host, port, handler_for(review))
