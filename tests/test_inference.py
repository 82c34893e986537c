"""raxnet.inference: slice-wise prediction pads, batches, crops back and restacks exactly."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from raxnet.inference import model_slice_shape, predict_plane  # noqa: E402
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
