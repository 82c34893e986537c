"""raxnet.inference: slice-wise prediction pads, batches, crops back and restacks exactly."""

import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from raxnet.inference import model_context, model_slice_shape, predict_plane  # noqa: E402
from raxnet.planes import padded_shape, slice_shape  # noqa: E402

VOLUME_SHAPE = (5, 6, 7)


def sigmoid_model(shape2d):
    """1x1 convolution with weight 1, bias 0, sigmoid: the output is sigmoid(input) pixel by pixel."""
    inputs = keras.Input((*shape2d, 1))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="ones", bias_initializer="zeros")
    return keras.Model(inputs, conv(inputs))


@pytest.mark.parametrize("plane", ["axial", "sagittal", "coronal"])
def test_predict_plane_matches_pixelwise_model(plane):
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.1, 1.0, VOLUME_SHAPE).astype(np.float32)
    volume[0] = 0.0  # one empty sagittal slice -> skipped in the sagittal plane only
    model = sigmoid_model(padded_shape(slice_shape(VOLUME_SHAPE, plane), 2))
    probs = predict_plane(model, volume, plane, batch_size=3)
    assert probs.shape == VOLUME_SHAPE and probs.dtype == np.float32
    expected = 1 / (1 + np.exp(-volume))
    if plane == "sagittal":
        assert (probs[0] == 0).all()  # empty slices are not sent through the network
        np.testing.assert_allclose(probs[1:], expected[1:], atol=1e-6)
    else:
        # in the other planes the empty rows are part of non-empty slices: sigmoid(0) = 0.5 there
        np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_flip_tta_is_identity_for_flip_equivariant_model():
    volume = np.random.default_rng(1).uniform(0.1, 1, VOLUME_SHAPE).astype(np.float32)
    model = sigmoid_model(padded_shape(slice_shape(VOLUME_SHAPE, "axial"), 2))
    np.testing.assert_allclose(
        predict_plane(model, volume, "axial", flip_tta=True), predict_plane(model, volume, "axial"), atol=1e-6
    )


def test_predict_plane_2p5d_feeds_the_neighbour_slices_as_channels():
    """A 1x1 convolution that reads only channel 0 (the previous slice) of a 3-channel model: its output at
    slice k is sigmoid(slice k - 1), and sigmoid(slice 0) at the first slice (the stack's edge repeats)."""
    volume = np.random.default_rng(2).uniform(0.1, 1.0, VOLUME_SHAPE).astype(np.float32)
    shape2d = padded_shape(slice_shape(VOLUME_SHAPE, "axial"), 2)
    inputs = keras.Input((*shape2d, 3))
    conv = keras.layers.Conv2D(1, 1, activation="sigmoid")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.array([1.0, 0.0, 0.0], np.float32).reshape(1, 1, 3, 1), np.zeros(1, np.float32)])
    assert model_context(model) == 1
    probs = predict_plane(model, volume, "axial", batch_size=2)
    previous = np.concatenate([volume[..., :1], volume[..., :-1]], axis=2)  # axial slices run along axis 2
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-previous)), atol=1e-6)
    assert model_context(sigmoid_model((8, 8))) == 0


def test_model_slice_shape_requires_fixed_input():
    assert model_slice_shape(sigmoid_model((8, 16))) == (8, 16)
    inputs = keras.Input((None, None, 1))
    with pytest.raises(ValueError, match="fixed input size"):
        model_slice_shape(keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs)))


def test_predict_probabilities_averages_folds_and_checks_slice_size(tmp_path):
    from raxnet.errors import InputError
    from raxnet.inference import ModelCache, predict_probabilities

    volume = np.random.default_rng(2).uniform(0.1, 1, VOLUME_SHAPE).astype(np.float32)
    shape = padded_shape(slice_shape(VOLUME_SHAPE, "axial"), 2)
    a = sigmoid_model(shape)
    b = sigmoid_model(shape)
    b.layers[-1].set_weights([np.full((1, 1, 1, 1), 2.0, np.float32), np.zeros(1, np.float32)])  # sigmoid(2x)
    path = tmp_path / "b.keras"
    b.save(path)
    got = predict_probabilities(volume, {"axial": [a, path]}, cache=ModelCache(), normalised=True)
    expected = 0.5 * (1 / (1 + np.exp(-volume)) + 1 / (1 + np.exp(-2 * volume)))
    np.testing.assert_allclose(got["axial"], expected, atol=1e-6)
    small = sigmoid_model((2, 2))
    with pytest.raises(InputError, match="scan.nii: axial slices"):
        predict_probabilities(volume, {"axial": [small]}, normalised=True, source="scan.nii")
    with pytest.raises(ValueError, match="ModelCache"):
        predict_probabilities(volume, {"axial": [path]}, normalised=True)


