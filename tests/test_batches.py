"""Stage 05 (raxnet.batches): balanced streaming batches over memory-mapped stacks.

The synthetic stacks encode where each slice came from: every foreground pixel of slice ``s`` of
subject number ``i`` holds ``i * 100 + s + 1`` (exact in float16), so a batch can be decoded back to
``(subject, slice)`` pairs and checked against the fold tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raxnet.batches import (
    subject_weights,
    DEFAULTS,
    BalancedSliceDataset,
    batch_quotas,
    build_training_sets,
    composition,
    epoch_plan,
    main,
    outer_validation_slices,
    run,
)
from raxnet.errors import ConfigError, StageInputError
from raxnet.planes import padded_shape

N_SLICES, H, W = 10, 13, 11
N_SUBJECTS, N_FOLDS = 12, 3
BINS = ["(0, 5]", "(5, 20]", "(20, 400]"]


def _subject_name(i: int) -> str:
    return f"sub-{i:02d}"


def _lesion_slices(i: int) -> dict[int, int]:
    """Hand-made lesion slices per subject: slice -> lesion pixels (subject-dependent volumes)."""
    n = 1 + i % 4
    return {s: (3 if (i + s) % 3 == 0 else 12 if (i + s) % 3 == 1 else 30) for s in range(2, 2 + n)}


def _area_bin(px: int) -> str:
    return BINS[0] if px <= 5 else BINS[1] if px <= 20 else BINS[2]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("work")
    stage03 = w / "03_moving_converting"
    (stage03 / "axial").mkdir(parents=True)
    (w / "04_cross_validation").mkdir()
    idx_rows, fold_rows, slice_rows = [], [], []
    for i in range(N_SUBJECTS):
        name = _subject_name(i)
        img = np.zeros((N_SLICES, H, W), np.float16)
        img[:, 2:-2, 2:-2] = (i * 100 + np.arange(N_SLICES) + 1)[:, None, None]
        msk = np.zeros((N_SLICES, H, W), np.uint8)
        for s, px in _lesion_slices(i).items():
            msk[s].flat[np.arange(px) * 3 % (H * W)] = 1
        np.save(stage03 / "axial" / f"{name}_image.npy", img)
        np.save(stage03 / "axial" / f"{name}_mask.npy", msk)
        idx_rows.append({"subject": name, "set": "train", "plane": "axial", "n_slices": N_SLICES, "height": H,
                         "width": W, "image_path": f"axial/{name}_image.npy", "mask_path": f"axial/{name}_mask.npy"})
        fold = 1 + i % N_FOLDS
        fold_rows.append({"subject": name, "fold": fold})
        for s in range(N_SLICES):
            les = _lesion_slices(i)
            if s in les:
                slice_rows.append({"subject": name, "slice": s, "fold": fold, "kind": "lesion",
                                   "lesion_pixels": les[s], "area_bin": _area_bin(les[s])})
            elif s in (0, 7, 8):
                slice_rows.append({"subject": name, "slice": s, "fold": fold, "kind": "normal",
                                   "lesion_pixels": 0, "area_bin": ""})
    pd.DataFrame(idx_rows).to_csv(stage03 / "index.csv", index=False)
    pd.DataFrame(fold_rows).to_csv(w / "04_cross_validation" / "subject_folds.csv", index=False)
    pd.DataFrame(slice_rows).to_csv(w / "04_cross_validation" / "axial_folds.csv", index=False)
    return w


def _run_cfg(work: Path, seed: int = 7) -> dict:
    return {"work_dir": str(work), "data_root": "unused", "seed": seed, "jobs": 1}


def _cfg(**arrays) -> dict:
    # augmentation off unless a test asks for it: the batching tests compare served slices with the stacks
    return {"arrays": {"batch_size": 8, "inner_val_fraction": 0.25, "augment": False, **arrays}}


def _decode(x: np.ndarray) -> list[tuple[str, int]]:
    """(subject, slice) of each image of a batch from its encoded centre pixel."""
    vals = np.rint(x[:, x.shape[1] // 2, x.shape[2] // 2, 0]).astype(int) - 1
    return [(_subject_name(v // 100), v % 100) for v in vals]


@pytest.fixture(scope="module")
def folds(work) -> pd.DataFrame:
    return pd.read_csv(work / "04_cross_validation" / "axial_folds.csv", dtype={"area_bin": str})


def test_batch_quotas_hand_computed():
    # 21 lesion slices in bins of 10/3/1/7, 8 lesion slices per batch, 3 steps: expected per batch
    # 3.81/1.14/0.38/2.67 -> every entry is floor or ceil, rows sum to 8, columns cover the bin sizes.
    q = batch_quotas([10, 3, 1, 7], n_lesion=8, steps=3)
    assert q.tolist() == [[4, 1, 1, 2], [4, 1, 0, 3], [3, 2, 0, 3]]
    q = batch_quotas([4, 4], n_lesion=4, steps=2)  # exact halves: no rounding at all
    assert q.tolist() == [[2, 2], [2, 2]]
    with pytest.raises(ValueError):
        batch_quotas([0, 0], 4, 2)


@pytest.mark.parametrize("counts,n_lesion", [([100, 37, 5, 1], 8), ([1, 1, 1, 1, 1, 1, 1, 1, 1], 4), ([3], 5)])
def test_batch_quotas_properties(counts, n_lesion):
    steps = -(-sum(counts) // n_lesion)
    q = batch_quotas(counts, n_lesion, steps)
    expected = n_lesion * np.asarray(counts) / sum(counts)
    assert (q.sum(axis=1) == n_lesion).all()
    assert (q >= np.floor(expected)).all() and (q <= np.ceil(expected)).all()
    assert (q.sum(axis=0) >= counts).all()


def test_epoch_plan_covers_every_lesion_item():
    bins = np.array([0] * 10 + [1] * 3 + [2] * 1 + [3] * 7)
    plan = epoch_plan(bins, 4, n_normal_items=5, batch_size=16, n_lesion=8, steps=3, seed=1, epoch=0)
    assert plan.shape == (3, 16)
    assert ((plan < 21).sum(axis=1) == 8).all()
    assert set(plan[plan < 21].tolist()) == set(range(21))
    assert set(plan[plan >= 21].tolist()) == set(range(21, 26))  # 24 normal draws cover all 5
    again = epoch_plan(bins, 4, 5, 16, 8, 3, seed=1, epoch=0)
    other = epoch_plan(bins, 4, 5, 16, 8, 3, seed=1, epoch=1)
    assert (plan == again).all() and not (plan == other).all()


def test_subject_weights_hand_computed():
    assert subject_weights(np.array(["a", "a", "a", "a", "b"]), 0.0) is None
    assert np.allclose(subject_weights(np.array(["a", "a", "a", "a", "b"]), 1.0), [0.25] * 4 + [1.0])
    assert np.allclose(subject_weights(np.array(["b", "a", "a", "a", "a"]), 0.5), [1.0] + [0.5] * 4)
    with pytest.raises(ConfigError, match="subject_balance"):
        subject_weights(np.array(["a"]), 1.5)


def test_epoch_plan_subject_weights_keep_bin_quotas_and_follow_weights():
    # bin 0: subject a's 4 slices (items 0-3) and subject b's 1 slice (item 4); bin 1: items 5-6
    bins = np.array([0, 0, 0, 0, 0, 1, 1])
    w = subject_weights(np.array(["a", "a", "a", "a", "b", "a", "a"]), 1.0)
    plan = epoch_plan(bins, 2, n_normal_items=3, batch_size=8, n_lesion=7, steps=4000, seed=3, epoch=0,
                      lesion_weights=w)
    lesion = plan[plan < 7]
    uniform = epoch_plan(bins, 2, 3, 8, 7, 4000, seed=3, epoch=0)
    # the bins' quotas are those of the uniform draw: 5 of 7 lesion slices per batch from bin 0
    assert ((plan < 5).sum(axis=1) == (uniform < 5).sum(axis=1)).all()
    # a has 6 lesion slices (weight 1/6 each), b one (weight 1): b's share of bin 0 is 1 / (4/6 + 1)
    share_b = (lesion == 4).sum() / (lesion < 5).sum()
    assert share_b == pytest.approx(1 / (4 / 6 + 1), abs=0.02)
    assert (uniform[uniform < 5] == 4).sum() / (uniform < 5).sum() == pytest.approx(0.2, abs=0.01)
    again = epoch_plan(bins, 2, 3, 8, 7, 4000, seed=3, epoch=0, lesion_weights=w)
    assert (plan == again).all()
    with pytest.raises(ValueError, match="positive"):
        epoch_plan(bins, 2, 3, 8, 7, 10, seed=3, epoch=0, lesion_weights=np.zeros(7))


def test_subject_balance_weights_each_training_lesion_slice_by_its_subject(work, folds):
    plain = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=2, depth=2).train
    assert plain.lesion_weights is None
    ds = build_training_sets(_cfg(subject_balance=1.0), _run_cfg(work), "axial", fold=2, depth=2).train
    subjects = ds.item_stack[: ds.n_lesion_items]
    per_subject = np.bincount(subjects)[subjects]
    assert np.allclose(ds.lesion_weights, 1.0 / per_subject)
    assert (ds.plan(0) == ds.plan(0)).all() and ds.plan(0).shape == plain.plan(0).shape


def test_training_batches_balanced_and_leak_free(work, folds):
    sets = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=2, depth=2)
    roles = sets.subjects.set_index("subject")["role"]
    assert set(roles[sets.subjects.set_index("subject")["fold"] == 2]) == {"val"}
    assert (roles == "inner_val").sum() == 2  # 25 % of the 8 training-fold subjects
    kind = folds.set_index(["subject", "slice"])["kind"]
    abin = folds.set_index(["subject", "slice"])["area_bin"]
    train_rows = folds[folds.subject.map(roles) == "train"]
    train_les = train_rows[train_rows.kind == "lesion"]
    p = train_les["area_bin"].value_counts(normalize=True)
    ds = sets.train
    assert len(ds) == -(-len(train_les) // 4)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen = set()
        for j in range(len(ds)):
            x, y = ds[j]
            assert x.shape == (8, *sets.input_shape) and x.dtype == np.float32 and y.dtype == np.float32
            pairs = _decode(x)
            assert all(roles[s] == "train" for s, _ in pairs)  # no fold-k or inner-val subject
            kinds = [kind[pr] for pr in pairs]
            assert kinds.count("lesion") == 4 and kinds.count("normal") == 4
            for pr, yy in zip(pairs, y):
                assert (yy.sum() > 0) == (kind[pr] == "lesion")
            got = pd.Series([abin[pr] for pr in pairs if kind[pr] == "lesion"]).value_counts()
            for b, frac in p.items():
                assert np.floor(4 * frac) <= got.get(b, 0) <= np.ceil(4 * frac), (epoch, j, b)
            seen |= {pr for pr in pairs if kind[pr] == "lesion"}
        assert seen == set(zip(train_les.subject, train_les.slice))  # no lesion slice starved


def test_padding_shape(work):
    sets = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=1, depth=3)
    assert sets.slice_shape == (H, W) and sets.input_shape == (16, 16, 1)
    assert padded_shape((H, W), 3) == (16, 16) and all(s % 8 == 0 for s in sets.input_shape[:2])
    x, _ = sets.train[0]
    # centred padding: 13 -> 16 puts 1 row before, 2 after; 11 -> 16 puts 2 columns before, 3 after
    assert (x[:, :1] == 0).all() and (x[:, -2:] == 0).all() and (x[:, :, :2] == 0).all()
    assert (x[:, 1 + 2, 2 + 2, 0] > 0).all()


def test_deterministic_for_seed(work):
    a = build_training_sets(_cfg(), _run_cfg(work, seed=3), "axial", 1, 2)
    b = build_training_sets(_cfg(), _run_cfg(work, seed=3), "axial", 1, 2)
    c = build_training_sets(_cfg(), _run_cfg(work, seed=4), "axial", 1, 2)
    assert a.subjects.equals(b.subjects)
    for j in range(len(a.train)):
        np.testing.assert_array_equal(a.train[j][0], b.train[j][0])
    assert not np.array_equal(a.train.plan(0), c.train.plan(0))
    a.train.on_epoch_end()  # an end without a begin (Keras' iterator reset) keeps the draw
    assert a.train.epoch == 0
    a.train.on_epoch_begin()
    a.train.on_epoch_end()  # a real epoch end moves to the next epoch's draw
    assert a.train.epoch == 1 and not np.array_equal(a.train.plan(), b.train.plan())


def test_memory_mapped_and_bounded(work):
    sets = build_training_sets(_cfg(max_open_stacks=2), _run_cfg(work), "axial", 1, 2)
    ds = sets.train
    assert ds.open_stacks == 0  # nothing opened, let alone loaded, up front
    x, _ = ds[0]
    assert len({s for s, _ in _decode(x)}) > 2  # the batch spans more subjects than may stay open
    assert ds.open_stacks == 2
    assert all(isinstance(a, np.memmap) for pair in ds._cache.values() for a in pair)
    clone = __import__("pickle").loads(__import__("pickle").dumps(ds))  # what a worker process receives
    assert clone.open_stacks == 0 and np.array_equal(clone[0][0], x)


def test_inner_and_outer_validation_deterministic(work, folds):
    sets = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=3, depth=2)
    roles = sets.subjects.set_index("subject")["role"]
    iv = sets.inner_val
    xs = [iv[j][0] for j in range(len(iv))]
    pairs = [pr for x in xs for pr in _decode(x)]
    want = folds[folds.subject.map(roles) == "inner_val"].sort_values(["subject", "slice"])
    assert pairs == list(zip(want.subject, want.slice))  # all slices, fixed order, last batch partial
    np.testing.assert_array_equal(iv[0][0], xs[0])
    outer = outer_validation_slices(_cfg(), _run_cfg(work), "axial", fold=3, depth=2)
    pairs = [pr for j in range(len(outer)) for pr in _decode(outer[j][0])]
    want = folds[folds.fold == 3].sort_values(["subject", "slice"])
    assert pairs == list(zip(want.subject, want.slice))


def test_inner_val_stratified_by_volume(work):
    sets = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=1, depth=2)
    sub = sets.subjects[sets.subjects.role != "val"].copy()
    vol = {_subject_name(i): sum(_lesion_slices(i).values()) for i in range(N_SUBJECTS)}
    sub["vol"] = sub.subject.map(vol)
    ordered = sub.sort_values(["vol", "subject"]).subject.tolist()
    picked = sub[sub.role == "inner_val"].subject.tolist()
    assert len(picked) == 2
    assert sum(ordered.index(s) < 4 for s in picked) == 1  # one from each volume half


def test_stage_run_writes_report(work, tmp_path):
    cfg = _cfg()
    summary = run(cfg, _run_cfg(work), plane="axial", fold=1, depth=2, materialise=True)
    out = Path(summary["dirs"][0])
    assert out == work / "05_prepare_arrays" / "axial" / "fold_1"
    report = json.loads((out / "summary.json").read_text())
    assert report["lesion_slices_never_drawn"] == 0 and report["steps_per_epoch"] == summary["steps_per_epoch"]
    assert report["input_shape"] == [16, 12, 1] and report["lesion_per_batch"] == 4
    batches = pd.read_csv(out / "batches.csv")
    assert len(batches) == report["steps_per_epoch"]
    assert (batches.n_lesion == 4).all() and (batches.n_normal == 4).all()
    assert list(batches.columns[4:]) == [f"bin_{b}" for b in BINS]
    assert (batches[[f"bin_{b}" for b in BINS]].sum(axis=1) == 4).all()
    for b in BINS:
        info = report["bins"][b]
        assert info["min_per_batch"] >= np.floor(info["expected_per_batch"])
        assert info["max_per_batch"] <= np.ceil(info["expected_per_batch"])
    x = np.load(out / "x_epoch0.npy", mmap_mode="r")
    assert x.shape == (8 * report["steps_per_epoch"], 16, 12, 1)
    sets = pd.read_csv(out / "sets.csv")
    assert list(sets.columns) == ["subject", "role", "fold"] and len(sets) == N_SUBJECTS
    first = (out / "batches.csv").read_bytes()
    assert main(["--work-dir", str(work), "--seed", "7", "--depth", "2", "--batch-size", "8"]) == 0
    for k in (1, 2, 3):  # no --plane/--fold: every plane with a folds table, every fold
        assert (work / "05_prepare_arrays" / "axial" / f"fold_{k}" / "summary.json").is_file()
    run(cfg, _run_cfg(work), plane="axial", fold=1, depth=2)
    assert (out / "batches.csv").read_bytes() == first  # re-run, same seed: identical report


def test_bad_inputs(work, tmp_path):
    with pytest.raises(StageInputError, match="subject_folds.csv"):
        build_training_sets(_cfg(), _run_cfg(tmp_path), "axial", 1, 2)
    with pytest.raises(ConfigError, match="fold 9"):
        build_training_sets(_cfg(), _run_cfg(work), "axial", 9, 2)
    with pytest.raises(ConfigError, match="unknown setting"):
        build_training_sets({"arrays": {"batchsize": 4}}, _run_cfg(work), "axial", 1, 2)
    with pytest.raises(ConfigError, match="batch_size"):
        build_training_sets(_cfg(batch_size=1), _run_cfg(work), "axial", 1, 2)
    assert DEFAULTS["lesion_fraction"] == 0.5 and DEFAULTS["augment"] is True


def test_subject_without_stacks_left_out(work, tmp_path):
    w = tmp_path / "w"
    (w / "03_moving_converting").mkdir(parents=True)
    (w / "03_moving_converting" / "axial").symlink_to(work / "03_moving_converting" / "axial")
    index = pd.read_csv(work / "03_moving_converting" / "index.csv")
    index[index.subject != "sub-04"].to_csv(w / "03_moving_converting" / "index.csv", index=False)
    (w / "04_cross_validation").symlink_to(work / "04_cross_validation")
    sets = build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert "sub-04" not in set(sets.subjects.subject) and len(sets.subjects) == N_SUBJECTS - 1


def test_augmentation_seeded_and_paired(work):
    sets = build_training_sets(_cfg(augment=True), _run_cfg(work), "axial", 1, 2)
    again = build_training_sets(_cfg(augment=True), _run_cfg(work), "axial", 1, 2)
    plain = build_training_sets(_cfg(), _run_cfg(work), "axial", 1, 2)
    x, y = sets.train[0]
    x2, y2 = again.train[0]
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, plain.train[0][0])
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}  # nearest-neighbour mask stays binary
    assert isinstance(sets.train, BalancedSliceDataset) and sets.train.augment is not None
    # the draws are recorded per batch and depend only on (seed, epoch, batch)
    draws = sets.train.batch_draws(0, epoch=0)
    assert len(draws) == 8 and draws == again.train.batch_draws(0, epoch=0)
    assert draws != sets.train.batch_draws(1, epoch=0) and draws != sets.train.batch_draws(0, epoch=1)
    assert plain.train.batch_draws(0) == []
    # the [augment] section sets the strengths; an unknown key or a bad value is an error
    weak = build_training_sets({**_cfg(augment=True), "augment": {"rotate_deg": 0.0}}, _run_cfg(work), "axial", 1, 2)
    assert weak.train.augment.rotate_deg == 0.0 and all(d.angle_deg == 0.0 for d in weak.train.batch_draws(0))
    assert all(d.lesion_level is None for d in draws)  # the lesion look is off by default
    painted = build_training_sets({**_cfg(augment=True), "augment": {"lesion_prob": 1.0}}, _run_cfg(work), "axial", 1, 2)
    assert all(d.lesion_level is not None for d in painted.train.batch_draws(0))
    assert all(d.brain_bias is None for d in draws)  # so is the brain-scaled bias field
    shaded = build_training_sets({**_cfg(augment=True), "augment": {"bias_brain": 0.3}}, _run_cfg(work), "axial", 1, 2)
    assert all(0 <= d.brain_bias[0] <= 0.3 for d in shaded.train.batch_draws(0))
    assert not np.array_equal(shaded.train[0][0], x)
    with pytest.raises(ConfigError, match="unknown setting"):
        build_training_sets({**_cfg(augment=True), "augment": {"rotate": 5}}, _run_cfg(work), "axial", 1, 2)
    with pytest.raises(ConfigError, match="probability"):
        build_training_sets({**_cfg(augment=True), "augment": {"flip_prob": 2}}, _run_cfg(work), "axial", 1, 2)


class _Logged(BalancedSliceDataset):
    served: list = []

    def __getitem__(self, index):
        self.served.append((self.epoch, int(index)))
        return super().__getitem__(index)


@pytest.mark.parametrize("workers", [1, 2])
def test_keras_fit_consumes_dataset_with_workers(work, workers):
    """model.fit serves epoch e's draw for every batch of epoch e, with and without worker threads."""
    import keras

    sets = build_training_sets(_cfg(workers=workers), _run_cfg(work), "axial", 1, 2)
    assert sets.train.workers == workers
    sets.train.__class__ = _Logged
    _Logged.served = []
    inp = keras.Input(sets.input_shape)
    model = keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(inp))
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    hist = model.fit(sets.train, validation_data=sets.inner_val, epochs=2, verbose=0)
    assert len(hist.history["loss"]) == 2 and np.isfinite(hist.history["val_loss"]).all()
    assert sets.train.epoch == 2  # on_epoch_end advanced the draw each epoch (not Keras' reset call)
    steps = len(sets.train)
    for epoch in (0, 1):  # every index served exactly once per epoch, from that epoch's draw
        # (Keras first peeks at batches 0-1 of epoch 0 to infer the tensor spec)
        assert sorted([i for e, i in _Logged.served if e == epoch][-steps:]) == list(range(steps))
    assert sum(e == 1 for e, _ in _Logged.served) == steps


