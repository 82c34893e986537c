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


SECTIONS = {
    "run": "raxnet.config:RUN_DEFAULTS",
    "synthetic": "raxnet.synthetic:DEFAULTS",
    "dataset": "raxnet.dataset_info:DEFAULTS",
    "split": "raxnet.splitting:DEFAULTS",
    "convert": "raxnet.slices:DEFAULTS",
    "folds": "raxnet.folds:DEFAULTS",
    "arrays": "raxnet.batches:DEFAULTS",
    "augment": "raxnet.augment:DEFAULTS",
    "model": "raxnet.models:DEFAULTS",
    "train": "raxnet.training:DEFAULTS",
    "fusion": "raxnet.fusion:DEFAULTS",
    "predict": "raxnet.predict:DEFAULTS",
}


def test_shipped_configs_are_valid():
    """Every section of every configs/*.toml is known and every key exists in its module's defaults."""
    import importlib
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert {p.name for p in paths} >= {"demo.toml", "atlas.toml"}
    for path in paths:
        cfg = load_config(path)
        assert set(cfg) - {"_source"} <= set(SECTIONS), path
        for name, target in SECTIONS.items():
            module, attr = target.split(":")
            section(cfg, name, getattr(importlib.import_module(module), attr))