def shift_model(shape2d):
    """Not flip-equivariant: a 3x3 convolution whose only weight 1 sits at kernel row 0, column 1, so
    out[i, j] = sigmoid(in[i - 1, j]) (zero outside the padded slice). Flipping rows (the left-right axis of
    axial and coronal slices) turns it into sigmoid(in[i + 1, j]); flipping columns changes nothing."""
    inputs = keras.Input((*shape2d, 1))
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[0, 1] = 1.0
    conv = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", use_bias=False)
    out = conv(inputs)
    conv.set_weights([kernel])
    return keras.Model(inputs, out)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("plane", ["axial", "sagittal", "coronal"])
def test_flip_tta_flips_the_left_right_axis(plane):
    """TTA = mean of the prediction and the un-flipped prediction of the left-right-flipped slices, computed
    by hand on the zero-padded slices; the sagittal plane (no in-plane left-right axis) is predicted once."""
    from raxnet.planes import pad_slices, to_slices

    rng = np.random.default_rng(3)
    volume = rng.uniform(0.5, 2.0, VOLUME_SHAPE).astype(np.float32)
    target = padded_shape(slice_shape(VOLUME_SHAPE, plane), 2)
    model = shift_model(target)
    stack = pad_slices(to_slices(volume, plane), target)  # (n, H, W), zeros around
    up = np.zeros_like(stack)
    up[:, 1:] = stack[:, :-1]  # in[i - 1, j]
    down = np.zeros_like(stack)
    down[:, :-1] = stack[:, 1:]  # in[i + 1, j]
    plain = _sigmoid(up)
    # volume axis 0 (left-right) is the row axis of axial and coronal slices
    tta = 0.5 * (_sigmoid(up) + _sigmoid(down)) if plane != "sagittal" else plain
    h, w = slice_shape(VOLUME_SHAPE, plane)
    b0, b1 = (target[0] - h) // 2, (target[1] - w) // 2
    crop = (slice(None), slice(b0, b0 + h), slice(b1, b1 + w))
    got = to_slices(predict_plane(model, volume, plane, flip_tta=True), plane)
    np.testing.assert_allclose(got, tta[crop], atol=1e-6)
    got_plain = to_slices(predict_plane(model, volume, plane), plane)
    np.testing.assert_allclose(got_plain, plain[crop], atol=1e-6)
    if plane != "sagittal":  # the two differ: a wrong flip axis would give the plain prediction back
        assert np.abs(tta - plain)[crop].max() > 0.05


def test_predict_probabilities_tta_and_normalisation_reach_the_planes():
    """``tta=True`` reaches predict_plane; a raw volume is normalised first (here: percentiles 1..n)."""
    from raxnet.inference import predict_probabilities
    from raxnet.intensity import normalise

    rng = np.random.default_rng(4)
    volume = rng.uniform(10, 500, VOLUME_SHAPE).astype(np.float32)
    model = shift_model(padded_shape(slice_shape(VOLUME_SHAPE, "axial"), 2))
    raw = predict_probabilities(volume, {"axial": [model]}, tta=True)["axial"]
    norm = normalise(volume)
    np.testing.assert_allclose(raw, predict_plane(model, norm, "axial", flip_tta=True), atol=1e-6)
    assert np.abs(raw - predict_plane(model, norm, "axial")).max() > 0.01
    with pytest.raises(ValueError, match="affine"):
        predict_probabilities(volume, {"axial": [model]}, brain_mask_mm=3.0)
    with pytest.raises(ValueError, match="no model for plane axial"):
        predict_probabilities(volume, {"axial": []}, normalised=True)


