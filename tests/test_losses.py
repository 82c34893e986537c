"""Losses and the Dice metric: hand-computed values, perfect/monotone/empty behaviour, serialisation."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from raxnet import losses
from raxnet.losses import LOSS_NAMES, get_loss

# 2x2 hand example: one lesion pixel, predicted 0.5 there and 0.5 on one background pixel.
T22 = np.array([[1, 0], [0, 0]], np.float32).reshape(1, 2, 2, 1)
P22 = np.array([[0.5, 0.5], [0, 0]], np.float32).reshape(1, 2, 2, 1)
LN2 = math.log(2.0)
# TP = 0.5, FP = 0.5, FN = 0.5, sum t = 1, sum p = 1, smooth = 1.
DICE_22 = 1 - (2 * 0.5 + 1) / (1 + 1 + 1)  # 1/3
TVERSKY_22 = 1 - (0.5 + 1) / (0.5 + 0.3 * 0.5 + 0.7 * 0.5 + 1)  # 0.25
FOCAL_22 = (0.8 * 0.25 * LN2 + 0.2 * 0.25 * LN2) / 4  # lesion pixel + false-positive pixel, mean of 4
BCE_22 = (LN2 + LN2) / 4
EXPECTED_22 = {
    "dice": DICE_22,
    "tversky": TVERSKY_22,
    "focal": FOCAL_22,
    "tversky_focal": TVERSKY_22 + FOCAL_22,
    "focal_tversky": TVERSKY_22**0.75,
    "bce_dice": BCE_22 + DICE_22,
    "tversky_focal_slice": TVERSKY_22 + FOCAL_22,  # one slice, with lesion: per slice = over the batch
}


def _value(loss, t, p) -> float:
    return float(loss(tf.constant(t), tf.constant(p)))


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    rng = np.random.default_rng(0)
    m = np.zeros((3, 16, 16, 1), np.float32)
    m[0, 4:9, 5:11] = 1
    m[2, 10:14, 2:6] = 1
    m[1] = rng.random((16, 16, 1)) > 0.9
    return m


def test_names_and_default():
    assert set(LOSS_NAMES) == set(EXPECTED_22)
    assert losses.DEFAULT_LOSS == "tversky_focal"
    assert isinstance(get_loss(), losses.TverskyFocalLoss)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        get_loss("nope")


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_known_value_2x2(name):
    assert _value(get_loss(name), T22, P22) == pytest.approx(EXPECTED_22[name], abs=1e-6)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_perfect_prediction_is_zero(name, mask):
    assert 0 <= _value(get_loss(name), mask, mask) <= 1e-6


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_monotone_in_prediction_quality(name, mask):
    loss = get_loss(name)
    values = [_value(loss, mask, mask)]
    for confidence in (0.9, 0.7, 0.55, 0.5, 0.3):
        pred = np.where(mask > 0, confidence, 1 - confidence).astype(np.float32)
        values.append(_value(loss, mask, pred))
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_empty_masks_are_finite(name):
    empty = np.zeros((2, 8, 8, 1), np.float32)
    assert 0 <= _value(get_loss(name), empty, empty) <= 1e-6
    wrong = _value(get_loss(name), empty, np.full_like(empty, 0.3))
    assert np.isfinite(wrong) and wrong > 1e-3


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradient_finite_at_perfect_and_empty(name, mask):
    loss = get_loss(name)
    for t in (mask, np.zeros_like(mask)):
        p = tf.Variable(t.copy())
        with tf.GradientTape() as tape:
            value = loss(tf.constant(t), p)
        grad = tape.gradient(value, p).numpy()
        assert np.isfinite(grad).all()


def test_reduction_is_global_over_the_batch(mask):
    """One scalar from sums over the whole batch, not the mean of per-slice losses."""
    loss = get_loss("dice")
    pred = np.where(mask > 0, 0.8, 0.1).astype(np.float32)
    batch = _value(loss, mask, pred)
    flat = _value(loss, mask.reshape(1, -1, 1, 1), pred.reshape(1, -1, 1, 1))
    per_slice = np.mean([_value(loss, mask[i : i + 1], pred[i : i + 1]) for i in range(len(mask))])
    assert batch == pytest.approx(flat, abs=1e-6)
    assert abs(batch - per_slice) > 1e-3


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_serialisation_round_trip(name):
    loss = get_loss(name)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is type(loss)
    assert again.get_config() == loss.get_config()
    assert _value(again, T22, P22) == pytest.approx(_value(loss, T22, P22), abs=1e-7)


def test_parameters_are_used_and_serialised():
    fn_heavy = get_loss("tversky", alpha=0.1, beta=0.9)
    assert fn_heavy.get_config()["beta"] == 0.9
    # TP 0.5, FP 0.5, FN 0.5: 1 - 1.5 / (0.5 + 0.05 + 0.45 + 1) = 0.25 as well; use a prediction with FN only.
    p = np.array([[0.25, 0], [0, 0]], np.float32).reshape(1, 2, 2, 1)  # TP .25, FN .75, FP 0
    assert _value(fn_heavy, T22, p) == pytest.approx(1 - 1.25 / (0.25 + 0.9 * 0.75 + 1), abs=1e-6)
    assert _value(get_loss("tversky"), T22, p) == pytest.approx(1 - 1.25 / (0.25 + 0.7 * 0.75 + 1), abs=1e-6)
    with pytest.raises(TypeError, match="unexpected"):
        get_loss("dice", alpha=0.5)


def test_dice_coefficient_and_metric():
    # Hard threshold 0.5, the package's rule p >= t: the two 0.5 predictions are lesion -> TP 1, FP 1.
    assert float(losses.dice_coefficient(T22, P22)) == pytest.approx(3 / 4)  # (2 + 1) / (1 + 2 + 1)
    just_below = np.nextafter(np.float32(0.5), np.float32(0)) * (P22 > 0)  # -> TP 0, FN 1
    assert float(losses.dice_coefficient(T22, just_below)) == pytest.approx(1 / 2)  # (0 + 1) / (1 + 0 + 1)
    p = np.array([[0.9, 0.6], [0.2, 0]], np.float32).reshape(1, 2, 2, 1)  # TP 1, FP 1
    assert float(losses.dice_coefficient(T22, p)) == pytest.approx(3 / 4)  # (2 + 1) / (1 + 2 + 1)

    metric = losses.DiceMetric()
    assert float(metric.result()) == 1.0  # nothing seen yet
    metric.update_state(T22, p)  # TP 1, FP 1
    metric.update_state(np.zeros_like(T22), np.zeros_like(p))  # an empty batch changes nothing
    metric.update_state(T22, np.zeros_like(p))  # FN 1
    assert float(metric.result()) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    metric.reset_state()
    assert float(metric.result()) == 1.0
    metric.update_state(T22, P22)  # p = 0.5 counts as lesion (>=): TP 1, FP 1
    assert float(metric.result()) == pytest.approx(2 / 3)
    metric.reset_state()
    again = losses.DiceMetric.from_config(metric.get_config())
    assert again.threshold == 0.5 and again.name == "dice"


# Second hand example with FP != FN (issue 14): alpha and beta swapped give a different value.
# One lesion pixel predicted 0.5, two background pixels predicted 0.5, one 0: TP 0.5, FP 1.0, FN 0.5.
T_FP = np.array([[1, 0], [0, 0]], np.float32).reshape(1, 2, 2, 1)
P_FP = np.array([[0.5, 0.5], [0.5, 0]], np.float32).reshape(1, 2, 2, 1)
TVERSKY_FP = 1 - (0.5 + 1) / (0.5 + 0.3 * 1.0 + 0.7 * 0.5 + 1)  # 1 - 1.5 / 2.15; swapped: 1 - 1.5 / 2.35
DICE_FP = 1 - (2 * 0.5 + 1) / (1 + 1.5 + 1)
FOCAL_FP = (0.8 * 0.25 * LN2 + 2 * 0.2 * 0.25 * LN2) / 4  # the pixel predicted 0 adds ~0
EXPECTED_FP = {
    "dice": DICE_FP,
    "tversky": TVERSKY_FP,
    "focal": FOCAL_FP,
    "tversky_focal": TVERSKY_FP + FOCAL_FP,
    "focal_tversky": TVERSKY_FP**0.75,
    "bce_dice": 3 * LN2 / 4 + DICE_FP,
    "tversky_focal_slice": TVERSKY_FP + FOCAL_FP,
}


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_known_value_fp_differs_from_fn(name):
    assert _value(get_loss(name), T_FP, P_FP) == pytest.approx(EXPECTED_FP[name], abs=1e-6)


def test_tversky_alpha_weights_false_positives_beta_false_negatives():
    swapped = 1 - 1.5 / (0.5 + 0.7 * 1.0 + 0.3 * 0.5 + 1)
    assert abs(swapped - TVERSKY_FP) > 0.02
    for name in ("tversky", "tversky_focal", "focal_tversky"):
        cfg = get_loss(name).get_config()
        assert (cfg["alpha"], cfg["beta"], cfg["smooth"]) == (0.3, 0.7, 1.0), name
    assert float(losses.tversky_index(tf.constant(T_FP), tf.constant(P_FP))) == pytest.approx(1.5 / 2.15, abs=1e-6)
    assert float(losses.tversky_index(tf.constant(T_FP), tf.constant(P_FP), 0.7, 0.3)) == pytest.approx(
        1 - swapped, abs=1e-6)
    cfg = get_loss("tversky_focal").get_config()
    assert (cfg["focal_alpha"], cfg["focal_gamma"]) == (0.8, 2.0)
    assert get_loss("focal_tversky").get_config()["gamma"] == 0.75
    assert get_loss("focal").get_config()["alpha"] == 0.8 and get_loss("focal").get_config()["gamma"] == 2.0
    assert float(losses.binary_focal(tf.constant(T_FP), tf.constant(P_FP))) == pytest.approx(FOCAL_FP, abs=1e-6)
    assert float(losses.dice_index(tf.constant(T_FP), tf.constant(P_FP))) == pytest.approx(1 - DICE_FP, abs=1e-6)


# Every parameter reaches the value (T_FP / P_FP: TP 0.5, FP 1.0, FN 0.5, sum t 1, sum p 1.5).
_FOCAL_A5_G1 = (0.5 * 0.5 * LN2 + 2 * 0.5 * 0.5 * LN2) / 4  # alpha 0.5, gamma 1
PARAM_CASES = [
    ("dice", {"smooth": 0.5}, 1 - (1.0 + 0.5) / (1 + 1.5 + 0.5)),
    ("tversky", {"alpha": 0.5, "beta": 0.2, "smooth": 0.5}, 1 - 1.0 / (0.5 + 0.5 + 0.1 + 0.5)),
    ("focal", {"alpha": 0.5, "gamma": 1.0}, _FOCAL_A5_G1),
    ("tversky_focal", {"alpha": 0.5, "beta": 0.2, "smooth": 0.5, "focal_alpha": 0.5, "focal_gamma": 1.0},
     1 - 1.0 / 1.6 + _FOCAL_A5_G1),
    ("focal_tversky", {"alpha": 0.5, "beta": 0.2, "smooth": 0.5, "gamma": 1.0}, 1 - 1.0 / 1.6),
    ("bce_dice", {"smooth": 0.5}, 3 * LN2 / 4 + 1 - 1.5 / 3.0),
    ("tversky_focal_slice", {"alpha": 0.5, "beta": 0.2, "smooth": 0.5, "focal_alpha": 0.5, "focal_gamma": 1.0,
                             "slice_weight": 0.25}, 1 - 1.0 / 1.6 + _FOCAL_A5_G1),
]


@pytest.mark.parametrize("name,params,expected", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_every_parameter_reaches_the_value(name, params, expected):
    loss = get_loss(name, **params)
    assert _value(loss, T_FP, P_FP) == pytest.approx(expected, abs=1e-6)
    assert {k: loss.get_config()[k] for k in params} == params
    assert loss.name == name


def test_dice_metric_state_names_and_dtype():
    metric = losses.DiceMetric(name="val_dice", threshold=0.3, dtype="float64")
    assert [v.path.split("/")[-1] for v in metric.variables] == ["tp", "fp", "fn"]
    assert metric.dtype == "float64" and metric.name == "val_dice"
    metric.update_state(T_FP, P_FP)  # threshold 0.3: TP 1, FP 2
    assert float(metric.result()) == pytest.approx(2 / (2 + 2))
    assert metric.get_config() == {"name": "val_dice", "threshold": 0.3, "dtype": "float64"}


def test_dice_metric_hand_counts_and_messages():
    metric = losses.DiceMetric()
    one_fp = np.zeros((1, 2, 2, 1), np.float32)
    metric.update_state(np.zeros_like(one_fp), one_fp + np.array([0.9, 0, 0, 0], np.float32).reshape(1, 2, 2, 1))
    assert float(metric.result()) == 0.0  # one false positive, nothing true: Dice 0, not the empty-case 1
    metric.reset_state()
    t = np.array([1, 1, 0, 0], np.float32).reshape(1, 2, 2, 1)
    metric.update_state(t, np.array([0.9, 0.8, 0.7, 0], np.float32).reshape(1, 2, 2, 1))  # TP 2, FP 1
    assert float(metric.result()) == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match=r"^unknown loss 'nope'; expected one of dice, tversky, focal, "
                                         r"tversky_focal, focal_tversky, bce_dice, tversky_focal_slice$"):
        get_loss("nope")
    with pytest.raises(TypeError, match=r"^DiceLoss: unexpected arguments \['alpha'\]$"):
        get_loss("dice", alpha=0.5)


# Two slices: A all lesion (4 px) predicted 1, B one lesion pixel predicted 0 (3 background px predicted 0).
T_AB = np.array([[[1, 1], [1, 1]], [[1, 0], [0, 0]]], np.float32).reshape(2, 2, 2, 1)
P_AB = np.array([[[1, 1], [1, 1]], [[0, 0], [0, 0]]], np.float32).reshape(2, 2, 2, 1)


def test_slice_tversky_weighs_each_lesion_slice_the_same():
    whole = 1 - 5 / 5.7  # over the batch: TP 4, FN 1 -> the missed small lesion costs 0.12
    per_slice = (0 + (1 - 1 / 1.7)) / 2  # A perfect (0), B missed (1 - 1/1.7): 0.21
    assert float(losses.slice_tversky_loss(tf.constant(T_AB), tf.constant(P_AB))) == pytest.approx(per_slice, abs=1e-6)
    gap = _value(get_loss("tversky_focal_slice"), T_AB, P_AB) - _value(get_loss("tversky_focal"), T_AB, P_AB)
    assert gap == pytest.approx(0.5 * (per_slice - whole), abs=1e-5)  # the focal terms are the same
    empty = np.zeros_like(T_AB)  # no lesion slice: the batch's own index, FP 4 on slice A
    assert float(losses.slice_tversky_loss(tf.constant(empty), tf.constant(P_AB))) == pytest.approx(
        1 - 1 / (0.3 * 4 + 1), abs=1e-6)
    one_lesion_slice = T_AB.copy()
    one_lesion_slice[0] = 0  # slice A lesion-free, its 4 false positives do not enter the per-slice mean
    assert float(losses.slice_tversky_loss(tf.constant(one_lesion_slice), tf.constant(P_AB))) == pytest.approx(
        1 - 1 / 1.7, abs=1e-6)