def _copy_work(work: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "w"
    shutil.copytree(work, dst, ignore=shutil.ignore_patterns("05_prepare_arrays"))
    return dst


def test_non_numeric_fold_table_value_is_one_error_line(work, tmp_path, capsys):
    """Issue repro: a non-numeric value in a stage-04 CSV gave stage 05 a traceback."""
    from conftest import run_stage

    w = _copy_work(work, tmp_path)
    path = w / "04_cross_validation" / "axial_folds.csv"
    table = pd.read_csv(path, dtype=str)
    table.loc[3, "lesion_pixels"] = "12px"
    table.to_csv(path, index=False)
    code, _, err = run_stage(main, ["--work-dir", w, "--plane", "axial", "--fold", 1, "--depth", 2], capsys)
    assert code == 2 and err == [f"error: {path}: row 5: column lesion_pixels = '12px' is not an integer; "
                                 "re-run stage 04 (04_cross_validation/make_folds.py) or restore the file"]


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_truncated_or_empty_stack_is_refused_by_stage_05(work, tmp_path, capsys, damage):
    """Issue repro: a truncated or zero-byte .npy stack passed stage 05 (exit 0) and failed stage 07
    with a traceback that named no file."""
    from conftest import run_stage

    w = _copy_work(work, tmp_path)
    stack = w / "03_moving_converting" / "axial" / "sub-05_image.npy"
    data = stack.read_bytes()
    stack.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    code, _, err = run_stage(main, ["--work-dir", w, "--plane", "axial", "--fold", 1, "--depth", 2], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {stack}: truncated or unreadable slice stack (")
    assert err[0].endswith("re-run stage 03 (03_moving_converting/convert_to_2d.py)")
    with pytest.raises(StageInputError, match="sub-05_image.npy: truncated"):
        build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)  # what stage 07 calls


def test_lesion_fraction_sets_the_lesion_share_of_every_batch(work, folds):
    """lesion_fraction 0.25 of 8: 2 lesion + 6 normal slices in every batch, len = ceil(lesion slices / 2)."""
    from raxnet.batches import lesion_per_batch

    assert lesion_per_batch(8, 0.25) == 2 and lesion_per_batch(8, 0.75) == 6 and lesion_per_batch(8, 0.5) == 4
    assert lesion_per_batch(4, 0.01) == 1 and lesion_per_batch(4, 0.99) == 3  # at least one of each
    assert lesion_per_batch(10, 0.34) == 3  # round(3.4)
    with pytest.raises(ConfigError, match=r"arrays.lesion_fraction must be in \(0, 1\)"):
        lesion_per_batch(8, 1.0)
    with pytest.raises(ConfigError, match="arrays.batch_size must be >= 2"):
        lesion_per_batch(1, 0.5)
    sets = build_training_sets(_cfg(lesion_fraction=0.25), _run_cfg(work), "axial", fold=2, depth=2)
    kind = folds.set_index(["subject", "slice"])["kind"]
    roles = sets.subjects.set_index("subject")["role"]
    train_les = folds[(folds.subject.map(roles) == "train") & (folds.kind == "lesion")]
    ds = sets.train
    assert len(ds) == -(-len(train_les) // 2)
    for j in range(len(ds)):
        x, y = ds[j]
        kinds = [kind[pr] for pr in _decode(x)]
        assert kinds.count("lesion") == 2 and kinds.count("normal") == 6, j
        assert int((y.reshape(8, -1).max(axis=1) > 0).sum()) == 2


def test_composition_matches_the_served_batches(work, folds):
    """composition() of an epoch = the batches the dataset serves in that epoch, decoded; bins in volume order."""
    sets = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=2, depth=2)
    ds = sets.train
    abin = folds.set_index(["subject", "slice"])["area_bin"]
    kind = folds.set_index(["subject", "slice"])["kind"]
    for epoch in (0, 1):
        comp = composition(ds, epoch)
        assert list(comp.columns) == ["epoch", "batch", "n_lesion", "n_normal"] + [f"bin_{b}" for b in BINS]
        assert comp["epoch"].tolist() == [epoch] * len(ds) and comp["batch"].tolist() == list(range(len(ds)))
        ds.set_epoch(epoch)
        for j in range(len(ds)):
            pairs = _decode(ds[j][0])
            lesion = [abin[p] for p in pairs if kind[p] == "lesion"]
            row = comp.iloc[j]
            assert (row["n_lesion"], row["n_normal"]) == (len(lesion), len(pairs) - len(lesion))
            assert [row[f"bin_{b}"] for b in BINS] == [lesion.count(b) for b in BINS], (epoch, j)


def test_batch_quotas_refusals_and_inner_val_pick():
    from raxnet.batches import _pick_inner_val

    with pytest.raises(ValueError, match=r"^bin counts must be non-negative with a positive sum, got \[0, 0\]$"):
        batch_quotas([0, 0], 4, 2)
    with pytest.raises(ValueError, match=r"^bin counts must be non-negative with a positive sum, got \[3, -1\]$"):
        batch_quotas([3, -1], 4, 2)
    with pytest.raises(ValueError, match="^n_lesion must be >= 0 and steps >= 1$"):
        batch_quotas([3, 1], -1, 2)
    with pytest.raises(ValueError, match="^n_lesion must be >= 0 and steps >= 1$"):
        batch_quotas([3, 1], 4, 0)
    assert batch_quotas([3, 1], 0, 2).tolist() == [[0, 0], [0, 0]]
    # 8 subjects, 25 %: 2 inner-validation subjects, one from each half of the volume order
    subjects = pd.DataFrame({"subject": [f"s{i}" for i in range(8)], "lesion_voxels": [80, 10, 70, 20, 60, 30, 50, 40]})
    for seed in range(5):
        picked = _pick_inner_val(subjects, 0.25, seed, fold=1)
        assert len(picked) == 2
        assert len(picked & {"s1", "s3", "s5", "s7"}) == 1 and len(picked & {"s0", "s2", "s4", "s6"}) == 1
    assert _pick_inner_val(subjects, 0.25, 3, 1) == _pick_inner_val(subjects, 0.25, 3, 1)
    assert len({frozenset(_pick_inner_val(subjects, 0.5, s, 2)) for s in range(6)}) > 1  # seed matters
    assert len(_pick_inner_val(subjects, 0.99, 0, 1)) == 7 and len(_pick_inner_val(subjects, 0.01, 0, 1)) == 1


def test_run_one_materialises_epoch_0_and_reports_it(work, tmp_path):
    """materialise=True writes epoch 0's batches (float32 (steps*B, H, W, 1)) exactly as the dataset serves
    them, listed in summary.json; off by default. batches.csv = composition of epoch 0 (2 lesion + 6 normal)."""
    import shutil

    from raxnet.batches import run_one

    w = tmp_path / "w"
    shutil.copytree(work, w)
    shutil.rmtree(w / "05_prepare_arrays", ignore_errors=True)  # what other tests wrote into the shared work
    cfg = _cfg(lesion_fraction=0.25)
    res = run_one(cfg, _run_cfg(w), "axial", 2, depth=2, materialise=True)
    out = Path(res["dir"])
    sets = build_training_sets(cfg, _run_cfg(w), "axial", fold=2, depth=2)
    ds = sets.train
    ds.set_epoch(0)
    xs, ys = np.load(out / "x_epoch0.npy"), np.load(out / "y_epoch0.npy")
    assert xs.dtype == ys.dtype == np.float32 and xs.shape == (ds.steps * 8, *sets.input_shape)
    for j in range(ds.steps):
        x, y = ds[j]
        np.testing.assert_array_equal(xs[j * 8 : (j + 1) * 8], x)
        np.testing.assert_array_equal(ys[j * 8 : (j + 1) * 8], y)
    summary = json.loads((out / "summary.json").read_text())
    for name, arr in (("x_epoch0.npy", xs), ("y_epoch0.npy", ys)):
        entry = summary["materialised"][name]
        assert entry == {"shape": list(arr.shape), "dtype": "float32", "bytes": (out / name).stat().st_size}
    assert summary["lesion_per_batch"] == 2 and summary["normal_per_batch"] == 6
    comp = pd.read_csv(out / "batches.csv")
    assert (comp["n_lesion"] == 2).all() and (comp["n_normal"] == 6).all() and (comp["epoch"] == 0).all()
    pd.testing.assert_frame_equal(comp, composition(ds, 0), check_dtype=False)
    res = run_one(_cfg(), _run_cfg(w), "axial", 1, depth=2)
    assert not (Path(res["dir"]) / "x_epoch0.npy").exists()
    assert "materialised" not in json.loads((Path(res["dir"]) / "summary.json").read_text())


def test_dataset_classes_are_loaded_on_first_use():
    import raxnet.batches as B
    import raxnet.datasets as D

    assert B.BalancedSliceDataset is D.BalancedSliceDataset
    with pytest.raises(AttributeError, match=r"^module 'raxnet.batches' has no attribute 'nope'$"):
        B.nope  # noqa: B018


# ------------------------------------------------------------------ hand-made inputs, known answers
def _records(name: str = "raxnet.batches", level: int = 20):
    from conftest import log_records

    return log_records(name, level)


def test_bin_sort_key_reads_the_lower_edge_in_any_notation():
    from raxnet.batches import _bin_sort_key

    assert _bin_sort_key("(1E3, inf)") == (1000.0, "(1E3, inf)")
    assert _bin_sort_key("(2e2, 1E3]") == (200.0, "(2e2, 1E3]")
    assert _bin_sort_key(" [0, 5]") == (0.0, " [0, 5]")
    assert _bin_sort_key("unbinned") == (np.inf, "unbinned")  # labels without an edge go last
    labels = ["(1.5e+06, inf)", "unbinned", "(500, 2000]", "(2000, 1.5e+06]", "(0, 500]"]
    assert sorted(labels, key=_bin_sort_key) == ["(0, 500]", "(500, 2000]", "(2000, 1.5e+06]", "(1.5e+06, inf)",
                                                 "unbinned"]


def test_cycle_empty_draws_are_integer_indices():
    from raxnet.batches import _cycle

    rng = np.random.default_rng(0)
    for n_items, length in ((5, 0), (0, 3), (0, 0), (4, -1)):
        got = _cycle(rng, n_items, length)
        assert got.shape == (0,) and got.dtype == np.int64, (n_items, length)  # used as an index array
    got = _cycle(rng, 3, 7)  # 3 fresh permutations, cut to 7
    assert sorted(got[:3]) == sorted(got[3:6]) == [0, 1, 2] and len(got) == 7


def test_dataset_settings_reach_both_datasets(work):
    from raxnet.batches import _dataset_kwargs

    assert _dataset_kwargs({"context": 0, "max_open_stacks": "3", "workers": "2", "use_multiprocessing": 1,
                            "max_queue_size": 5.0}) \
        == {"context": 0, "max_open": 3, "workers": 2, "use_multiprocessing": True, "max_queue_size": 5}
    sets = build_training_sets(_cfg(max_open_stacks=3, workers=2, max_queue_size=4), _run_cfg(work), "axial", 1, 2)
    for ds in (sets.train, sets.inner_val):
        assert (ds.max_open, ds.workers, ds.max_queue_size, ds.use_multiprocessing) == (3, 2, 4, False)


def test_batch_quotas_edge_counts_by_hand():
    assert batch_quotas([1], 3, 2).tolist() == [[3], [3]]  # one slice in all: 3 draws of it per batch
    assert batch_quotas([3, 0], 2, 2).tolist() == [[2, 0], [2, 0]]  # an empty bin is allowed, gets nothing
    assert batch_quotas([3, 0], 2, 2).dtype.kind == "i" and batch_quotas([10, 3, 1, 7], 8, 3).dtype.kind == "i"
    with pytest.raises(ValueError, match=r"^bin counts must be non-negative with a positive sum, got \[\[3, 1\]\]$"):
        batch_quotas([[3, 1]], 4, 2)


def test_epoch_plan_with_an_empty_last_bin():
    """n_bins = 3 but no item in bin 2: it gets no draws; the 3 lesion items of bins 0/1 fill 2 x 2 slots."""
    plan = epoch_plan(np.array([0, 0, 1]), 3, n_normal_items=2, batch_size=4, n_lesion=2, steps=2, seed=0, epoch=0)
    assert plan.shape == (2, 4) and ((plan < 3).sum(axis=1) == 2).all()
    assert set(plan[plan < 3].tolist()) == {0, 1, 2} and sorted(plan[plan >= 3].tolist()) == [3, 3, 4, 4]


def test_lesion_per_batch_limits_by_hand():
    from raxnet.batches import lesion_per_batch

    assert lesion_per_batch(2, 0.5) == 1 and lesion_per_batch(3, 0.5) == 2  # round(1.5) = 2, leaves 1 normal
    with pytest.raises(ConfigError, match=r"^arrays.lesion_fraction must be in \(0, 1\)$"):
        lesion_per_batch(8, 0.0)
    with pytest.raises(ConfigError, match=r"^arrays.batch_size must be >= 2 \(a batch holds lesion and normal slices\)$"):
        lesion_per_batch(1, 0.5)


def test_one_step_when_a_batch_holds_every_lesion_slice(work, folds):
    """14 training lesion slices of fold 2 and 15 lesion slots per batch: one step per epoch."""
    sets = build_training_sets(_cfg(batch_size=16, lesion_fraction=0.9375), _run_cfg(work), "axial", 2, 2)
    roles = sets.subjects.set_index("subject")["role"]
    assert ((folds.subject.map(roles) == "train") & (folds.kind == "lesion")).sum() == 14
    assert sets.train.n_lesion == 15 and len(sets.train) == 1


def test_composition_by_hand():
    """Three lesion items (bins a, a, b) and two normal items (3, 4); batches [2, 3], [0, 4], [1, 2]."""
    from types import SimpleNamespace

    plan = np.array([[2, 3], [0, 4], [1, 2]])
    ds = SimpleNamespace(plan=lambda epoch=None: plan if epoch == 0 else plan[::-1], n_lesion_items=3,
                         lesion_bins=np.array([0, 0, 1]), bin_labels=["a", "b"])
    want = pd.DataFrame({"epoch": [0, 0, 0], "batch": [0, 1, 2], "n_lesion": [1, 1, 2], "n_normal": [1, 1, 0],
                         "bin_a": [0, 1, 1], "bin_b": [1, 0, 1]})
    pd.testing.assert_frame_equal(composition(ds), want, check_dtype=False)  # default: epoch 0
    assert composition(ds, 1)["bin_b"].tolist() == [1, 0, 1][::-1] and (composition(ds, 1)["epoch"] == 1).all()


def test_outer_validation_uses_the_arrays_batch_size(work, folds):
    outer = outer_validation_slices(_cfg(batch_size=5), _run_cfg(work), "axial", fold=3, depth=2)
    n = (folds.fold == 3).sum()
    assert len(outer) == -(-n // 5) and outer[0][0].shape[0] == 5 and outer[len(outer) - 1][0].shape[0] == n - 5 * (len(outer) - 1)


def test_run_one_default_depth_is_4(work, tmp_path):
    from raxnet.batches import run_one

    w = _copy_work(work, tmp_path)
    res = run_one(_cfg(), _run_cfg(w), "axial", 1)
    assert res["input_shape"] == [16, 16, 1]  # 13 x 11 padded to multiples of 2**4


def test_summary_json_by_hand(work, folds, tmp_path):
    """Fold 2 with 3 steps of 4 lesion + 4 normal slices (fewer than the 14 training lesion slices need):
    every figure of summary.json recomputed from the fold table and the decoded epoch-0 batches."""
    from raxnet.batches import run_one

    w = _copy_work(work, tmp_path)
    cfg = _cfg(steps_per_epoch=3)
    with _records() as recs:
        res = run_one(cfg, _run_cfg(w), "axial", 2, depth=2)
    out = Path(res["dir"])
    summary = json.loads((out / "summary.json").read_text())
    sets = build_training_sets(cfg, _run_cfg(w), "axial", 2, 2)
    roles = sets.subjects.set_index("subject")["role"]
    rows = folds[folds.subject.map(roles) == "train"]
    les, nor = rows[rows.kind == "lesion"], rows[rows.kind == "normal"]
    assert (len(les), len(nor)) == (14, 18)
    abin = folds.set_index(["subject", "slice"])["area_bin"]
    kind = folds.set_index(["subject", "slice"])["kind"]
    sets.train.set_epoch(0)
    batches = [_decode(sets.train[j][0]) for j in range(3)]
    les_draws = [[abin[p] for p in b if kind[p] == "lesion"] for b in batches]
    all_les = [p for b in batches for p in b if kind[p] == "lesion"]
    all_nor = [p for b in batches for p in b if kind[p] == "normal"]
    bins = {}
    for b in BINS:
        n_b = int((les.area_bin == b).sum())
        drawn = sum(d.count(b) for d in les_draws)
        bins[b] = {"train_slices": n_b, "train_fraction": round(n_b / 14, 6), "drawn": drawn,
                   "drawn_fraction": round(drawn / 12, 6), "expected_per_batch": round(4 * n_b / 14, 4),
                   "min_per_batch": min(d.count(b) for d in les_draws),
                   "max_per_batch": max(d.count(b) for d in les_draws)}
    never = 14 - len(set(all_les))
    assert never == 2  # 12 draws, each lesion slice at most once (one permutation per bin)
    want = {
        "plane": "axial", "fold": 2, "depth": 2, "seed": 7, "input_shape": [16, 12, 1], "slice_shape": [13, 11],
        "batch_size": 8, "lesion_per_batch": 4, "normal_per_batch": 4, "steps_per_epoch": 3,
        "subjects": {"train": int((roles == "train").sum()), "inner_val": 2, "val": 4},
        "train_lesion_slices": 14, "train_normal_slices": 18,
        "inner_val_slices": int((folds.subject.map(roles) == "inner_val").sum()),
        "lesion_slices_never_drawn": never, "normal_slices_drawn_fraction": round(len(set(all_nor)) / 18, 6),
        "bins": bins, "augment": None, "subjects_without_stacks": [],
    }
    assert summary == want
    assert [r.getMessage() for r in recs] == [
        "steps_per_epoch=3 < 4: not every lesion slice is drawn each epoch",
        "2 lesion slice(s) not drawn in epoch 0 (steps_per_epoch too small)",
        f"axial fold 2: 3 steps x 8 (4 lesion + 4 normal), input (16, 12, 1) -> {out}"]
    with _records(level=30) as recs:
        run_one(_cfg(steps_per_epoch=4), _run_cfg(w), "axial", 2, depth=2)  # exactly enough: no warning
    assert recs == []
    aug = run_one({**_cfg(augment=True), "augment": {"rotate_deg": 7.5}}, _run_cfg(w), "axial", 2, depth=2)
    assert json.loads((Path(aug["dir"]) / "summary.json").read_text())["augment"]["rotate_deg"] == 7.5


def _with_split(work: Path, tmp_path: Path, voxels: dict | None = None, extra: str | None = None) -> tuple[Path, Path]:
    """A copy of the work folder plus a split.csv with only subject, set, lesion_voxels (all 12 in train)."""
    w = _copy_work(work, tmp_path)
    (w / "02_data_splitting").mkdir()
    names = [_subject_name(i) for i in range(N_SUBJECTS)] + ([extra] if extra else [])
    vox = [sum(_lesion_slices(i).values()) for i in range(N_SUBJECTS)] + ([5] if extra else [])
    table = pd.DataFrame({"subject": names, "set": "train", "lesion_voxels": vox})
    for s, v in (voxels or {}).items():
        table.loc[table.subject == s, "lesion_voxels"] = v
    table = pd.concat([table, pd.DataFrame({"subject": ["sub-h"], "set": ["holdout"], "lesion_voxels": [9]})])
    table.to_csv(w / "02_data_splitting" / "split.csv", index=False)
    return w, w / "02_data_splitting" / "split.csv"


def test_split_csv_is_checked_when_present(work, tmp_path):
    w, _ = _with_split(work, tmp_path / "ok")
    assert len(build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2).subjects) == N_SUBJECTS
    w, split = _with_split(work, tmp_path / "vox", voxels={"sub-03": 99})
    held = sum(_lesion_slices(3).values())
    with pytest.raises(StageInputError) as e:
        build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert str(e.value).startswith(f"{w / '04_cross_validation' / 'axial_folds.csv'}: the lesion slices of sub-03 "
                                   f"hold {held} lesion pixels, {split} says lesion_voxels = 99")
    w, split = _with_split(work, tmp_path / "extra", extra="sub-99")
    with pytest.raises(StageInputError) as e:
        build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert str(e.value).startswith(f"{w / '04_cross_validation' / 'subject_folds.csv'}: 1 train subjects of {split} "
                                   "missing: sub-99; re-run stage 04")


def test_summary_of_a_fold_whose_subjects_have_no_stacks(work, tmp_path):
    """Stage 03 lost every subject of fold 3 (sub-02, 05, 08, 11): run_one for fold 3 still reports, with no
    validation subject and the four listed as without stacks."""
    from raxnet.batches import run_one

    w = _copy_work(work, tmp_path)
    index = pd.read_csv(w / "03_moving_converting" / "index.csv")
    lost = [_subject_name(i) for i in range(N_SUBJECTS) if 1 + i % N_FOLDS == 3]
    index[~index.subject.isin(lost)].to_csv(w / "03_moving_converting" / "index.csv", index=False)
    res = run_one(_cfg(), _run_cfg(w), "axial", 3, depth=2)
    summary = json.loads((Path(res["dir"]) / "summary.json").read_text())
    assert lost == ["sub-02", "sub-05", "sub-08", "sub-11"] and summary["subjects_without_stacks"] == lost
    assert summary["subjects"] == {"train": 6, "inner_val": 2, "val": 0}


def test_summary_with_a_bin_never_drawn(work, tmp_path):
    """Fold 1's training lesion slices per bin: 4 / 7 / 4. One lesion slice per batch and one step: the single
    draw goes to the bin with the largest remainder of 1 x (4, 7, 4) / 15, the middle one; the others get none."""
    from raxnet.batches import run_one

    w = _copy_work(work, tmp_path)
    res = run_one(_cfg(lesion_fraction=0.125, steps_per_epoch=1), _run_cfg(w), "axial", 1, depth=2)
    bins = json.loads((Path(res["dir"]) / "summary.json").read_text())["bins"]
    assert [bins[b]["train_slices"] for b in BINS] == [4, 7, 4]
    assert [(bins[b]["drawn"], bins[b]["drawn_fraction"]) for b in BINS] == [(0, 0.0), (1, 1.0), (0, 0.0)]
    assert [(bins[b]["min_per_batch"], bins[b]["max_per_batch"]) for b in BINS] == [(0, 0), (1, 1), (0, 0)]


def _drop_stacks(work: Path, tmp_path: Path, lost: list[str], errors: list[str] | None) -> Path:
    """A copy of the work folder whose index.csv lacks ``lost``; errors.csv lists ``errors`` (None: no file,
    []: an empty file)."""
    w = _copy_work(work, tmp_path)
    index = pd.read_csv(w / "03_moving_converting" / "index.csv")
    index[~index.subject.isin(lost)].to_csv(w / "03_moving_converting" / "index.csv", index=False)
    if errors is not None:
        path = w / "03_moving_converting" / "errors.csv"
        path.write_text("" if not errors else pd.DataFrame({"subject": errors, "error": "x"}).to_csv(index=False))
    return w


def test_stage_03_errors_explain_missing_stacks(work, tmp_path):
    """A subject without stacks is left out (with a warning) when stage 03's errors.csv lists it; when errors.csv
    exists and does not list it (or is empty) the index is refused, naming the three files."""
    w = _drop_stacks(work, tmp_path / "listed", ["sub-04"], ["sub-04"])
    with _records(level=30) as recs:
        sets = build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert "sub-04" not in set(sets.subjects.subject) and len(sets.subjects) == N_SUBJECTS - 1
    assert [r.getMessage() for r in recs] == [
        "1 subject(s) of subject_folds.csv have no axial stacks (stage 03 errors?), left out: sub-04"]
    for name, errors in (("other", ["sub-07"]), ("empty", [])):
        w = _drop_stacks(work, tmp_path / name, ["sub-04", "sub-09"], errors)
        stage03, stage04 = w / "03_moving_converting", w / "04_cross_validation"
        with pytest.raises(StageInputError) as e:
            build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
        assert str(e.value) == (f"{stage03 / 'index.csv'}: no axial stacks for 2 subject(s) of {stage04 / 'subject_folds.csv'} "
                                f"that {stage03 / 'errors.csv'} does not list: sub-04, sub-09; "
                                "re-run stage 03 (03_moving_converting/convert_to_2d.py)")


def test_many_subjects_without_stacks_warning_is_cut_at_ten(work, tmp_path):
    lost = [_subject_name(i) for i in range(N_SUBJECTS) if i not in (0, 1)]  # 10 lost, fold 1 keeps sub-00
    w = _drop_stacks(work, tmp_path, lost[:10], None)
    with _records(level=30) as recs:
        with pytest.raises(StageInputError, match=r"^fold 1: need >= 2 training subjects with stacks, have 1$"):
            build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert [r.getMessage() for r in recs] == [
        "10 subject(s) of subject_folds.csv have no axial stacks (stage 03 errors?), left out: " + ", ".join(lost[:10])]
    w = _drop_stacks(work, tmp_path / "eleven", [_subject_name(i) for i in range(1, 12)], None)
    with _records(level=30) as recs:
        with pytest.raises(StageInputError, match=r"^fold 2: need >= 2 training subjects with stacks, have 1$"):
            build_training_sets(_cfg(), _run_cfg(w), "axial", 2, 2)
    assert recs[0].getMessage().endswith(", ".join(_subject_name(i) for i in range(1, 11)) + " ...")


def test_plan_refusals_by_hand(work, tmp_path):
    with pytest.raises(ConfigError, match=r"^fold 9 not in subject_folds.csv \(folds \[1, 2, 3\]\)$"):
        build_training_sets(_cfg(), _run_cfg(work), "axial", 9, 2)
    for fraction in (0.0, 1.0):
        with pytest.raises(ConfigError, match=r"^arrays.inner_val_fraction must be in \(0, 1\)$"):
            build_training_sets(_cfg(inner_val_fraction=fraction), _run_cfg(work), "axial", 1, 2)
    w = _copy_work(work, tmp_path / "shape")
    index = pd.read_csv(w / "03_moving_converting" / "index.csv")
    index.loc[index.subject == "sub-03", "height"] = 14
    index.to_csv(w / "03_moving_converting" / "index.csv", index=False)
    with pytest.raises(StageInputError, match=r"^axial stacks have different slice shapes: \[\[13, 11\], \[14, 11\]\]$"):
        build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    w = _copy_work(work, tmp_path / "outside")
    table = pd.read_csv(w / "04_cross_validation" / "axial_folds.csv", dtype={"area_bin": str})
    table.loc[(table.subject == "sub-03") & (table.slice == 8), "slice"] = 10  # a normal slice past the 10
    table.to_csv(w / "04_cross_validation" / "axial_folds.csv", index=False)
    with pytest.raises(StageInputError, match=r"^axial_folds.csv: slice 10 of sub-03 outside its stack$"):
        build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)


def test_lesion_slices_without_area_bin_are_unbinned(work, folds, tmp_path):
    """A lesion slice with an empty area_bin gets the bin 'unbinned', sorted after the numbered bins; normal
    slices have no bin."""
    w = _copy_work(work, tmp_path)
    table = folds.copy()
    row = table.index[(table.subject == "sub-00") & (table.kind == "lesion")][0]
    table.loc[row, "area_bin"] = np.nan
    table.to_csv(w / "04_cross_validation" / "axial_folds.csv", index=False)
    sets = build_training_sets(_cfg(), _run_cfg(w), "axial", 2, 2)
    assert sets.subjects.set_index("subject").loc["sub-00", "role"] == "train"
    assert sets.train.bin_labels == BINS + ["unbinned"]
    assert np.bincount(sets.train.lesion_bins).tolist()[-1] == 1


def test_index_without_set_column_and_fold_mismatch_names_subject_folds(work, tmp_path):
    w = _copy_work(work, tmp_path / "noset")
    index = pd.read_csv(w / "03_moving_converting" / "index.csv")
    index.drop(columns="set").to_csv(w / "03_moving_converting" / "index.csv", index=False)  # not needed here
    assert len(build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2).subjects) == N_SUBJECTS
    w = _copy_work(work, tmp_path / "moved")
    path = w / "04_cross_validation" / "axial_folds.csv"
    table = pd.read_csv(path, dtype={"area_bin": str})
    table.loc[table.subject == "sub-00", "fold"] = 2  # sub-00 is in fold 1 in subject_folds.csv
    table.to_csv(path, index=False)
    with pytest.raises(StageInputError) as e:
        build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert str(e.value).startswith(f"{path}: subject sub-00 is in fold 2 here but in fold 1 in "
                                   f"{w / '04_cross_validation' / 'subject_folds.csv'}")


