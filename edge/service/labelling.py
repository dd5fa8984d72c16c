"""``smartbin review DIR``: a labelling page for the frames a bin kept, served on this machine.

The folder is what ``deploy/flash.sh --pull-review`` copied: ``<name>.jpg`` with ``<name>.json``
beside it (edge.service.review). The page shows each frame with the model's top guesses and its bin;
one click or key sets the label, which is written into the JSON at once (``label`` and ``label_bin``),
under a temporary name and renamed, so that a crash or a second technician labelling the same folder
never leaves a damaged file: the last label written for a photo wins. A label may be any item of the
taxonomy, ``empty`` ("not an item": a bare tray, a hand), or a new item typed in with its bin.

Only this folder's pairs are served; the server listens on localhost unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edge.errors import SmartbinError
from edge.images import LABEL
from edge.model.taxonomy import Taxonomy
from edge.service.review import write_atomically
from edge.service.web import PageHandler, listen

log = logging.getLogger(__name__)

NOT_AN_ITEM = "empty"
PAGE = Path(__file__).with_name("labelling.html")
NAME = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_BODY = 4096


class LabelError(ValueError):
    """A label refused, with the reason the page shows."""


@dataclass
class ReviewFolder:
    folder: Path
    taxonomy: Taxonomy

    def pairs(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every whole pair as the page shows it, and what is wrong with the rest (not shown)."""
        items, problems = [], []
        for image in sorted(self.folder.glob("*.jpg")):
            sidecar = image.with_suffix(".json")
            if not sidecar.exists():
                problems.append(f"{image.name}: no JSON beside it (still being written, or lost): not shown")
                continue
            try:
                data = json.loads(sidecar.read_text(encoding="utf-8"))
                probabilities = data["probabilities"]
                top = sorted(probabilities.items(), key=lambda kv: -float(kv[1]))[:5]
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"{sidecar.name}: unreadable ({type(exc).__name__}: {exc}): not shown")
                continue
            items.append(
                {
                    "name": image.stem,
                    "top": [[label, round(float(p), 4)] for label, p in top],
                    "bin": data.get("bin"),
                    "kept": data.get("kept", "uncertain"),
                    "label": data.get("label"),
                    "label_bin": data.get("label_bin"),
                }
            )
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

    def photo(self, name: str) -> Path:
        """The JPEG of a pair of this folder; anything else (another folder, ``..``) is refused."""
        if not NAME.match(name) or not (self.folder / f"{name}.jpg").is_file():
            raise LabelError(f"no photo named {name[:80]!r} in this folder")
        return self.folder / f"{name}.jpg"

    def label(self, name: str, label: str, bin_id: str | None = None) -> dict[str, Any]:
        """Write ``label`` into the pair's JSON; a label the taxonomy does not know needs ``bin_id``."""
        sidecar = self.photo(name).with_suffix(".json")
        if label == NOT_AN_ITEM:
            bin_id = None
        elif label in self.taxonomy.items:
            bin_id = self.taxonomy.bin_of(label)
        elif not LABEL.match(label or ""):
            raise LabelError(
                f"{str(label)[:60]!r} is not a label: lower-case letters, digits and '-', at most 40"
            )
        elif bin_id not in self.taxonomy.bin_ids:
            raise LabelError(
                f"{label!r} is a new item: say which bin it goes to ({', '.join(self.taxonomy.bin_ids)})"
            )
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise LabelError(f"{sidecar.name} cannot be read ({exc}): label not written") from None
        data["label"], data["label_bin"] = label, bin_id
        write_atomically(sidecar, json.dumps(data, indent=1).encode("utf-8"))
        log.info("%s: %s (%s)", name, label, bin_id or "no bin")
        return {"name": name, "label": label, "label_bin": bin_id}


def handler_for(review: ReviewFolder) -> type[PageHandler]:
    class Handler(PageHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self.send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif path == "/api/items":
                self.send_json(HTTPStatus.OK, review.catalogue())
            elif path.startswith("/photo/") and path.endswith(".jpg"):
                try:
                    photo = review.photo(path[len("/photo/") : -len(".jpg")])
                except LabelError as exc:
                    self.send_json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
                    return
                self.send(HTTPStatus.OK, photo.read_bytes(), "image/jpeg")
            else:
                self.send_json(HTTPStatus.NOT_FOUND, {"error": f"nothing at {path[:80]}"})

        def do_POST(self) -> None:
            if self.path != "/api/label":
                self.send_json(HTTPStatus.NOT_FOUND, {"error": "nothing to post here"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    raise LabelError(f"a label request is 1 to {MAX_BODY} bytes of JSON")
                request = json.loads(self.rfile.read(length))
                if not isinstance(request, dict):
                    raise LabelError("a label request is a JSON object")
                result = review.label(str(request.get("name")), request.get("label"), request.get("bin"))
            except (LabelError, ValueError) as exc:
                self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
                return
            self.send_json(HTTPStatus.OK, result)

    return Handler


def make_server(review: ReviewFolder, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    if not review.folder.is_dir():
        raise SmartbinError(
            f"review folder {review.folder} does not exist",
            "copy a bin's review folder first: deploy/flash.sh --pull-review pi@bin.local DIR",
        )
    return listen(host, port, handler_for(review))
