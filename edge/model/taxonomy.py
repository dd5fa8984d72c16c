"""Taxonomy: which bin each item label goes to, and which labels name one thing.

Cities differ, so this is configuration, not training: a YAML file maps the
model's item labels to bin ids. See ``config/taxonomy/cn-4bin.yaml``.

Labels from different photo collections may name one thing (``white-glass``,
``glass-bottle``): the optional ``concepts`` group them, parent -> children, a
child being a label or another concept. A concept has one bin, that of all its
labels, and the decision, the counts and the events name the top-most concept.

The optional ``never_tip`` names labels (or concepts) that are not waste (a hand, a phone): the bin
never tips them by itself. Each has a reason (what the tray fault says) and whether a person may
override it with a second press of the sort button. Unlike ``ignore`` (an empty tray), a never-tip
item is on the tray and stays there. By default it is held when it is the most probable item; with
``hold_above: p`` it is held whenever its probability (its labels' summed) is at least ``p``, even when
another item wins (a hand at 40% beside paper at 45%).
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
CONCEPT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # the rule of an item label (edge.images.LABEL)
MAX_COST = 1e6
CONCEPTS_EXAMPLE = "concepts: {glass: [glass-bottle, glassware], metal: [metal, drink-can]}"
NEVER_TIP_EXAMPLE = (
    'never_tip: {hand: {reason: "a hand is on the tray", override: false, hold_above: 0.2}, phone: {}}'
)
NEVER_TIP_KEYS = ("reason", "override", "hold_above")
MAX_REASON = 200
MAX_CONCEPT_DEPTH = 16  # concepts under concepts: a real tree has 2 or 3 levels


@dataclass(frozen=True)
class NeverTip:
    """Why an item is never tipped by itself, and whether a second press (a person checked) may sort it."""

    reason: str
    override: bool = True
    # hold when this item's probability is at least this, even if another item wins; None: only when it wins
    hold_above: float | None = None


def default_reason(label: str) -> str:
    return f"{label} on the tray: take it back"


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
    # concept -> its children (labels or concepts), checked by parse_taxonomy
    concepts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # label or concept -> why it is never tipped (a concept's labels are never tipped with it)
    never_tip: dict[str, NeverTip] = field(default_factory=dict)
    _parent: dict[str, str] = field(init=False, repr=False, compare=False)
    _never_tip_labels: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # a concept listing the label of its own name holds that label: no link to itself
        parent = {
            child: name for name, children in self.concepts.items() for child in children if child != name
        }
        object.__setattr__(self, "_parent", parent)
        held = frozenset(label for name in self.never_tip for label in self.labels_of(name))
        object.__setattr__(self, "_never_tip_labels", held)

    @property
    def never_tip_labels(self) -> frozenset[str]:
        """The labels never tipped: those under ``never_tip`` and those of the concepts there."""
        return self._never_tip_labels

    def never_tip_rule(self, name: str) -> NeverTip | None:
        """Why ``name`` (a label or a concept) is never tipped, or ``None`` for waste and empty labels.

        Its own entry, or that of the nearest concept above it; a concept none of whose ancestors is
        listed combines its labels': a person may override it only if each of them allows it."""
        up: str | None = name
        while up is not None:
            if up in self.never_tip:
                return self.never_tip[up]
            up = self._parent.get(up)
        labels = self.labels_of(name)
        if not any(label in self._never_tip_labels for label in labels):
            return None
        rules = [r for r in (self.never_tip_rule(label) for label in labels if label != name) if r]
        if not rules:
            return None
        strict = [r for r in rules if not r.override]
        return strict[0] if strict else rules[0]

    @property
    def bin_ids(self) -> list[str]:
        return list(self.bins)

    def cost(self, true_bin: str, chosen_bin: str) -> float:
        """What putting an item of ``true_bin`` into ``chosen_bin`` costs: 0 when right, 1 without costs."""
        if self.costs is not None:
            return self.costs[true_bin][chosen_bin]
        return 0.0 if true_bin == chosen_bin else 1.0

    def bin_of(self, item: str) -> str | None:
        """The bin for ``item`` (a label or a concept); ``None`` for an ignored label such as ``empty``."""
        if item in self.concepts:
            item = self.labels_of(item)[0]  # a concept's labels all go to one bin (parse_concepts)
        if item in self.ignore or item in self._never_tip_labels:
            return None
        return self.items.get(item, self.default_bin)

    def concept_of(self, label: str) -> str:
        """The top-most concept that holds ``label``; the label itself when no concept holds it."""
        name = label
        while name in self._parent:
            name = self._parent[name]
        return name

    def labels_of(self, concept: str) -> list[str]:
        """The labels a concept holds, at any depth (``[concept]`` for a name that is no concept)."""
        return _leaves(concept, self.concepts) if concept in self.concepts else [concept]

    def uncovered(self, labels: Iterable[str]) -> list[str]:
        """Labels this taxonomy neither maps, ignores nor never tips."""
        return [
            lab
            for lab in labels
            if lab not in self.items and lab not in self.ignore and lab not in self._never_tip_labels
        ]

    def never_tip_missing(self, labels: Iterable[str]) -> list[str]:
        """The never-tip labels a model with ``labels`` cannot say: a rule that could never hold."""
        known = set(labels)
        return sorted(label for label in self._never_tip_labels if label not in known)

    def holding_only(self, labels: Iterable[str]) -> Taxonomy:
        """This taxonomy without the never-tip rules a model with ``labels`` could never apply."""
        known = set(labels)
        kept = {
            name: rule
            for name, rule in self.never_tip.items()
            if all(label in known for label in self.labels_of(name))
        }
        return self if len(kept) == len(self.never_tip) else dataclasses.replace(self, never_tip=kept)

    def with_items(self, items: Mapping[str, str]) -> Taxonomy:
        """This taxonomy and those of ``items`` it does not cover, mapped to a bin it has.

        A new item labelled on the labelling page carries its bin; the rules for an
        item this taxonomy already maps (or ignores) stay as they are. A new item
        named after a concept joins it, as the label of its own name, if it goes
        to the concept's bin (otherwise it is left out: one name, one bin).
        """
        new = {
            k: v
            for k, v in items.items()
            if self.uncovered([k]) and v in self.bins and (k not in self.concepts or v == self.bin_of(k))
        }
        if not new:
            return self
        joined = {k: (k, *v) if k in new else v for k, v in self.concepts.items()}
        return dataclasses.replace(self, items={**self.items, **new}, concepts=joined)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "default_bin": self.default_bin,
            "bins": {b.id: {"name": b.name, "local_name": b.local_name} for b in self.bins.values()},
            "items": dict(self.items),
            "ignore": sorted(self.ignore),
            **({"concepts": {k: list(v) for k, v in self.concepts.items()}} if self.concepts else {}),
            **({"costs": self.costs} if self.costs is not None else {}),
            **(
                {
                    "never_tip": {
                        k: {
                            "reason": r.reason,
                            "override": r.override,
                            **({"hold_above": r.hold_above} if r.hold_above is not None else {}),
                        }
                        for k, r in self.never_tip.items()
                    }
                }
                if self.never_tip
                else {}
            ),
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
    ignored = frozenset(map(str, ignore))
    never_tip = parse_never_tip(data.get("never_tip"), fail)
    held = never_tip_labels(never_tip, data.get("concepts"))
    for where, names in (("mapped to a bin under 'items'", items), ("listed under 'ignore'", ignored)):
        both = sorted(held & set(names))
        if both:
            raise fail(
                f"labels {both} are never tipped (never_tip) and {where}",
                "a label is waste (items), an empty tray (ignore) or not waste (never_tip): keep it in one "
                "place",
            )
    concepts = parse_concepts(data.get("concepts"), items, ignored, fail, held)
    return Taxonomy(
        name=str(data.get("name", "unnamed")),
        description=str(data.get("description", "")),
        bins=bins,
        items=items,
        default_bin=default_bin,
        ignore=ignored,
        costs=costs,
        concepts=concepts,
        never_tip=never_tip,
    )