def test_model_slice_shape_of_multi_input_and_half_fixed_models():
    a, b = keras.Input((8, 16, 1)), keras.Input((4, 4, 1))
    two = keras.Model([a, b], keras.layers.Conv2D(1, 1)(a))
    assert model_slice_shape(two) == (8, 16)  # the first input is the slice
    for shape in ((8, None, 1), (None, 16, 1)):
        inputs = keras.Input(shape)
        with pytest.raises(ValueError, match=r"^plane models must have a fixed input size \(H, W, C\)$"):
            model_slice_shape(keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs)))


def test_slice_size_check_per_axis_and_model_names(tmp_path):
    """Axial slices of a 5x6x7 volume are 5x6: a 5x6 model fits exactly; 4x8 and 8x4 are too small along one
    axis each; the error names the source and the model (its path, its .name, or "model")."""
    from raxnet.errors import InputError
    from raxnet.inference import ModelCache, predict_probabilities
    from raxnet.runs import FoldModel

    volume = np.random.default_rng(5).uniform(0.1, 1, VOLUME_SHAPE).astype(np.float32)
    exact = sigmoid_model((5, 6))
    out = predict_probabilities(volume, {"axial": [exact]}, normalised=True)
    assert out["axial"].dtype == np.float32 and out["axial"].shape == VOLUME_SHAPE
    np.testing.assert_allclose(out["axial"], _sigmoid(volume), atol=1e-6)
    for shape in ((4, 8), (8, 4)):
        small = sigmoid_model(shape)
        small.name = "tiny_net"
        with pytest.raises(InputError, match=rf"^volume: axial slices \(5, 6\) are larger than the input "
                                             rf"\({shape[0]}, {shape[1]}\) of tiny_net$"):
            predict_probabilities(volume, {"axial": [small]}, normalised=True)

    class Bare:  # a model-like object without a name
        input_shape = (None, 4, 8, 1)

    with pytest.raises(InputError, match=r"of model$"):
        predict_probabilities(volume, {"axial": [Bare()]}, normalised=True)
    path = tmp_path / "small.keras"
    sigmoid_model((4, 8)).save(path)
    with pytest.raises(InputError, match=rf"of {re.escape(str(path))}$"):
        predict_probabilities(volume, {"axial": [path]}, normalised=True, cache=ModelCache())
    # a FoldModel is loaded from its path through the cache
    good = tmp_path / "good.keras"
    exact.save(good)
    fold = FoldModel(plane="axial", fold=1, path=good, best_val_loss=float("nan"))
    out = predict_probabilities(volume, {"axial": [fold]}, normalised=True, cache=ModelCache())
    np.testing.assert_allclose(out["axial"], _sigmoid(volume), atol=1e-6)
    with pytest.raises(ValueError, match="^model paths need a ModelCache$"):
        predict_probabilities(volume, {"axial": [fold]}, normalised=True)


def test_brain_mask_step_is_applied_before_prediction():
    """With brain_mask_mm and an affine, the volume goes through raxnet.brainmask.prepare (as stage 03 did)."""
    from raxnet.brainmask import prepare
    from raxnet.errors import InputError
    from raxnet.inference import predict_probabilities
    from raxnet.templates import grid

    shape, affine = grid(2)
    rng = np.random.default_rng(6)
    volume = np.zeros(shape, np.float32)
    volume[10:-10, 10:-10, 10:-10] = rng.uniform(10, 100, (shape[0] - 20, shape[1] - 20, shape[2] - 20))
    model = sigmoid_model(padded_shape(slice_shape(shape, "sagittal"), 2))
    got = predict_probabilities(volume, {"sagittal": [model]}, affine=affine, brain_mask_mm=0.0, source="s")
    expected = predict_plane(model, prepare(volume, affine, 0.0, source="s"), "sagittal")
    np.testing.assert_allclose(got["sagittal"], expected, atol=1e-6)
    plain = predict_probabilities(volume, {"sagittal": [model]}, affine=affine)  # no brain-mask step
    assert np.abs(plain["sagittal"] - got["sagittal"]).max() > 0.01
    for step in ({"brain_mask_mm": 0.0}, {"bias_correct": True}):
        with pytest.raises(ValueError, match="^the brain-mask and bias-correction steps need the volume's affine$"):
            predict_probabilities(volume, {"sagittal": [model]}, **step)
    # a scan with no signal inside the brain mask is refused, naming the source
    outside = np.zeros(shape, np.float32)
    outside[:3] = 50.0
    with pytest.raises(InputError, match="^scan.nii: no signal inside the MNI152 brain mask"):
        predict_probabilities(outside, {"sagittal": [model]}, affine=affine, brain_mask_mm=0.0, source="scan.nii")


