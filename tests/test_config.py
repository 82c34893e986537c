"""raxnet.config: TOML sections over module defaults, flag overrides, stage folders."""

import pytest

from raxnet.config import defaults_of, load_config, override, section, stage_dir, validate, with_flags
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
    """Every section of every configs/*.toml is known and every value has its default's type."""
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
    assert {p.name for p in paths} >= {"demo.toml", "atlas.toml"}
    for path in paths:
        cfg = load_config(path)
        validate(cfg)
        for name in set(cfg) - {"_source"}:
            section(cfg, name, defaults_of(name))


def test_section_registry_points_at_the_modules_defaults():
    """The registry names each module's own DEFAULTS (and reading them does not import TensorFlow)."""
    import subprocess
    import sys

    from raxnet import batches, fusion, models, predict, training

    assert defaults_of("arrays") is batches.DEFAULTS and defaults_of("model") is models.DEFAULTS
    assert defaults_of("train") is training.DEFAULTS and defaults_of("fusion") is fusion.DEFAULTS
    assert defaults_of("predict") is predict.DEFAULTS
    code = ("import sys; from raxnet import config\nfor n in config.SECTIONS: config.defaults_of(n)\n"
            "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_validate_reports_every_problem_one_per_line(tmp_path):
    """Issue repro: a misspelt section was ignored, a misspelt key caught only by stage 07 and
    ``epochs = "two"`` gave a traceback."""
    path = tmp_path / "bad.toml"
    path.write_text('[trian]\nepochs = 2\n[train]\nepochs = "two"\nfolds = 1\n[model]\nwidht = 8\n'
                    '[split]\nholdout_fraction = 1\nvolume_bin_edges = [0, "a"]\n[run]\nseed = true\n'
                    '[folds]\narea_bin_edges = { axial = [0, 1], sagital = [0] }\n[convert]\nplanes = "axil"\n')
    with pytest.raises(ConfigError) as exc:
        validate(load_config(path))
    lines = exc.value.lines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = "\n".join(lines)
    assert "unknown section [trian]" in text
    assert "[train] epochs = 'two': expected an integer (default 60)" in text
    assert "unknown setting [model] widht" in text
    assert "[split] volume_bin_edges: element 'a' is not a number" in text
    assert "[run] seed = True: expected an integer" in text
    assert "[folds] area_bin_edges: unknown key 'sagital'" in text
    assert "[convert] planes = 'axil'" in text
    assert len(lines) == 7  # folds = 1 and holdout_fraction = 1 (an int for a float) are fine


def test_cli_prints_one_error_line_per_problem(tmp_path, capsys):
    from raxnet import splitting
    from raxnet.cli_common import run_cli

    path = tmp_path / "bad.toml"
    path.write_text('[trian]\nepochs = 2\n[train]\nepochs = "two"\n')
    with pytest.raises(SystemExit) as exc:
        run_cli(splitting.main, ["--config", str(path), "--work-dir", str(tmp_path / "w")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "w").exists()  # refused before anything is written


def test_with_flags_keeps_only_what_was_given():
    cfg = with_flags({"split": {"seed": 1}}, "split", holdout_fraction=0.3, stratify_site=None)
    assert cfg == {"split": {"seed": 1, "holdout_fraction": 0.3}}
    with pytest.raises(ConfigError):
        with_flags({}, "split", colour="red")


def test_weights_restart_config_matches_phase_1():
    """`make weights` phase 2 restarts phase 1's networks: same data, split, folds, model and batches, or its
    out-of-fold post-processing choice and hold-out would no longer be unseen (the two files are copies)."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "configs"
    phase1 = load_config(configs / "weights_demo.toml")
    phase2 = load_config(configs / "weights_demo_restart.toml")
    for name in ("synthetic", "split", "folds", "model", "arrays"):
        assert phase2[name] == phase1[name], name
    # stage 08 fuses the run folder of phase 2's own loss; otherwise the same fusion settings
    from raxnet.runs import run_name

    assert {k: v for k, v in phase2["fusion"].items() if k != "model"} == \
        {k: v for k, v in phase1["fusion"].items() if k != "model"}
    assert phase2["fusion"]["model"] == run_name("raxnet", phase2["train"].get("loss", "tversky_focal"))
    assert (phase2["run"]["seed"], phase2["run"]["data_root"]) == (phase1["run"]["seed"], phase1["run"]["data_root"])
    assert phase2["train"]["folds"] == phase1["train"]["folds"]
    assert phase2["train"]["init_weights"] == phase1["run"]["work_dir"] + "/export"


def test_demo_config_fits_the_weights_it_starts_from():
    """`make demo` fine-tunes weights/demo: its slices must reach the networks with the channels they take
    (``2 * [arrays] context + 1``), or stage 07 stops at the warm start."""
    import json
    from pathlib import Path

    from raxnet.batches import context_setting

    root = Path(__file__).resolve().parents[1]
    demo = load_config(root / "configs" / "demo.toml")
    start = root / demo["train"]["init_weights"]
    planes = json.loads((start / "weights.json").read_text())["planes"]
    context = context_setting(section(demo, "arrays", defaults_of("arrays")))
    assert {p["input_shape"][-1] for p in planes.values()} == {2 * context + 1}