def parse_never_tip(raw: Any, fail) -> dict[str, NeverTip]:
    """``never_tip``: a list of labels, or label -> {reason: text, override: bool, hold_above: p} (all
    optional)."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        raw = dict.fromkeys(raw)
    if not isinstance(raw, Mapping):
        raise fail("'never_tip' is neither a list nor a mapping", f"write e.g. {NEVER_TIP_EXAMPLE}")
    rules: dict[str, NeverTip] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not CONCEPT_NAME.match(name):
            raise fail(
                f"never_tip name {name!r} is not valid",
                "name a model label or a concept: lowercase letters, digits and '-', at most 40",
            )
        if name in rules:
            raise fail(f"never_tip lists {name!r} more than once", "list each name once")
        key = f"never_tip.{name}"
        spec = {} if spec is None else spec
        if not isinstance(spec, Mapping):
            raise fail(f"{key} is not a mapping", f"write {name}: {{reason: ..., override: true}}")
        unknown = sorted(str(k) for k in spec if k not in NEVER_TIP_KEYS)
        if unknown:
            raise fail(
                f"{key} has unknown keys {unknown}",
                "it takes reason (text), override (true/false) and hold_above (a probability, 0 < p <= 1)",
            )
        reason = spec.get("reason", default_reason(name))
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
            raise fail(
                f"{key}.reason = {reason!r} is not a text of 1 to {MAX_REASON} characters",
                f'write what a person at the bin should read, e.g. reason: "{default_reason(name)}"',
            )
        override = spec.get("override", True)
        if not isinstance(override, bool):
            raise fail(
                f"{key}.override = {override!r} is not true or false",
                "true: a second press of the sort button sorts it (a person checked); false: never",
            )
        hold_above = spec.get("hold_above")
        if hold_above is not None and (
            isinstance(hold_above, bool)
            or not isinstance(hold_above, (int, float))
            or not 0 < hold_above <= 1  # NaN fails this too
        ):
            raise fail(
                f"{key}.hold_above = {hold_above!r} is not a probability above 0 and at most 1",
                f"write e.g. {name}: {{hold_above: 0.2}} (held whenever its probability is at least 20%, "
                "chosen on validation), or leave it out to hold it only when it is the most probable item",
            )
        rules[name] = NeverTip(reason.strip(), override, None if hold_above is None else float(hold_above))
    return rules


def never_tip_labels(rules: Mapping[str, NeverTip], raw_concepts: Any) -> frozenset[str]:
    """The labels never tipped, before the concepts are checked: each name, or, for a concept, the names
    below it that are no concepts (walked in the raw mapping; its cycles are refused later)."""
    raw = raw_concepts if isinstance(raw_concepts, Mapping) else {}
    found, seen, todo = set(), set(), list(rules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        children = raw.get(name)
        if not isinstance(children, list):
            found.add(name)
            continue
        for child in children:
            if child == name:
                found.add(name)
            elif isinstance(child, str):
                todo.append(child)
    return frozenset(found)


def parse_concepts(
    raw: Any, items: Mapping[str, str], ignore: frozenset[str], fail, never_tip: frozenset[str] = frozenset()
) -> dict[str, tuple[str, ...]]:
    """The concepts: parent -> children (labels under items or ignore, or other concepts), a tree whose
    every concept goes to one bin. A concept may list the label of its own name (``metal: [metal, ...]``)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise fail("'concepts' is not a mapping", f"write one line per concept, e.g. {CONCEPTS_EXAMPLE}")
    concepts: dict[str, tuple[str, ...]] = {}
    for name, children in raw.items():
        key = f"concepts.{name}"
        if not isinstance(name, str) or not CONCEPT_NAME.match(name):
            raise fail(
                f"concept name {name!r} is not valid",
                "name it as an item label is named: lowercase letters, digits and '-', at most 40",
            )
        if (
            not isinstance(children, list)
            or not children
            or not all(isinstance(child, str) for child in children)
        ):
            raise fail(
                f"{key} is not a list of names", f"list its labels or concepts, e.g. {CONCEPTS_EXAMPLE}"
            )
        twice = sorted({child for child in children if children.count(child) > 1})
        if twice:
            raise fail(f"{key} lists {twice} more than once", "list each name once")
        concepts[name] = tuple(children)
    labels = {*items, *ignore, *never_tip}
    parents: dict[str, list[str]] = {}
    for name, children in concepts.items():
        if name in labels and name not in children:
            raise fail(
                f"concepts.{name} is named after the label {name!r} but does not hold it",
                f"list it first: {name}: [{name}, {', '.join(children)}], or give the concept another name",
            )
        for child in children:
            if child == name and name not in labels:
                raise fail(
                    f"concepts form a cycle: {name} -> {name}",
                    f"a concept cannot hold itself: remove {name!r} from its list (a concept may list the "
                    "label of its own name only when that label is under 'items' or 'ignore')",
                )
            if child not in labels and child not in concepts:
                raise fail(
                    f"concepts.{name} lists {child!r}, which is neither a label under 'items' or 'ignore' "
                    "nor a concept",
                    f"check its spelling, map {child!r} to a bin under 'items', or declare it a concept",
                )
            if child != name:
                parents.setdefault(child, []).append(name)
    for child, above in parents.items():
        if len(above) > 1:
            raise fail(
                f"{child!r} is listed under two concepts, concepts.{above[0]} and concepts.{above[1]}",
                f"a name has one parent: keep {child!r} under one of them (a concept may hold another "
                "concept whole)",
            )
    for start in concepts:
        path, name = [start], start
        while name in parents:
            name = parents[name][0]
            if name == start:
                raise fail(
                    f"concepts form a cycle: {' -> '.join(reversed([*path, name]))}",
                    "a concept cannot hold itself, even through other concepts: remove one of these links",
                )
            if name in path:
                break  # a cycle that does not pass through start: found from one of its own names
            path.append(name)
            if len(path) > MAX_CONCEPT_DEPTH:
                raise fail(
                    f"concepts nest more than {MAX_CONCEPT_DEPTH} levels deep "
                    f"({' -> '.join(reversed(path[-4:]))} -> ... -> {start})",
                    "a concept names one thing and holds its labels: group them under a few levels of "
                    "concepts at most",
                )
    for name in concepts:
        where: dict[str, list[str]] = {}
        for label in _leaves(name, concepts):
            kind = "ignored" if label in ignore else "never tipped" if label in never_tip else items[label]
            where.setdefault(kind, []).append(label)
        if len(where) > 1:
            spread = "; ".join(f"{', '.join(held)} -> {bin_id}" for bin_id, held in where.items())
            raise fail(
                f"concepts.{name} holds labels of different bins ({spread})",
                "a concept names one thing, so it has one bin: split it into one concept per bin, or map "
                "its labels to one bin under 'items'",
            )
    return concepts


def _leaves(name: str, concepts: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The labels under a concept, in the order its lists name them (walked without recursion)."""
    found: list[str] = []
    todo = [(name, child) for child in reversed(concepts[name])]
    while todo:
        parent, child = todo.pop()
        if child == parent or child not in concepts:
            found.append(child)
        else:
            todo += [(child, grandchild) for grandchild in reversed(concepts[child])]
    return found


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