def test_inner_val_one_per_volume_group(work):
    """Fold 1 held out: 8 training subjects; inner_val_fraction 0.5 -> 4 groups of 2 in lesion-volume order
    (volume = the sum of the subject's lesion pixels), one inner-validation subject drawn from each."""
    vol = {_subject_name(i): sum(_lesion_slices(i).values()) for i in range(N_SUBJECTS)}
    for seed in (7, 8, 9):
        sets = build_training_sets(_cfg(inner_val_fraction=0.5), _run_cfg(work, seed), "axial", 1, 2)
        sub = sets.subjects[sets.subjects.role != "val"]
        ordered = sorted(sub.subject, key=lambda s: (vol[s], s))
        inner = set(sub[sub.role == "inner_val"].subject)
        assert [len(inner & set(ordered[g:g + 2])) for g in range(0, 8, 2)] == [1, 1, 1, 1], seed


def test_two_training_subjects_are_enough_and_sets_csv_folds_are_integers(work, tmp_path):
    """Only sub-00 (fold 1), sub-01 (fold 2) and sub-02 (fold 3) keep their stacks: fold 1 has two training
    subjects, the minimum (one of them inner validation). sets.csv lists folds as integers."""
    from raxnet.batches import run_one

    w = _drop_stacks(work, tmp_path, [_subject_name(i) for i in range(3, N_SUBJECTS)], None)
    sets = build_training_sets(_cfg(), _run_cfg(w), "axial", 1, 2)
    assert sets.subjects.values.tolist() == [["sub-00", "val", 1], ["sub-01", sets.subjects.role[1], 2],
                                             ["sub-02", sets.subjects.role[2], 3]]
    assert sorted(sets.subjects.role[1:]) == ["inner_val", "train"]
    res = run_one(_cfg(), _run_cfg(w), "axial", 1, depth=2)
    assert (Path(res["dir"]) / "sets.csv").read_text().splitlines()[1] == "sub-00,val,1"


