"""Stage 07: one tiny end-to-end training (built once per session) and hand-computed unit checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raxnet import record, runs, training
from raxnet.errors import ConfigError, StageInputError
from raxnet.planes import to_slices

SUBJECTS = [f"sub-t{i:02d}" for i in range(1, 7)]
SHAPE = (16, 16, 12)  # axial slices 16x16, 12 of them
PLANE = "axial"
#: The plain U-Net traces about twice as fast as RAX-Net: the stage-07 mechanics are the same.
MODEL = "unet"


def _toy_subject(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 'head' of value ~0.5 with one bright cuboid 'lesion' spanning a few axial slices."""
    vol = np.zeros(SHAPE, np.float32)
    vol[2:14, 2:14, 1:11] = 0.5 + 0.05 * rng.standard_normal((12, 12, 10))
    mask = np.zeros(SHAPE, np.uint8)
    x, y, z = rng.integers(3, 9), rng.integers(3, 9), rng.integers(2, 6)
    mask[x : x + 4, y : y + 4, z : z + 4] = 1
    vol[mask > 0] = 1.2
    return vol, mask


def make_work_dir(work: Path, seed: int = 0) -> Path:
    """Stage-03 stacks + index and stage-02/04 tables written directly, as the earlier stages write them."""
    rng = np.random.default_rng(seed)
    conv = work / "03_moving_converting"
    (conv / PLANE).mkdir(parents=True, exist_ok=True)
    folds_dir = work / "04_cross_validation"
    folds_dir.mkdir(parents=True, exist_ok=True)
    (work / "02_data_splitting").mkdir(parents=True, exist_ok=True)
    index, slice_rows = [], []
    fold_of = {s: 1 + i // 2 for i, s in enumerate(SUBJECTS)}  # 3 folds of 2 subjects
    for subject in SUBJECTS:
        vol, mask = _toy_subject(rng)
        img_stack = np.ascontiguousarray(to_slices(vol, PLANE), dtype=np.float16)
        msk_stack = np.ascontiguousarray(to_slices(mask, PLANE), dtype=np.uint8)
        np.save(conv / PLANE / f"{subject}_image.npy", img_stack)
        np.save(conv / PLANE / f"{subject}_mask.npy", msk_stack)
        n, h, w = img_stack.shape
        index.append({"subject": subject, "set": "train", "plane": PLANE, "n_slices": n, "height": h, "width": w,
                      "image_path": f"{PLANE}/{subject}_image.npy", "mask_path": f"{PLANE}/{subject}_mask.npy"})
        for k in range(n):
            pixels = int(msk_stack[k].sum())
            if pixels == 0 and img_stack[k].max() == 0:
                continue  # empty (outside the head) slices are not listed by stage 04
            slice_rows.append({"subject": subject, "slice": k, "fold": fold_of[subject],
                               "kind": "lesion" if pixels else "normal", "lesion_pixels": pixels,
                               "area_bin": int(pixels > 0)})
    pd.DataFrame(index).to_csv(conv / "index.csv", index=False)
    pd.DataFrame({"subject": SUBJECTS, "fold": [fold_of[s] for s in SUBJECTS]}).to_csv(
        folds_dir / "subject_folds.csv", index=False)
    pd.DataFrame(slice_rows).to_csv(folds_dir / f"{PLANE}_folds.csv", index=False)
    pd.DataFrame({"subject": SUBJECTS, "site": "R001", "lesion_voxels": 64, "volume_bin": 0, "set": "train"}).to_csv(
        work / "02_data_splitting" / "split.csv", index=False)
    return work


def _cfg(epochs: int, **train: object) -> dict:
    return {
        "train": {"model": MODEL, "loss": "tversky_focal", "epochs": epochs,
                  "validation_steps": 2, "planes": PLANE, "folds": "1", "optimizer": "adam",
                  "learning_rate": 3e-3, "patience": 0, "verbose": 0, "predict_batch_size": 8, **train},
        "model": {"width": 4, "depth": 2},
        "arrays": {"batch_size": 4, "steps_per_epoch": 3},
    }


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train 1 epoch, then ask for 3 with resume (continues from last.keras), then re-run (skipped)."""
    pytest.importorskip("raxnet.batches", reason="stage-05 batches module not present")
    work = make_work_dir(tmp_path_factory.mktemp("train_work"))
    run = {"work_dir": str(work), "seed": 7, "jobs": 1}
    first = training.run(_cfg(1), run)
    out = runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1)
    history1 = pd.read_csv(out / "history.csv")
    run1 = json.loads((out / "run.json").read_text())
    second = training.run(_cfg(3), run)
    stamp = (out / "run.json").stat().st_mtime_ns
    t0 = time.perf_counter()
    third = training.run(_cfg(3), run)
    skip_s = time.perf_counter() - t0
    return {"work": work, "run": run, "out": out, "first": first, "second": second, "third": third,
            "history1": history1, "run1": run1, "stamp": stamp, "skip_s": skip_s}


# ------------------------------------------------------------------------------ end-to-end outputs


def test_outputs_exist(trained: dict) -> None:
    out = trained["out"]
    state = json.loads((out / "state.json").read_text())
    assert state["checkpoint"] == "last_e0003.keras" and state["best_weights"].startswith("best_e")
    for name in ("model.keras", "history.csv", "run.json", "metrics.csv", "subject_dice.csv", state["checkpoint"],
                 "state.json", state["best_weights"]):
        assert (out / name).is_file(), name
    # Only the committed checkpoint is kept.
    assert sorted(p.name for p in out.glob("*_e*")) == sorted([state["checkpoint"], state["best_weights"]])
    assert out == trained["work"] / "07_train" / MODEL / "axial" / "fold_1"
    info = json.loads((out / "run.json").read_text())
    for key in ("plane", "fold", "model", "loss", "best_epoch", "best_val_loss", "epochs_run", "train_time_s",
                "time_to_best_s", "params", "input_shape", "seed", "config"):
        assert key in info, key
    assert (info["plane"], info["fold"], info["model"], info["loss"]) == ("axial", 1, MODEL, "tversky_focal")
    assert info["input_shape"] == [16, 16, 1] and info["seed"] == 7
    assert 1 <= info["best_epoch"] <= info["epochs_run"] == 3
    assert 0 < info["time_to_best_s"] <= info["train_time_s"]
    assert info["params"] > 0 and info["subjects"]["val"] == 2
    assert info["model_sha256"] == record.sha256_file(out / "model.keras")  # what stage 08 checks


def test_history_has_epochs_and_loss_goes_down(trained: dict) -> None:
    hist = pd.read_csv(trained["out"] / "history.csv")
    assert list(hist.columns) == training.HISTORY_COLUMNS
    assert hist["epoch"].tolist() == [1, 2, 3]
    assert np.isfinite(hist[["loss", "val_loss", "dice", "val_dice", "lr", "time"]].to_numpy()).all()
    assert hist["dice"].between(0, 1).all() and (hist["lr"] > 0).all() and (hist["time"] > 0).all()
    # 9 steps of Adam at 3e-3 on a bright-blob toy task: the training loss must fall.
    assert hist["loss"].iloc[-1] < hist["loss"].iloc[0]


def test_curves_and_log_file(trained: dict) -> None:
    """curves.png next to history.csv; 07_train/log.txt holds every epoch of both runs, without escape codes."""
    from PIL import Image

    png = trained["out"] / "curves.png"
    assert png.is_file() and png.stat().st_mtime_ns <= trained["stamp"]  # drawn by the 3-epoch run
    assert Image.open(png).size[0] > 600
    text = (trained["work"] / "07_train" / "log.txt").read_text()
    assert text.count("=== 07_train started") == 3 and text.count("=== 07_train finished") == 3
    assert [f"epoch {e}: loss" in text for e in (1, 2, 3)] == [True] * 3
    assert "\x1b" not in text and "\r" not in text and "finished (3 epochs), skipped" in text


def test_resume_continues_from_checkpoint(trained: dict) -> None:
    h1, run1 = trained["history1"], trained["run1"]
    assert run1["epochs_run"] == 1 and len(h1) == 1
    hist = pd.read_csv(trained["out"] / "history.csv")
    # The first epoch's row is kept as it was (appended to, not retrained).
    pd.testing.assert_frame_equal(hist.iloc[:1], h1)
    state = json.loads((trained["out"] / "state.json").read_text())
    assert state["epoch"] == 3
    # The time column sums to the accumulated training time of both invocations.
    assert hist["time"].sum() == pytest.approx(state["train_time_s"], abs=0.01)


def test_finished_run_is_skipped(trained: dict) -> None:
    assert (trained["out"] / "run.json").stat().st_mtime_ns == trained["stamp"]
    assert trained["third"]["planes"] == trained["second"]["planes"]
    assert trained["skip_s"] < 5.0


def test_finished_run_without_checkpoint_is_skipped(trained: dict, tmp_path: Path) -> None:
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(trained["work"], work)
    out = runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1)
    for path in out.glob("*_e*"):
        path.unlink()
    (out / "state.json").unlink()
    run = {**trained["run"], "work_dir": str(work)}
    t0 = time.perf_counter()
    info = training.train_one(_cfg(3), run, PLANE, 1, MODEL, "tversky_focal")
    assert time.perf_counter() - t0 < 5.0
    assert info == json.loads((out / "run.json").read_text()) and info["epochs_run"] == 3


def test_metrics_columns_and_ranges(trained: dict) -> None:
    m = pd.read_csv(trained["out"] / "metrics.csv")
    assert len(m) == 1
    for col in ("model", "loss", "plane", "fold", "n_subjects", "lesion_slices", "all_slices", "lesion_slice_dice",
                "all_slice_dice", "dice_3d_mean", "dice_3d_sd", "dice_3d_median", "predict_ms_per_slice"):
        assert col in m.columns, col
    row = m.iloc[0]
    for col in ("lesion_slice_dice", "all_slice_dice", "dice_3d_mean", "dice_3d_median"):
        assert 0.0 <= row[col] <= 1.0, col
    assert row["n_subjects"] == 2 and 0 < row["lesion_slices"] <= row["all_slices"]
    assert row["predict_ms_per_slice"] > 0
    subj = pd.read_csv(trained["out"] / "subject_dice.csv")
    assert subj["subject"].tolist() == SUBJECTS[:2]  # fold 1
    assert subj["lesion_voxels"].tolist() == [64, 64]
    assert subj["dice_3d"].between(0, 1).all()
    assert row["dice_3d_mean"] == pytest.approx(subj["dice_3d"].mean())
    summary = trained["second"]["planes"]["axial"]
    assert summary["lesion_slice_dice"] == pytest.approx(row["lesion_slice_dice"])
    assert summary["dice_3d"] == pytest.approx(row["dice_3d_mean"])


def test_results_csv_aggregates(trained: dict) -> None:
    res = pd.read_csv(trained["work"] / "07_train" / MODEL / "results_axial.csv", dtype={"fold": str})
    assert res["fold"].tolist() == ["1", "mean", "sd"]
    m = pd.read_csv(trained["out"] / "metrics.csv").iloc[0]
    for col in training.METRIC_COLUMNS:
        assert res.loc[0, col] == pytest.approx(m[col], rel=1e-5)
        assert res.loc[1, col] == pytest.approx(m[col], rel=1e-5)
    assert np.isnan(res.loc[2, "dice_3d_mean"])  # sd of one fold is undefined


def test_model_reloads_in_fresh_process(trained: dict, tmp_path: Path) -> None:
    import keras

    path = trained["out"] / "model.keras"
    x = np.random.default_rng(1).random((3, 16, 16, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    here = keras.saving.load_model(str(path), compile=False).predict_on_batch(x)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        m = keras.saving.load_model({str(path)!r})  # plain load: no raxnet import, no custom_objects
        np.save({str(tmp_path / 'y.npy')!r}, np.asarray(m.predict_on_batch(np.load({str(tmp_path / 'x.npy')!r}))))
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = np.load(tmp_path / "y.npy")
    assert there.shape == (3, 16, 16, 1)
    np.testing.assert_allclose(there, np.asarray(here), rtol=1e-6, atol=1e-6)


def test_changed_settings_refuse_to_resume(trained: dict) -> None:
    with pytest.raises(StageInputError, match="with other settings.*--force"):
        training.train_one(_cfg(3, learning_rate=1e-2), trained["run"], PLANE, 1, MODEL, "tversky_focal")


def test_refused_stage_07_leaves_the_run_as_it_was(trained: dict, tmp_path: Path) -> None:
    """Settings that contradict a trained fold are refused before the run's config.toml records them (it
    used to keep the refused learning rate, so the next plain command found the fold out of date)."""
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(trained["work"], work)
    run = {**trained["run"], "work_dir": str(work)}
    stored = (work / "config.toml").read_bytes()
    with pytest.raises(StageInputError, match="with other settings.*--force"):
        training.run(_cfg(3, learning_rate=1e-2), run)
    assert (work / "config.toml").read_bytes() == stored
    out = runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1)
    stamp = (out / "run.json").stat().st_mtime_ns
    training.run(_cfg(3), run)  # the run's own settings still find the fold finished
    assert (out / "run.json").stat().st_mtime_ns == stamp


def test_changed_fold_table_refuses_a_finished_run(trained: dict, tmp_path: Path) -> None:
    """Stale outputs: a finished run is not reused once the stage-04 tables it was trained from change."""
    import shutil

    work = tmp_path / "copy"
    shutil.copytree(trained["work"], work)
    folds = work / "04_cross_validation" / "axial_folds.csv"
    table = pd.read_csv(folds)
    table[table["kind"] == "lesion"].to_csv(folds, index=False)  # another selection of normal slices
    with pytest.raises(StageInputError, match=r"from other stage-03/04 tables \(04_cross_validation/axial_folds.csv "
                                              r"changed since\); pass --force"):
        training.train_one(_cfg(3), {**trained["run"], "work_dir": str(work)}, PLANE, 1, MODEL, "tversky_focal")


def test_kill_between_checkpoint_and_state_resumes_the_same_run(tmp_path: Path, monkeypatch) -> None:
    """Issue repro: last.keras was saved before state.json, so a kill between the two made the resumed run
    repeat an epoch on already-updated weights (epoch-2 loss 1.03715 uninterrupted vs 1.02566 resumed).
    Now the epoch is committed by state.json alone: a run killed at exactly that point, resumed, gives the
    uninterrupted losses. A SIGKILL's temporary files are removed on the next start."""
    baseline = make_work_dir(tmp_path / "b")
    training.train_one(_cfg(2), {"work_dir": str(baseline), "seed": 7, "jobs": 1}, PLANE, 1, MODEL, "tversky_focal")
    work = make_work_dir(tmp_path / "w")
    run = {"work_dir": str(work), "seed": 7, "jobs": 1}
    out = runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1)
    real_save_json = training.save_json

    def killed_at_epoch_2_commit(obj, path):
        if Path(path).name == "state.json" and obj.get("epoch") == 2:
            (out / ".last_e0002.keras.k1ll3d_x.keras").write_bytes(b"partial")  # what a SIGKILL leaves
            raise KeyboardInterrupt  # the process dies after the checkpoint, before the commit
        return real_save_json(obj, path)

    monkeypatch.setattr(training, "save_json", killed_at_epoch_2_commit)
    with pytest.raises(KeyboardInterrupt):
        training.train_one(_cfg(2), run, PLANE, 1, MODEL, "tversky_focal")
    assert (out / "last_e0002.keras").is_file()  # written, but never committed
    assert json.loads((out / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(training, "save_json", real_save_json)
    training.train_one(_cfg(2), run, PLANE, 1, MODEL, "tversky_focal")
    resumed = pd.read_csv(out / "history.csv")
    uninterrupted = pd.read_csv(runs.run_dir(baseline, MODEL, "tversky_focal", PLANE, 1) / "history.csv")
    np.testing.assert_allclose(resumed["loss"], uninterrupted["loss"].iloc[:2], rtol=1e-6)
    np.testing.assert_allclose(resumed["val_loss"], uninterrupted["val_loss"].iloc[:2], rtol=1e-6)
    assert not list(out.glob(".*")) and sorted(p.name for p in out.glob("last_e*")) == ["last_e0002.keras"]


# --------------------------------------------------------------------------------- hand-computed


def test_parse_folds() -> None:
    assert training.parse_folds("all", [3, 1, 2]) == [1, 2, 3]
    assert training.parse_folds("2,1,2", [1, 2, 3]) == [2, 1]
    assert training.parse_folds(3, [1, 2, 3]) == [3]
    with pytest.raises(ConfigError):
        training.parse_folds("4", [1, 2, 3])
    with pytest.raises(ConfigError):
        training.parse_folds("one", [1, 2, 3])


def test_settings_validation() -> None:
    assert training.settings({})["loss"] == "tversky_focal"
    for bad in ({"schedule": "step"}, {"optimizer": "sgd"}, {"epochs": -1}, {"lr_factor": 1.5}, {"bogus": 1}):
        with pytest.raises(ConfigError):
            training.settings({"train": bad})
    with pytest.raises(ConfigError, match="unknown model"):
        training.model_names({"train": {"model": "raxnet,resnet"}})
    with pytest.raises(ConfigError, match="unknown loss"):
        training.loss_names({"train": {"loss": "dice,l2"}})
    with pytest.raises(ConfigError, match="epochs = 0 adopts the .train.\\.init_weights networks"):
        training.settings({"train": {"epochs": 0}})
    assert training.settings({"train": {"epochs": 0, "init_weights": "weights/demo"}})["epochs"] == 0
    assert training.model_names({"train": {"model": "unet, raxnet,unet"}}) == ["unet", "raxnet"]


def test_cli_rejects_unknown_model_and_missing_folds(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="subject_folds.csv"):
        training.main(["--work-dir", str(tmp_path), "--plane", "axial"])
    (tmp_path / "04_cross_validation").mkdir()
    pd.DataFrame({"subject": ["a", "b"], "fold": [1, 2]}).to_csv(tmp_path / "04_cross_validation" / "subject_folds.csv")
    with pytest.raises(ConfigError, match="unknown model"):
        training.main(["--work-dir", str(tmp_path), "--model", "resnet"])
    with pytest.raises(ConfigError, match="not in stage-04 folds"):
        training.main(["--work-dir", str(tmp_path), "--fold", "3"])


def test_cli_script_exits_nonzero_on_bad_input(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "07_train" / "train.py"
    proc = subprocess.run([sys.executable, str(script), "--work-dir", str(tmp_path), "--fold", "1"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "subject_folds.csv" in proc.stderr


def _info(model: str, loss: str, plane: str, fold: int, dice: float) -> dict:
    metrics = {"lesion_slice_dice": dice, "all_slice_dice": dice + 0.1, "dice_3d_mean": dice - 0.1,
               "predict_ms_per_slice": 1.5}
    return {"model": model, "loss": loss, "plane": plane, "fold": fold, "params": 100, "best_epoch": 2,
            "time_to_best_s": 3.0, "metrics": metrics, "run_name": runs.run_name(model, loss)}


def test_comparison_table_and_figure(tmp_path: Path) -> None:
    infos = [_info("unet", "tversky_focal", "axial", 2, 0.5), _info("raxnet", "tversky_focal", "axial", 1, 0.6),
             _info("raxnet", "tversky_focal", "axial", 2, 0.8), _info("unet", "tversky_focal", "axial", 1, 0.3),
             _info("raxnet", "dice", "axial", 1, 0.7)]
    csv, png = training.write_comparison(tmp_path, infos)
    df = pd.read_csv(csv)
    assert list(df.columns) == training.COMPARISON_COLUMNS
    assert list(zip(df["model"], df["loss"], df["fold"])) == [
        ("raxnet", "dice", 1), ("raxnet", "tversky_focal", 1), ("unet", "tversky_focal", 1),
        ("raxnet", "tversky_focal", 2), ("unet", "tversky_focal", 2)]
    rax = df[(df["model"] == "raxnet") & (df["loss"] == "tversky_focal")]
    assert rax["lesion_slice_dice"].mean() == pytest.approx(0.7)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_results_mean_and_sd(tmp_path: Path) -> None:
    for fold, value in ((1, 0.2), (2, 0.4), (3, 0.9)):
        out = runs.run_dir(tmp_path, "unet", "dice", "sagittal", fold)
        out.mkdir(parents=True)
        pd.DataFrame([{"fold": fold, "n_subjects": 2, "lesion_slice_dice": value, "all_slice_dice": value,
                       "dice_3d_mean": value, "dice_3d_median": value, "predict_ms_per_slice": 1.0}]).to_csv(
            out / "metrics.csv", index=False)
        (out / "run.json").write_text(json.dumps({"best_epoch": fold, "epochs_run": 5, "train_time_s": 10.0}))
    path = training.write_results(tmp_path, "unet", "dice", "sagittal")
    res = pd.read_csv(path, dtype={"fold": str}).set_index("fold")
    assert res.index.tolist() == ["1", "2", "3", "mean", "sd"]
    assert res.loc["mean", "dice_3d_mean"] == pytest.approx(0.5)
    assert res.loc["sd", "dice_3d_mean"] == pytest.approx(np.std([0.2, 0.4, 0.9], ddof=1), rel=1e-5)
    assert res.loc["mean", "best_epoch"] == pytest.approx(2.0)


def test_strategy_scope_is_noop_without_gpus() -> None:
    import contextlib

    assert isinstance(training._strategy_scope(), contextlib.nullcontext)


class _ConstantBatches:
    """Batches whose every pixel is the batch number k + 1 (k = 0, 1, 2): hand-computable BN statistics."""

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.full((2, 4, 4, 1), self.values[i], np.float32)
        x[1] = -self.values[i]  # a batch of +v and -v: mean 0, variance v**2
        return x, np.zeros_like(x)


def test_recalibrate_batch_norm_sets_exact_mean_of_batch_statistics() -> None:
    import keras

    inp = keras.Input((4, 4, 1))
    shifted = keras.layers.Rescaling(1.0, offset=1.0, name="shift")(inp)  # batch mean 1, variance v**2
    model = keras.Model(inp, keras.layers.BatchNormalization(momentum=0.9, name="bn")(shifted))
    bn = model.get_layer("bn")
    n = training.recalibrate_batch_norm(model, _ConstantBatches([1.0, 2.0, 4.0]), 8)
    assert n == 3  # capped at the number of batches
    # Means 1, 1, 1 -> 1; variances 1, 4, 16 -> 7 (Keras uses the biased batch variance).
    np.testing.assert_allclose(np.asarray(bn.moving_mean), [1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), [7.0], rtol=1e-5)
    assert bn.momentum == 0.9  # restored
    assert training.recalibrate_batch_norm(model, _ConstantBatches([1.0]), 0) == 0


class _EpochPlans(_ConstantBatches):
    """Batches whose un-augmented items depend on the epoch asked for: epoch e's batch i holds value e + 1."""

    def __init__(self, n: int, epoch: int):
        super().__init__([1.0] * n)
        self.epoch = epoch

    def batch_items(self, index: int, epoch: int | None = None) -> np.ndarray:
        return np.array([self.epoch if epoch is None else epoch])

    def inputs(self, items: np.ndarray) -> np.ndarray:
        x = np.full((2, 4, 4, 1), float(items[0] + 1), np.float32)
        x[1] = -x[0]
        return x


def test_recalibrate_batch_norm_reads_the_epoch_it_is_given() -> None:
    # stage 07's tf.data feed never advances the dataset's own epoch: the callback passes fit's epoch
    import keras

    inp = keras.Input((4, 4, 1))
    model = keras.Model(inp, keras.layers.BatchNormalization(name="bn")(inp))
    ds = _EpochPlans(2, epoch=0)
    training.recalibrate_batch_norm(model, ds, 2, epoch=2)  # values +-3: variance 9
    np.testing.assert_allclose(np.asarray(model.get_layer("bn").moving_variance), [9.0], rtol=1e-5)
    training.recalibrate_batch_norm(model, ds, 2)  # the dataset's own epoch 0: values +-1
    np.testing.assert_allclose(np.asarray(model.get_layer("bn").moving_variance), [1.0], rtol=1e-5)


def test_cosine_schedule_warms_up_then_decays_to_min_lr() -> None:
    train = training.settings({"train": {"learning_rate": 1e-3, "min_lr": 1e-5, "warmup_fraction": 0.1}})
    opt = training._optimizer(train, 100)
    sched = opt._learning_rate
    values = [float(sched(step)) for step in (0, 5, 10, 55, 100)]
    assert values[0] == pytest.approx(1e-4)  # warm-up starts at lr / 10
    assert values[1] == pytest.approx(5.5e-4)  # linear: 1e-4 + 0.5 * (1e-3 - 1e-4)
    assert values[2] == pytest.approx(1e-3)  # peak after 10 warm-up steps
    # Half-way through the 90 decay steps: min + (max - min) / 2.
    assert values[3] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2, rel=1e-4)
    assert values[4] == pytest.approx(1e-5, rel=1e-4)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        training.settings({"train": {"warmup_fraction": 1.0}})


def _weight_set(folder: Path, model_file: Path, seed: int = 99) -> Path:
    """A one-plane weight set as raxnet export-weights lays it out (manifest + <plane>.keras)."""
    import shutil

    folder.mkdir(parents=True)
    shutil.copyfile(model_file, folder / "axial.keras")
    manifest = {"format": 2, "grid_shape": [16, 16, 12], "affine": np.eye(4).tolist(),
                "planes": {"axial": {"file": "axial.keras"}}, "training_data": {"seed": seed}}
    (folder / "weights.json").write_text(json.dumps(manifest))
    return folder


def test_init_weights_starts_from_the_weight_set_and_records_it(trained: dict, tmp_path: Path) -> None:
    import keras

    source = _weight_set(tmp_path / "ws", trained["out"] / "model.keras", seed=99)
    assert training.init_source("", PLANE) is None
    init = training.init_source(source, PLANE)
    assert init["file"] == str(source / "axial.keras") and init["training_data"] == {"seed": 99}
    with pytest.raises(ConfigError, match="has no coronal model"):
        training.init_source(source, "coronal")
    with pytest.raises(ConfigError, match="init_weights.*weight manifest not found"):
        training.init_source(tmp_path, PLANE)

    work = make_work_dir(tmp_path / "w")
    run = {"work_dir": str(work), "seed": 7, "jobs": 1}
    # a learning rate of ~0: after one epoch the kernels are still the source model's
    info = training.train_one(_cfg(1, init_weights=str(source), learning_rate=1e-12, bn_recalibration_batches=0),
                              run, PLANE, 1, MODEL, "tversky_focal")
    assert info["init_weights"]["sha256"] == init["sha256"]
    assert info["fingerprint"] != trained["run1"]["fingerprint"]
    src = keras.saving.load_model(str(source / "axial.keras"), compile=False)
    tuned = keras.saving.load_model(str(runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1) / "model.keras"),
                                    compile=False)
    kernels = [(a.path, b) for a, b in zip(src.trainable_weights, tuned.trainable_weights) if "kernel" in a.path]
    assert len(kernels) > 4
    for (name, b), a in zip(kernels, [w for w in src.trainable_weights if "kernel" in w.path]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, err_msg=name)
    # the same run without init_weights starts elsewhere
    fresh = training.train_one(_cfg(1, learning_rate=1e-12, bn_recalibration_batches=0),
                               {**run, "work_dir": str(make_work_dir(tmp_path / "f"))}, PLANE, 1, MODEL,
                               "tversky_focal")
    assert fresh["init_weights"] is None
    scratch = keras.saving.load_model(str(tmp_path / "f" / "07_train" / MODEL / PLANE / "fold_1" / "model.keras"),
                                      compile=False)
    assert not np.allclose(np.asarray(scratch.trainable_weights[0]), np.asarray(src.trainable_weights[0]), atol=1e-3)

    wider = {**_cfg(1, init_weights=str(source)), "model": {"width": 8, "depth": 2}}
    with pytest.raises(ConfigError, match=r"axial\.keras: \[train\]\.init_weights model does not match"):
        training.train_one(wider, {**run, "work_dir": str(make_work_dir(tmp_path / "x"))}, PLANE, 1, MODEL,
                           "tversky_focal")


def test_epochs_0_adopts_the_weight_set_untrained_and_evaluates_it(trained: dict, tmp_path: Path) -> None:
    import keras

    source = _weight_set(tmp_path / "ws", trained["out"] / "model.keras", seed=99)
    work = make_work_dir(tmp_path / "w", seed=3)
    run = {"work_dir": str(work), "seed": 7, "jobs": 1}
    out = runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1)
    from conftest import log_records

    with log_records("raxnet.batches") as recs:
        info = training.train_one(_cfg(0, init_weights=str(source)), run, PLANE, 1, MODEL, "tversky_focal")
    # nothing is trained, so _cfg's 3 steps per epoch (fewer than the lesion slices) are not warned about
    assert not [r for r in recs if "steps_per_epoch" in r.getMessage()]
    assert info["adopted"] is True and info["epochs_run"] == 0 and info["best_epoch"] == 0
    assert 0.0 < info["best_val_loss"] < 10.0  # its inner-validation loss: folds are ranked as trained ones are
    assert info["model_sha256"] == record.sha256_file(out / "model.keras")
    assert not (out / "history.csv").exists() and not (out / "state.json").exists()
    src = keras.saving.load_model(str(source / "axial.keras"), compile=False).get_weights()
    got = keras.saving.load_model(str(out / "model.keras"), compile=False).get_weights()
    assert len(src) == len(got)
    for a, b in zip(src, got):  # every weight, batch-norm statistics included, as in the weight set
        np.testing.assert_array_equal(a, b)
    # evaluated on fold 1's outer-validation subjects like a trained model
    assert sorted(pd.read_csv(out / "subject_dice.csv")["subject"]) == SUBJECTS[:2]
    assert 0.0 <= pd.read_csv(out / "metrics.csv")["dice_3d_mean"].iloc[0] <= 1.0
    again = training.train_one(_cfg(0, init_weights=str(source)), run, PLANE, 1, MODEL, "tversky_focal")
    assert again == info  # finished: skipped
    # asking for training after adopting trains (a new run); going back to adopting is refused until --force
    tuned = training.train_one(_cfg(1, init_weights=str(source), bn_recalibration_batches=0), run, PLANE, 1, MODEL,
                               "tversky_focal")
    assert tuned["adopted"] is False and tuned["epochs_run"] == 1
    with pytest.raises(StageInputError, match="pass --force"):
        training.train_one(_cfg(0, init_weights=str(source)), run, PLANE, 1, MODEL, "tversky_focal")


def test_adopting_networks_on_their_own_training_subjects_is_refused(trained: dict, tmp_path: Path) -> None:
    from conftest import log_records

    source = _weight_set(tmp_path / "ws", trained["out"] / "model.keras", seed=7)
    manifest = json.loads((source / "weights.json").read_text())
    manifest["training_data"]["subjects_trained_on"] = SUBJECTS[1:]  # fold 1 is SUBJECTS[:2]
    (source / "weights.json").write_text(json.dumps(manifest))
    training.check_adoptable(source, 8, SUBJECTS[:2])  # another seed: other subjects under the same names
    training.check_adoptable(source, 7, SUBJECTS[:1])  # the same seed, none of them trained on
    with pytest.raises(ConfigError, match=r"weights\.json was trained on seed 7 and on 1 of this fold's"):
        training.check_adoptable(source, 7, SUBJECTS[:2])
    # fine-tuned (seed 99) from that set: its starting weights count too, and cannot be checked once gone
    tuned = _weight_set(tmp_path / "tuned", trained["out"] / "model.keras", seed=99)
    manifest = json.loads((tuned / "weights.json").read_text())
    manifest["training_data"]["init_weights"] = {PLANE: {"weights": str(source), "training_data": {"seed": 7}}}
    (tuned / "weights.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"ws/weights\.json was trained on seed 7"):
        training.check_adoptable(tuned, 7, SUBJECTS[:2])
    training.check_adoptable(tuned, 99, SUBJECTS[4:])  # its own seed, its subjects not recorded: nothing to compare
    (source / "weights.json").rename(source / "gone.json")
    with log_records("raxnet.training") as recs:
        training.check_adoptable(tuned, 7, SUBJECTS[:2])
    assert len(recs) == 1
    message = recs[0].getMessage()
    assert "ws/weights.json: trained on seed 7, like this run, and its subject list is not at hand" in message
    (source / "gone.json").rename(source / "weights.json")
    work = make_work_dir(tmp_path / "w")
    with pytest.raises(ConfigError, match="sub-t02"):
        training.train_one(_cfg(0, init_weights=str(source)), {"work_dir": str(work), "seed": 7, "jobs": 1}, PLANE,
                           1, MODEL, "tversky_focal")
    # stage 07 refuses before it records or builds anything
    work = make_work_dir(tmp_path / "w2")
    with pytest.raises(ConfigError, match="sub-t02"):
        training.run(_cfg(0, init_weights=str(source)), {"work_dir": str(work), "seed": 7, "jobs": 1})
    assert not (work / "config.toml").exists()
    assert not runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1).exists()


def test_context_trains_and_evaluates_a_2p5d_model(trained: dict, tmp_path: Path) -> None:
    """[arrays] context = 1: a 3-channel model is trained, evaluated in 3D on its fold (metrics.csv) and
    saved; a 2D weight set cannot start it."""
    import keras

    from raxnet.inference import model_context, predict_probabilities

    work = make_work_dir(tmp_path / "w")
    run = {"work_dir": str(work), "seed": 7, "jobs": 1}
    cfg = _cfg(1)
    cfg["arrays"] = {**cfg["arrays"], "context": 1}
    info = training.train_one(cfg, run, PLANE, 1, MODEL, "tversky_focal")
    assert info["input_shape"] == [16, 16, 3]
    out = runs.run_dir(work, MODEL, "tversky_focal", PLANE, 1)
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 1 and 0.0 <= float(metrics["dice_3d_mean"].iloc[0]) <= 1.0
    model = keras.saving.load_model(str(out / "model.keras"), compile=False)
    assert model_context(model) == 1
    volume = np.zeros(SHAPE, np.float32)
    volume[2:14, 2:14, 1:11] = 0.5
    probs = predict_probabilities(volume, {PLANE: [model]}, normalised=True)[PLANE]
    assert probs.shape == SHAPE and np.isfinite(probs).all()

    # a 2D weight set starts it: the 2D kernel on the centre channel, zeros on the neighbours (learning rate ~0)
    source = _weight_set(tmp_path / "ws", trained["out"] / "model.keras", seed=99)
    flat = keras.saving.load_model(str(source / "axial.keras"), compile=False)
    training.train_one(_cfg(1, init_weights=str(source), learning_rate=1e-12, bn_recalibration_batches=0)
                       | {"arrays": cfg["arrays"]}, {**run, "work_dir": str(make_work_dir(tmp_path / "x"))},
                       PLANE, 1, MODEL, "tversky_focal")
    deep = keras.saving.load_model(str(runs.run_dir(tmp_path / "x", MODEL, "tversky_focal", PLANE, 1) / "model.keras"),
                                   compile=False)
    assert model_context(deep) == 1
    pairs = [(np.asarray(a), np.asarray(b)) for a, b in zip(flat.trainable_weights, deep.trainable_weights)]
    grown = [(a, b) for a, b in pairs if a.shape != b.shape]
    assert len(grown) == 1 and grown[0][1].shape == (*grown[0][0].shape[:2], 3, grown[0][0].shape[3])
    np.testing.assert_allclose(grown[0][1][:, :, 1], grown[0][0][:, :, 0], atol=1e-6)
    assert np.abs(grown[0][1][:, :, [0, 2]]).max() < 1e-6
    for a, b in pairs:
        if a.shape == b.shape:
            np.testing.assert_allclose(b, a, atol=1e-6)


def test_inflate_input_kernel_by_hand() -> None:
    k = np.arange(8, dtype=np.float32).reshape(2, 2, 1, 2)
    out = training.inflate_input_kernel(k, (2, 2, 3, 2))
    np.testing.assert_array_equal(out[:, :, 1], k[:, :, 0])
    assert (out[:, :, 0] == 0).all() and (out[:, :, 2] == 0).all()
    for shape in ((2, 2, 1, 2), (2, 2, 2, 2), (3, 2, 3, 2), (2, 2, 3, 4)):  # same, even, other kernel, other width
        assert training.inflate_input_kernel(k, shape) is k
    bias = np.ones(2, np.float32)
    assert training.inflate_input_kernel(bias, (2,)) is bias


def test_init_weights_must_have_seen_inputs_prepared_like_this_runs(tmp_path: Path) -> None:
    """Fine-tuning weights trained with the brain mask / N4 on stacks made otherwise is refused with the
    difference named; matching settings (or stacks without a stage-03 record) pass."""
    from raxnet.brainmask import write_record

    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "axial.keras").write_bytes(b"")
    manifest = {"format": 2, "grid_shape": [16, 16, 12], "affine": np.eye(4).tolist(),
                "planes": {"axial": {"file": "axial.keras"}},
                "inference": {"brain_mask_mm": 6.0, "bias_correct": True}}
    (folder / "weights.json").write_text(json.dumps(manifest))
    work = tmp_path / "w"
    training.check_init_inputs(folder, work)  # no stage-03 record: nothing to compare
    convert = work / "03_moving_converting"
    convert.mkdir(parents=True)
    write_record(convert, 6.0, bias_correct=True)
    training.check_init_inputs(folder, work)
    write_record(convert, 6.0)
    with pytest.raises(ConfigError, match=r"ws/weights.json was trained on inputs prepared otherwise than .*convert\.json "
                                          r"\(bias_correct True there, False here\): set \[convert\] to match$"):
        training.check_init_inputs(folder, work)
    write_record(convert, None)
    with pytest.raises(ConfigError, match=r"\(brain_mask_mm 6\.0 there, None here; bias_correct True there, False here\)"):
        training.check_init_inputs(folder, work)
