"""A taxonomy file a bin can be given by mistake or on purpose is refused with a message, never read
until memory runs out or walked until Python's recursion limit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge.errors import SmartbinError
from edge.model.taxonomy import MAX_CONCEPT_DEPTH, load_taxonomy, parse_taxonomy


def chain(depth: int) -> dict:
    """A taxonomy whose concepts nest ``depth`` deep: c0 holds c1, ..., the last holds the label x."""
    concepts = {f"c{i}": [f"c{i + 1}"] for i in range(depth - 1)}
    concepts[f"c{depth - 1}"] = ["x"]
    return {
        "name": "t",
        "default_bin": "other",
        "bins": {"other": {}},
        "items": {"x": "other"},
        "concepts": concepts,
    }


def test_concepts_nested_thousands_deep_are_refused_without_a_traceback(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(chain(3000), sort_keys=False))
    assert path.stat().st_size < 100_000
    with pytest.raises(SmartbinError) as err:
        load_taxonomy(path)
    assert err.value.problem == (
        f"{path}: concepts nest more than {MAX_CONCEPT_DEPTH} levels deep "
        "(c0 -> c1 -> c2 -> c3 -> ... -> c16)"
    )
    assert "a few levels of concepts at most" in err.value.fix


def test_concepts_up_to_the_limit_are_taken():
    taxonomy = parse_taxonomy(chain(MAX_CONCEPT_DEPTH))
    assert taxonomy.concept_of("x") == "c0" and taxonomy.labels_of("c0") == ["x"]
    with pytest.raises(SmartbinError, match="nest more than"):
        parse_taxonomy(chain(MAX_CONCEPT_DEPTH + 1))


def test_a_concepts_labels_come_in_the_order_its_lists_name_them():
    data = {
        "name": "t",
        "default_bin": "other",
        "bins": {"other": {}},
        "items": dict.fromkeys(["a", "b", "c", "d", "e", "glass"], "other"),
        "concepts": {
            "glass": ["glass", "jars", "e"],
            "jars": ["a", "small", "d"],
            "small": ["b", "c"],
        },
    }
    taxonomy = parse_taxonomy(data)
    assert taxonomy.labels_of("glass") == ["glass", "a", "b", "c", "d", "e"]
    assert taxonomy.labels_of("jars") == ["a", "b", "c", "d"]
    assert taxonomy.labels_of("e") == ["e"]


def test_a_taxonomy_that_is_a_device_or_too_large_is_refused_naming_the_cap(tmp_path):
    with pytest.raises(SmartbinError) as err:
        load_taxonomy("/dev/zero")
    assert "is a character device, not a regular file" in err.value.problem and "1 MiB" in err.value.problem
    big = Path(tmp_path / "big.yaml")
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(SmartbinError, match="is 2097152 bytes, more than the 1 MiB smartbin reads"):
        load_taxonomy(big)