def test_as_tf_data_serves_each_epochs_own_batches_in_order(work, folds):
    from raxnet.datasets import as_tf_data

    sets = build_training_sets(_cfg(augment=True), _run_cfg(work), "axial", fold=2, depth=2)
    ds = sets.train
    steps = len(ds)
    served = list(as_tf_data(ds, first_epoch=1, epochs=3).as_numpy_iterator())
    assert len(served) == 2 * steps
    for k, (x, y) in enumerate(served):
        ex, ey = ds.batch(k % steps, 1 + k // steps)
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
    assert not np.array_equal(served[0][0], served[steps][0])  # epoch 2 is a new draw, not epoch 1 again
    val = list(as_tf_data(sets.inner_val, parallel=2).as_numpy_iterator())
    assert len(val) == len(sets.inner_val)
    for k, (x, y) in enumerate(val):
        np.testing.assert_array_equal(x, sets.inner_val[k][0])


def test_fit_reads_as_tf_data_epoch_after_epoch(work, folds, monkeypatch):
    # Keras must keep one iterator across epochs (steps_per_epoch given): epoch 1 reads epoch 1's batches
    import keras

    from raxnet.datasets import as_tf_data

    ds = build_training_sets(_cfg(), _run_cfg(work), "axial", fold=2, depth=2).train
    seen = []
    original = type(ds).batch

    def recording(self, index, epoch):
        seen.append((int(epoch), int(index)))
        return original(self, index, epoch)

    monkeypatch.setattr(type(ds), "batch", recording)
    model = keras.Sequential([keras.Input((*ds.target_shape, 1)), keras.layers.Conv2D(1, 1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    data = as_tf_data(ds, first_epoch=0, epochs=2)
    seen.clear()  # as_tf_data reads one batch for the shapes
    model.fit(data, steps_per_epoch=len(ds), epochs=2, verbose=0, shuffle=False)
    # tf.data may run the (stateless) loads concurrently: the served order is checked above, here that
    # each (epoch, batch) was read exactly once -- a per-epoch restart would read epoch 0 twice
    assert sorted(seen) == [(e, i) for e in range(2) for i in range(len(ds))]


def test_context_serves_neighbour_slices_as_channels(work, tmp_path):
    """[arrays] context = 1: channel 1 is the 2D run's slice, channels 0 / 2 the slices before / after it
    (the stack's edge repeats), the masks are the centre slice's; augmentation changes all three alike."""
    flat = build_training_sets(_cfg(), _run_cfg(work), "axial", 1, 2)
    deep = build_training_sets(_cfg(context=1), _run_cfg(work), "axial", 1, 2)
    assert deep.input_shape == (*flat.input_shape[:2], 3)
    for ds2d, ds3 in ((flat.train, deep.train), (flat.inner_val, deep.inner_val)):
        x, y = ds2d[0]
        x3, y3 = ds3[0]
        assert x3.shape == (*x.shape[:3], 3)
        np.testing.assert_array_equal(x3[..., 1:2], x)
        np.testing.assert_array_equal(y3, y)
        r, c = x.shape[1] // 2, x.shape[2] // 2  # the pixel _decode reads
        for k, (_, s) in enumerate(_decode(x)):
            assert x3[k, r, c, 0] == x[k, r, c, 0] - (s > 0)  # the previous slice encodes one less
            assert x3[k, r, c, 2] == x[k, r, c, 0] + (s < N_SLICES - 1)
    flat_aug = build_training_sets(_cfg(augment=True), _run_cfg(work), "axial", 1, 2)
    deep_aug = build_training_sets(_cfg(augment=True, context=1), _run_cfg(work), "axial", 1, 2)
    x, y = flat_aug.train[0]
    x3, y3 = deep_aug.train[0]
    np.testing.assert_array_equal(x3[..., 1:2], x)  # the centre slice gets exactly the 2D augmentation
    np.testing.assert_array_equal(y3, y)
    import shutil

    from raxnet.batches import run_one

    w = tmp_path / "w"
    shutil.copytree(work, w)
    shutil.rmtree(w / "05_prepare_arrays", ignore_errors=True)  # what other tests wrote into the shared work
    report = run_one(_cfg(context=1), _run_cfg(w), "axial", 1, depth=2, materialise=True)
    assert report["input_shape"][-1] == 3
    assert np.load(Path(report["dir"]) / "x_epoch0.npy", mmap_mode="r").shape[-1] == 3
    assert np.load(Path(report["dir"]) / "y_epoch0.npy", mmap_mode="r").shape[-1] == 1
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ConfigError, match="arrays.context"):
            build_training_sets(_cfg(context=bad), _run_cfg(work), "axial", 1, 2)
