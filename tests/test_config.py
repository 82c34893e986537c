"""raxnet.config: TOML sections over module defaults, flag overrides, stage folders."""

import pytest

from raxnet.config import load_config, override, section, stage_dir
from raxnet.errors import ConfigError

DEFAULTS = {"seed": 1, "bins": [0, 5], "nested": {"a": 1, "b": 2}}


def test_section_merges_and_rejects_unknown(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[split]\nseed = 7\nnested = { b = 3 }\n[other]\nx = 1\n')
    cfg = load_config(path)
    merged = section(cfg, "split", DEFAULTS)
    assert merged == {"seed": 7, "bins": [0, 5], "nested": {"a": 1, "b": 3}}
    assert DEFAULTS["nested"]["b"] == 2  # defaults untouched
    with pytest.raises(ConfigError, match="other.x"):
        section(cfg, "other", {"y": 0})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[x\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    assert load_config(None) == {}


def test_override_ignores_none_and_rejects_unknown():
    values = {"seed": 1, "jobs": 2}
    assert override(values, seed=None, jobs=4) == {"seed": 1, "jobs": 4}
    with pytest.raises(ConfigError):
        override(values, colour="red")


def test_stage_dir(tmp_path):
    assert stage_dir(tmp_path, "split").name == "02_data_splitting"
    assert not (tmp_path / "02_data_splitting").exists()
    assert stage_dir(tmp_path, "fusion", create=True).is_dir()
    with pytest.raises(KeyError):
        stage_dir(tmp_path, "nope")


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        cfg = load_config(path)
        assert "run" in cfg, path