def test_tta_is_off_by_default():
    from raxnet.inference import predict_probabilities

    volume = np.random.default_rng(7).uniform(0.5, 2.0, VOLUME_SHAPE).astype(np.float32)
    model = shift_model(padded_shape(slice_shape(VOLUME_SHAPE, "axial"), 2))
    got = predict_probabilities(volume, {"axial": [model]}, normalised=True)["axial"]
    np.testing.assert_allclose(got, predict_plane(model, volume, "axial"), atol=1e-6)
    assert np.abs(got - predict_plane(model, volume, "axial", flip_tta=True)).max() > 0.01


def test_model_cache_loads_once_without_compiling_and_forgets(tmp_path):
    import logging

    from conftest import log_records

    from raxnet.errors import StageInputError
    from raxnet.inference import ModelCache, load_model

    model = sigmoid_model((4, 4))
    model.compile(optimizer="adam", loss="mse")
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    model.save(a)
    model.save(b)
    # compile=False: the training state (optimizer) is not restored, as it is by default
    assert getattr(keras.saving.load_model(a), "optimizer", None) is not None
    assert getattr(load_model(a), "optimizer", None) is None
    cache = ModelCache()
    with log_records("raxnet.inference", logging.INFO) as records:
        first = cache.get(a)
        assert cache.get(str(a)) is first
    assert [r.getMessage() for r in records] == [f"loading {a}"]
    cache.get(b)
    cache.keep_only([b])
    assert cache.get(b) is not None and cache.get(a) is not first  # a was forgotten and loaded again
    cache.keep_only([str(a)])
    assert set(cache._models) == {a}
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a keras file")
    with pytest.raises(StageInputError, match=rf"^{re.escape(str(bad))}: cannot load model \(\w+Error: "):
        cache.get(bad)


@pytest.mark.parametrize(("n", "batch_size", "expected"), [(1, 32, 1), (3, 32, 4), (4, 32, 4), (17, 32, 32),
                                                           (32, 32, 32), (20, 24, 24), (24, 24, 24), (5, 24, 8)])
def test_padded_batch_size_is_the_next_power_of_two_up_to_the_batch_size(n, batch_size, expected):
    from raxnet.inference import padded_batch_size

    assert padded_batch_size(n, batch_size) == expected


def test_last_batches_are_padded_so_the_model_sees_few_shapes():
    """Volumes with 1..9 busy slices at batch size 8 reach the model only as batches of 1, 2, 4 or 8 slices (one
    predict trace each), and every real slice still gets its own prediction."""
    model = sigmoid_model(padded_shape(slice_shape(VOLUME_SHAPE, "sagittal"), 2))
    seen = []

    class Recording:
        def __init__(self, m):
            self.m, self.inputs, self.outputs, self.input_shape = m, m.inputs, m.outputs, m.input_shape

        def predict_on_batch(self, x):
            seen.append(x.shape[0])
            return self.m.predict_on_batch(x)

    rng = np.random.default_rng(3)
    for busy in range(1, 10):
        volume = np.zeros((9, 6, 7), np.float32)
        volume[:busy] = rng.uniform(0.1, 1.0, (busy, 6, 7))
        probs = predict_plane(Recording(model), volume, "sagittal", batch_size=8)
        np.testing.assert_allclose(probs[:busy], 1 / (1 + np.exp(-volume[:busy])), atol=1e-6)
        assert (probs[busy:] == 0).all()
    assert set(seen) == {1, 2, 4, 8}
