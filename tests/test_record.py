"""raxnet.record: one configuration per run, a record per stage, contradictions and stale inputs refused.

The chain runs the real stage CLIs on a tiny synthetic ATLAS (2 mm, 6 subjects): stage 01 gets the
configuration file, every later stage only ``--work-dir`` -- as the README's commands do.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_TOML, run_stage, write_synthetic

from raxnet import batches, dataset_info, folds, record, slices, splitting
from raxnet.errors import ConfigError, StageInputError


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_atlas):
    """Stages 01-04 run once as a user would; tests copy the work dir before changing anything."""
    base = tmp_path_factory.mktemp("chain")
    config = base / "tiny.toml"
    config.write_text(TINY_TOML)
    work = base / "work"
    assert dataset_info.main(["--config", str(config), "--work-dir", str(work), "--data-root", str(tiny_atlas)]) == 0
    for module in (splitting, slices, folds):
        assert module.main(["--work-dir", str(work)]) == 0, module.__name__
    return work


def _copy(work: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "work"
    shutil.copytree(work, dst)
    return dst


def test_first_stage_stores_the_configuration_and_later_stages_use_it(chain):
    stored = tomllib.loads((chain / record.CONFIG_FILE).read_text())
    assert stored["run"]["seed"] == 3 and stored["split"]["holdout_fraction"] == 0.25
    assert stored["model"]["width"] == 4 and "work_dir" not in stored["run"]
    # Stage 02 ran with --work-dir only and still used the run's seed and hold-out fraction.
    rec = json.loads((chain / "02_data_splitting" / record.RECORD_FILE).read_text())
    assert rec["status"] == "done"
    assert rec["settings"] == {"split": {**splitting.DEFAULTS, "holdout_fraction": 0.25}, "run": {"seed": 3}}
    assert rec["inputs"] == json.loads((chain / "01_dataset" / record.RECORD_FILE).read_text())["outputs"]
    assert set(rec["outputs"]) == {"02_data_splitting/split.csv", "02_data_splitting/split_stats.csv"}
    assert rec["versions"]["numpy"] == np.__version__
    folds_rec = json.loads((chain / "04_cross_validation" / record.RECORD_FILE).read_text())
    assert folds_rec["settings"]["folds"]["n_folds"] == 3  # not the default 5
    assert set(pd.read_csv(chain / "04_cross_validation" / "subject_folds.csv")["fold"]) == {1, 2, 3}


def test_image_paths_are_relative_and_fingerprinted(chain, tiny_atlas):
    subjects = pd.read_csv(chain / "01_dataset" / "subjects.csv")
    assert not any(Path(p).is_absolute() for p in subjects["t1_path"])
    assert all((tiny_atlas / p).is_file() for p in subjects["mask_path"])
    images = json.loads((chain / "01_dataset" / record.RECORD_FILE).read_text())["images"]
    first = images[subjects["subject"].iloc[0]]["t1"]
    assert first["path"] == subjects["t1_path"].iloc[0]
    assert first["sha256"] == record.sha256_file(tiny_atlas / first["path"])


def test_flag_contradicting_an_earlier_stage_is_refused(chain, tmp_path, capsys):
    work = _copy(chain, tmp_path)
    code, _, err = run_stage(folds.main, ["--work-dir", work, "--seed", 5], capsys)
    assert code == 2 and len(err) == 1
    assert "[run] seed = 5 contradicts 3" in err[0] and "stage 02" in err[0] and "fresh run" in err[0]
    # The stage's own settings may change: re-running stage 04 with 2 folds is allowed.
    code, _, err = run_stage(folds.main, ["--work-dir", work, "--folds", 2], capsys)
    assert code == 0 and not err


def test_edited_table_is_refused_with_one_line(chain, tmp_path, capsys):
    """A row deleted from subject_folds.csv: refused by its fingerprint, and without records by the
    cross-check against split.csv."""
    work = _copy(chain, tmp_path)
    path = work / "04_cross_validation" / "subject_folds.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    code, _, err = run_stage(batches.main, ["--work-dir", work], capsys)
    assert code == 2 and len(err) == 1
    assert "subject_folds.csv: changed after stage 04 wrote it" in err[0] and "re-run stage 04" in err[0]
    for rec in work.glob("*/record.json"):
        rec.unlink()
    code, _, err = run_stage(batches.main, ["--work-dir", work], capsys)
    assert code == 2 and len(err) == 1
    assert "subject_folds.csv" in err[0] and "train subjects of" in err[0] and "missing" in err[0]


def test_misspelt_set_and_deleted_lesion_slice_are_refused(chain, tmp_path, capsys):
    work = _copy(chain, tmp_path)
    for rec in work.glob("*/record.json"):
        rec.unlink()  # the table checks alone, as for a work dir made by hand
    split_path = work / "02_data_splitting" / "split.csv"
    good = split_path.read_text()
    split_path.write_text(good.replace(",train\n", ",trian\n", 1))
    for main in (folds.main, slices.main):
        code, _, err = run_stage(main, ["--work-dir", work], capsys)
        assert code == 2 and len(err) == 1, err
        assert "split.csv: row" in err[0] and "'trian' is not one of train, holdout" in err[0]
    split_path.write_text(good)
    path = work / "01_dataset" / "slices_axial.csv"
    table = pd.read_csv(path)
    lesion_row = int(np.flatnonzero(table["lesion_pixels"].to_numpy() > 0)[0])
    table.drop(index=lesion_row).to_csv(path, index=False)
    code, _, err = run_stage(folds.main, ["--work-dir", work], capsys)
    assert code == 2 and len(err) == 1
    assert "slices_axial.csv" in err[0] and "a row is missing" in err[0] and "re-run stage 01" in err[0]


def test_earlier_stage_out_of_date_is_refused(chain, tmp_path, capsys):
    """Stage 02 re-run with another hold-out fraction: stages 03 and 04 made from the old split are out
    of date (the first one found is named)."""
    work = _copy(chain, tmp_path)
    code, _, _ = run_stage(splitting.main, ["--work-dir", work, "--holdout-fraction", 0.5], capsys)
    assert code == 0
    stored = (work / record.CONFIG_FILE).read_bytes()
    code, _, err = run_stage(batches.main, ["--work-dir", work, "--batch-size", 6], capsys)
    assert code == 2 and len(err) == 1
    assert "stage 03 is out of date" in err[0] and "split.csv was rewritten" in err[0]
    assert "re-run stage 03 (03_moving_converting/convert_to_2d.py) before stage 05" in err[0]
    # the refused command's setting did not reach the run's configuration
    assert (work / record.CONFIG_FILE).read_bytes() == stored


def test_unfinished_stage_is_refused(chain, tmp_path, capsys):
    work = _copy(chain, tmp_path)
    rec_path = work / "04_cross_validation" / record.RECORD_FILE
    rec = json.loads(rec_path.read_text())
    rec_path.write_text(json.dumps({**rec, "status": "running"}))
    code, _, err = run_stage(batches.main, ["--work-dir", work], capsys)
    assert code == 2 and len(err) == 1 and "stage 04 did not finish" in err[0]


def test_regenerated_dataset_rebuilds_stale_stacks(tmp_path, capsys):
    """Issue repro: regenerate the dataset with another seed, re-run stages 01-02 into the same work dir;
    stage 03 must rebuild the stacks instead of keeping the old ones."""
    data, work = tmp_path / "ATLAS_2", tmp_path / "work"
    write_synthetic(data, subjects=4, seed=1)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    assert run_stage(dataset_info.main, ["--config", config, "--work-dir", work, "--data-root", data], capsys)[0] == 0
    assert run_stage(splitting.main, ["--work-dir", work], capsys)[0] == 0
    assert run_stage(slices.main, ["--work-dir", work], capsys)[0] == 0

    shutil.rmtree(data)
    write_synthetic(data, subjects=4, seed=2)
    # Without re-running stage 01, stage 03 refuses the changed images.
    code, _, err = run_stage(slices.main, ["--work-dir", work], capsys)
    assert code == 2 and len(err) == 1 and "changed since stage 01 read it" in err[0]
    assert run_stage(dataset_info.main, ["--work-dir", work], capsys)[0] == 0
    assert run_stage(splitting.main, ["--work-dir", work], capsys)[0] == 0
    code, out, _ = run_stage(slices.main, ["--work-dir", work], capsys)
    assert code == 0
    subjects = pd.read_csv(work / "01_dataset" / "subjects.csv").set_index("subject")
    index = pd.read_csv(work / "03_moving_converting" / "index.csv")
    for row in index.itertuples():
        mask = np.load(work / "03_moving_converting" / row.mask_path)
        assert int(mask.sum()) == subjects.loc[row.subject, "lesion_voxels"], row.subject


def test_data_root_moves_a_dataset(chain, tiny_atlas, tmp_path, capsys):
    work = _copy(chain, tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_atlas, moved)  # a copy: new modification times, same bytes
    shutil.rmtree(work / "03_moving_converting")
    code, _, err = run_stage(slices.main, ["--work-dir", work, "--data-root", moved], capsys)
    assert code == 0 and not err
    assert tomllib.loads((work / record.CONFIG_FILE).read_text())["run"]["data_root"] == str(moved.resolve())
    code, _, err = run_stage(slices.main, ["--work-dir", work, "--data-root", tmp_path / "nonexistent"], capsys)
    assert code == 2 and len(err) == 1 and "nonexistent: data root not found" in err[0]


def test_stale_temp_files_are_removed_at_stage_start(chain, tmp_path, capsys):
    work = _copy(chain, tmp_path)
    stale = [work / "03_moving_converting" / "axial" / ".sub-r001s001_mask.npy.a1b2c3d4.npy",
             work / "04_cross_validation" / ".subject_folds.csv.zz9_y8x7.csv"]
    keep = work / "04_cross_validation" / ".hidden_user_file"
    for path in [*stale, keep]:
        path.write_bytes(b"partial")
    assert run_stage(slices.main, ["--work-dir", work], capsys)[0] == 0
    assert run_stage(folds.main, ["--work-dir", work], capsys)[0] == 0
    assert not any(p.exists() for p in stale) and keep.exists()


# ------------------------------------------------------------------------------------------ units


def test_toml_round_trip_of_the_full_defaults():
    cfg = record.full_defaults()
    back = tomllib.loads(record.dump_toml(cfg, "header\nlines"))
    assert back == {k: v for k, v in cfg.items()}


def test_same_file_checks_size_mtime_then_content(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    ident = record.file_identity(path)
    assert record.same_file(path, ident)
    path.write_bytes(b"abc")  # same bytes, new mtime: the hash decides
    assert record.same_file(path, ident)
    path.write_bytes(b"abd")
    assert not record.same_file(path, ident)
    assert not record.same_file(tmp_path / "missing", ident)


def test_in_process_callers_count_as_explicit(tmp_path):
    """A plain dict ``run`` (tests, the demo) is all explicit; defaults never contradict a record."""
    work = tmp_path / "w"
    st = record.begin("split", {"split": {"holdout_fraction": 0.3}}, {"work_dir": str(work), "seed": 9})
    st.finish()
    assert st.cfg["split"]["holdout_fraction"] == 0.3 and st.run["seed"] == 9
    st = record.begin("folds", {}, {"work_dir": str(work)})
    assert st.run["seed"] == 9  # from the run's configuration, not the default 42
    with pytest.raises(ConfigError, match="seed = 1 contradicts 9"):
        record.begin("folds", {}, {"work_dir": str(work), "seed": 1})
    with pytest.raises(ConfigError, match="unknown section"):
        record.begin("folds", {"trian": {}}, {"work_dir": str(work)})
    with pytest.raises(StageInputError):
        record.read_record(work, "dataset") or record.check_images(work, tmp_path / "nope", [], "x")


def test_stage_07_trains_the_model_stage_06_described(chain, tmp_path, capsys):
    """Issue repro: ``build_model.py --width 8`` reported one network, then ``train.py --plane coronal
    --fold 1`` (no --config) trained the default width-32 one for up to 60 epochs on all folds."""
    from raxnet import model_report, training

    work = _copy(chain, tmp_path)
    code, _, err = run_stage(model_report.main, ["--work-dir", work, "--width", 6, "--models", "raxnet"], capsys)
    assert code == 0 and not err
    code, _, err = run_stage(training.main, ["--work-dir", work, "--plane", "coronal", "--fold", 1], capsys)
    assert code == 0 and not err
    described = pd.read_csv(work / "06_model" / "models.csv").set_index(["model", "plane"])
    info = json.loads((work / "07_train" / "raxnet" / "coronal" / "fold_1" / "run.json").read_text())
    assert info["params"] == described.loc[("raxnet", "coronal"), "params"]
    assert info["config"]["model"]["width"] == 6 and info["epochs_run"] == 1  # tiny.toml: epochs = 1
    assert info["config"]["arrays"]["steps_per_epoch"] == 2
    assert not (work / "07_train" / "raxnet" / "coronal" / "fold_2").exists()  # tiny.toml: folds = "1"
    # The configuration file again: its width 4 contradicts what stage 06 described.
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(TINY_TOML)
    code, _, err = run_stage(training.main, ["--config", tiny, "--work-dir", work, "--plane", "coronal"], capsys)
    assert code == 2 and len(err) == 1
    assert "[model] width = 4 contradicts 6, which stage 06 used" in err[0] and "fresh run" in err[0]
    code, _, err = run_stage(training.main, ["--work-dir", work, "--plane", "coronal", "--model", "unet"], capsys)
    assert code == 2 and len(err) == 1 and "stage 06 did not describe unet" in err[0]
