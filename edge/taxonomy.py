"""Taxonomy: which bin each item label goes to.

Cities differ, so this is configuration, not training: a YAML file maps the
model's item labels to bin ids. See ``config/taxonomy/cn-4bin.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from edge.errors import SmartbinError

BIN_ID = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Bin:
    id: str
    name: str
    local_name: str = ""


@dataclass(frozen=True)
class Taxonomy:
    name: str
    bins: dict[str, Bin]
    items: dict[str, str]
    default_bin: str
    ignore: frozenset[str] = field(default_factory=frozenset)
    description: str = ""

    @property
    def bin_ids(self) -> list[str]:
        return list(self.bins)

    def bin_of(self, item: str) -> str | None:
        """The bin for ``item``; ``None`` for an ignored label such as ``empty``."""
        if item in self.ignore:
            return None
        return self.items.get(item, self.default_bin)

    def uncovered(self, labels: Iterable[str]) -> list[str]:
        """Labels this taxonomy neither maps nor ignores."""
        return [lab for lab in labels if lab not in self.items and lab not in self.ignore]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "default_bin": self.default_bin,
            "bins": {b.id: {"name": b.name, "local_name": b.local_name} for b in self.bins.values()},
            "items": dict(self.items),
            "ignore": sorted(self.ignore),
        }


def parse_taxonomy(data: Any, source: str = "taxonomy") -> Taxonomy:
    """Validate a taxonomy mapping (as read from YAML or a bundle's model.json)."""

    def fail(problem: str, fix: str) -> SmartbinError:
        return SmartbinError(f"{source}: {problem}", fix)

    if not isinstance(data, Mapping):
        raise fail("is not a mapping", "a taxonomy has the keys name, bins, items, default_bin")
    raw_bins = data.get("bins")
    if not isinstance(raw_bins, Mapping) or not raw_bins:
        raise fail("has no 'bins'", "list the bins, e.g. bins: {recyclable: {name: Recyclable}}")
    bins: dict[str, Bin] = {}
    for bin_id, spec in raw_bins.items():
        if not isinstance(bin_id, str) or not BIN_ID.match(bin_id):
            raise fail(
                f"bin id {bin_id!r} is not valid",
                "use lowercase letters, digits, '-' or '_', starting with a letter",
            )
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise fail(f"bins.{bin_id} is not a mapping", "give it a name: {name: ...}")
        bins[bin_id] = Bin(bin_id, str(spec.get("name", bin_id)), str(spec.get("local_name", "")))
    default_bin = data.get("default_bin")
    if default_bin not in bins:
        raise fail(
            f"default_bin {default_bin!r} is not one of the bins {list(bins)}",
            "set default_bin to one of the bins declared under 'bins'",
        )
    raw_items = data.get("items") or {}
    if not isinstance(raw_items, Mapping):
        raise fail("'items' is not a mapping", "write items as label: bin_id lines")
    items: dict[str, str] = {}
    for label, bin_id in raw_items.items():
        if bin_id not in bins:
            raise fail(
                f"items.{label} goes to bin {bin_id!r}, which does not exist",
                f"use one of {list(bins)} or declare {bin_id!r} under 'bins'",
            )
        items[str(label)] = bin_id
    ignore = data.get("ignore") or []
    if not isinstance(ignore, list):
        raise fail("'ignore' is not a list", "write ignore: [empty]")
    both = sorted(set(items) & set(map(str, ignore)))
    if both:
        raise fail(f"labels {both} are both mapped and ignored", "keep each label in one place")
    return Taxonomy(
        name=str(data.get("name", "unnamed")),
        description=str(data.get("description", "")),
        bins=bins,
        items=items,
        default_bin=default_bin,
        ignore=frozenset(map(str, ignore)),
    )


def load_taxonomy(path: str | Path) -> Taxonomy:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SmartbinError(
            f"taxonomy file {path} does not exist",
            "point model.taxonomy (or --taxonomy) at a file like config/taxonomy/cn-4bin.yaml",
        ) from None
    except yaml.YAMLError as exc:
        raise SmartbinError(f"taxonomy file {path} is not valid YAML: {exc}", "fix the syntax") from None
    return parse_taxonomy(data, source=str(path))
