"""Taxonomy: which bin each item label goes to.

Cities differ, so this is configuration, not training: a YAML file maps the
model's item labels to bin ids. See ``config/taxonomy/cn-4bin.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from edge.errors import SmartbinError
from edge.schema import read_yaml_file

BIN_ID = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_COST = 1e6


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
    costs: dict[str, dict[str, float]] | None = None

    @property
    def bin_ids(self) -> list[str]:
        return list(self.bins)

    def cost(self, true_bin: str, chosen_bin: str) -> float:
        """What putting an item of ``true_bin`` into ``chosen_bin`` costs: 0 when right, 1 without costs."""
        if self.costs is not None:
            return self.costs[true_bin][chosen_bin]
        return 0.0 if true_bin == chosen_bin else 1.0

    def bin_of(self, item: str) -> str | None:
        """The bin for ``item``; ``None`` for an ignored label such as ``empty``."""
        if item in self.ignore:
            return None
        return self.items.get(item, self.default_bin)

    def uncovered(self, labels: Iterable[str]) -> list[str]:
        """Labels this taxonomy neither maps nor ignores."""
        return [lab for lab in labels if lab not in self.items and lab not in self.ignore]

    def with_items(self, items: Mapping[str, str]) -> Taxonomy:
        """This taxonomy and those of ``items`` it does not cover, mapped to a bin it has.

        A new item labelled on the labelling page carries its bin; the rules for an
        item this taxonomy already maps (or ignores) stay as they are.
        """
        new = {k: v for k, v in items.items() if self.uncovered([k]) and v in self.bins}
        return dataclasses.replace(self, items={**self.items, **new}) if new else self

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "default_bin": self.default_bin,
            "bins": {b.id: {"name": b.name, "local_name": b.local_name} for b in self.bins.values()},
            "items": dict(self.items),
            "ignore": sorted(self.ignore),
            **({"costs": self.costs} if self.costs is not None else {}),
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
    costs = parse_costs(data.get("costs"), list(bins), fail)
    return Taxonomy(
        name=str(data.get("name", "unnamed")),
        description=str(data.get("description", "")),
        bins=bins,
        items=items,
        default_bin=default_bin,
        ignore=frozenset(map(str, ignore)),
        costs=costs,
    )


def parse_costs(raw: Any, bins: list[str], fail) -> dict[str, dict[str, float]] | None:
    """The misrouting costs: a full matrix, true bin -> chosen bin -> cost >= 0, zero on the diagonal."""
    if raw is None:
        return None
    example = "costs: {hazardous: {recyclable: 20, kitchen: 20, other: 10, hazardous: 0}, ...}"
    if not isinstance(raw, Mapping):
        raise fail("'costs' is not a mapping", f"write one row per true bin, e.g. {example}")
    unknown = sorted(str(b) for b in raw if b not in bins)
    missing = [b for b in bins if b not in raw]
    if unknown or missing:
        problem = "costs " + "; ".join(
            part
            for part in (
                f"name unknown bins {unknown}" if unknown else "",
                f"have no row for bins {missing}" if missing else "",
            )
            if part
        )
        raise fail(problem, f"give one row for each bin of {bins} (the item's true bin), e.g. {example}")
    costs: dict[str, dict[str, float]] = {}
    for true_bin in bins:
        row = raw[true_bin]
        key = f"costs.{true_bin}"
        if not isinstance(row, Mapping):
            raise fail(f"{key} is not a mapping", f"list the cost of each chosen bin: {bins}")
        unknown = sorted(str(b) for b in row if b not in bins)
        missing = [b for b in bins if b not in row and b != true_bin]
        if unknown:
            raise fail(f"{key} names unknown bins {unknown}", f"use the bins {bins}")
        if missing:
            raise fail(
                f"{key} has no cost for bins {missing}",
                f"give the cost of putting a {true_bin} item into each of them (1 = an ordinary mistake)",
            )
        costs[true_bin] = {}
        for chosen in bins:
            value = row.get(chosen, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise fail(f"{key}.{chosen} = {value!r} is not a number", "write a number, e.g. 1 or 20")
            if chosen == true_bin and value != 0:
                raise fail(
                    f"{key}.{chosen} = {value!r}", "the right bin costs nothing: write 0 or leave it out"
                )
            if not 0 <= value <= MAX_COST:
                raise fail(
                    f"{key}.{chosen} = {value!r} is out of range",
                    f"costs are 0 to {MAX_COST:g}; 1 is an ordinary mistake, more is a worse one",
                )
            costs[true_bin][chosen] = float(value)
    return costs


def load_taxonomy(path: str | Path) -> Taxonomy:
    data = read_yaml_file(
        Path(path),
        "taxonomy file",
        missing_fix="point model.taxonomy (or --taxonomy) at a file like config/taxonomy/cn-4bin.yaml",
        damaged_fix="point model.taxonomy at the YAML file, or copy it again from config/taxonomy/",
        unreadable_fix="point model.taxonomy at the YAML file and check its permissions",
    )
    return parse_taxonomy(data, source=str(path))
