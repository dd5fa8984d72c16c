import pytest
import yaml

from edge.config import Config, describe, load_config, parse_config
from edge.errors import SmartbinError


def test_defaults_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.threshold == 0.65


def test_reference_lists_every_key_and_parses_back():
    text = describe()
    assert "threshold" in text and "# bin confidence below" in text
    assert parse_config(yaml.safe_load(text)) == Config()


@pytest.mark.parametrize(
    "data, words",
    [
        ({"model": {"threshold": "high"}}, ["model.threshold", "'high'", "a number"]),
        ({"model": {"threshold": 1.5}}, ["model.threshold", "1.5", "from 0 to 1"]),
        ({"model": {"threads": 0}}, ["model.threads", ">= 1"]),
        ({"model": {"treshold": 0.5}}, ["unknown key model.treshold", "threshold"]),
        ({"model": "big"}, ["model must be a mapping"]),
        ({"device_id": "a/b"}, ["device_id", "'a/b'"]),
        ({"model": {"threads": True}}, ["model.threads", "an integer"]),
    ],
)
def test_bad_config_names_key_value_and_expectation(data, words):
    with pytest.raises(SmartbinError) as err:
        parse_config(data, source="smartbin.yaml")
    for word in words:
        assert word in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(SmartbinError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("model: {threshold: 0.5\n")
    with pytest.raises(SmartbinError, match="not valid YAML"):
        load_config(p)
    p.write_text("model:\n  threshold: 0.8\n")
    assert load_config(p).model.threshold == 0.8
