"""Models: shapes, attention gates, ablation flags, FLOPs, save/reload in a fresh process, training."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers

from raxnet import losses
from raxnet.models import MODEL_NAMES, attention_layers, build_model, build_raxnet, plane_input_shape
from raxnet.models.blocks import attention_gate
from raxnet.models.flops import count_flops, layer_flops

TINY = {"width": 4, "depth": 2}
SHAPE = (32, 32, 1)


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, keras.Model]:
    return {name: build_model(name, SHAPE, **TINY) for name in MODEL_NAMES}


@pytest.fixture(scope="module")
def x_batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, *SHAPE)).astype(np.float32)


def _types(model: keras.Model) -> set[str]:
    return {type(layer).__name__ for layer in model.layers}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shape_range_dtype(tiny_models, x_batch, name):
    model = tiny_models[name]
    assert model.name == name
    y = keras.ops.convert_to_numpy(model(x_batch, training=False))
    assert y.shape == (2, 32, 32, 1)
    assert y.dtype == np.float32 and model.output.dtype == "float32"
    assert np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_gate_count_equals_depth(tiny_models):
    assert len(attention_layers(tiny_models["raxnet"])) == TINY["depth"]
    assert len(attention_layers(tiny_models["attention_unet"])) == TINY["depth"]
    deeper = build_raxnet((64, 64, 1), width=2, depth=3)
    assert len(attention_layers(deeper)) == 3
    for name in ("unet", "xception_unet"):
        assert not any("_att" in layer.name for layer in tiny_models[name].layers)
    no_gates = build_raxnet(SHAPE, width=4, depth=2, attention=False)
    assert not any("_att" in layer.name for layer in no_gates.layers)
    assert no_gates.count_params() < tiny_models["raxnet"].count_params()


def test_ablation_flags_remove_their_parts(tiny_models):
    full = tiny_models["raxnet"]
    assert "SeparableConv2D" in _types(full)
    assert any(layer.name.endswith("_proj") for layer in full.layers)
    plain = build_raxnet(SHAPE, width=4, depth=2, residual=False, separable=False)
    assert "SeparableConv2D" not in _types(plain)
    assert not any(layer.name.endswith(("_proj", "_add")) for layer in plain.layers)
    # With everything off RAX-Net is exactly the U-Net.
    unet = tiny_models["unet"]
    off = build_raxnet(SHAPE, width=4, depth=2, attention=False, residual=False, separable=False)
    assert off.count_params() == unet.count_params()
    assert [type(layer).__name__ for layer in off.layers] == [type(layer).__name__ for layer in unet.layers]


def _bilinear_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) linear interpolation weights of an n -> m resize with half-pixel centres (edges clamped):
    output i samples input position (i + 0.5) * n / m - 0.5; for 2 -> 4 the rows are [1, 0], [.75, .25],
    [.25, .75], [0, 1]."""
    w = np.zeros((m, n))
    for i in range(m):
        x = min(max((i + 0.5) * n / m - 0.5, 0.0), n - 1.0)
        lo = int(np.floor(x))
        hi = min(lo + 1, n - 1)
        w[i, lo] += 1 - (x - lo)
        w[i, hi] += x - lo
    return w


def test_attention_gate_matches_oktay_formula():
    """Coarse coefficients = sigmoid(psi(relu(W_x x (2x2 stride 2) + W_g g + b_g)) + b_psi), by hand."""
    rng = np.random.default_rng(1)
    xin, gin = keras.Input((4, 6, 3)), keras.Input((2, 3, 5))
    gated = attention_gate(xin, gin, 2, name="g")
    whole = keras.Model([xin, gin], gated)
    net = keras.Model(whole.inputs, [whole.get_layer("g_alpha").output, gated, whole.get_layer("g_sigmoid").output])
    for w in net.weights:
        w.assign(rng.normal(size=w.shape).astype(np.float32))
    x = rng.normal(size=(1, 4, 6, 3)).astype(np.float32)
    g = rng.normal(size=(1, 2, 3, 5)).astype(np.float32)
    alpha, out, coarse = (keras.ops.convert_to_numpy(t) for t in net([x, g]))

    wx = net.get_layer("g_wx").kernel.numpy()  # (2, 2, 3, 2)
    wg, bg = net.get_layer("g_wg").kernel.numpy()[0, 0], net.get_layer("g_wg").bias.numpy()
    wpsi, bpsi = net.get_layer("g_psi").kernel.numpy()[0, 0], net.get_layer("g_psi").bias.numpy()
    blocks = x[0].reshape(2, 2, 3, 2, 3).transpose(0, 2, 1, 3, 4)  # (i, j, a, b, c)
    theta = np.einsum("ijabc,abcd->ijd", blocks, wx)
    f = np.maximum(theta + g[0] @ wg + bg, 0)
    expected = 1 / (1 + np.exp(-(f @ wpsi + bpsi)))
    np.testing.assert_allclose(coarse[0], expected, rtol=1e-5, atol=1e-6)
    assert alpha.shape == (1, 4, 6, 1)  # resampled to x's grid
    # bilinearly (half-pixel centres), not by repeating each coarse value (nearest)
    up = _bilinear_matrix(2, 4) @ coarse[0, :, :, 0] @ _bilinear_matrix(3, 6).T
    np.testing.assert_allclose(alpha[0, :, :, 0], up, rtol=1e-5, atol=1e-6)
    nearest = np.repeat(np.repeat(coarse[0, :, :, 0], 2, axis=0), 2, axis=1)
    assert np.abs(alpha[0, :, :, 0] - nearest).max() > 1e-3
    np.testing.assert_allclose(out, x * alpha, rtol=1e-6, atol=1e-6)  # alpha scales every channel of x

    # The gating signal steers the coefficients; so do the skip features.
    alpha_g = keras.ops.convert_to_numpy(net([x, g + 1.0])[0])
    alpha_x = keras.ops.convert_to_numpy(net([x * -1.0, g])[0])
    assert np.abs(alpha_g - alpha).max() > 1e-3 and np.abs(alpha_x - alpha).max() > 1e-3


def test_gates_are_wired_into_the_output(x_batch):
    """Changing a gate's gating branch changes its coefficients and the prediction; closing it too."""
    model = build_raxnet(SHAPE, **TINY)
    gates = attention_layers(model)
    probe = keras.Model(model.input, [g.output for g in gates] + [model.output])

    def run():
        return [keras.ops.convert_to_numpy(t) for t in probe(x_batch, training=False)]

    base = run()
    for level, gate in enumerate(gates):
        prefix = gate.name[: -len("_alpha")]
        wg = model.get_layer(f"{prefix}_wg")
        saved = [w.numpy().copy() for w in wg.weights]
        wg.kernel.assign(wg.kernel.numpy() + 0.5)
        changed = run()
        assert np.abs(changed[level] - base[level]).max() > 1e-4, f"{prefix}: gating input ignored"
        assert np.abs(changed[-1] - base[-1]).max() > 1e-6, f"{prefix}: gate does not reach the output"
        for w, v in zip(wg.weights, saved):
            w.assign(v)
        psi = model.get_layer(f"{prefix}_psi")
        saved = [w.numpy().copy() for w in psi.weights]
        psi.kernel.assign(np.zeros_like(saved[0]))
        psi.bias.assign(np.full_like(saved[1], -30.0))  # alpha ~ 0: the gate closes the skip
        closed = run()
        assert closed[level].max() < 1e-9
        assert np.abs(closed[-1] - base[-1]).max() > 1e-6
        for w, v in zip(psi.weights, saved):
            w.assign(v)
    np.testing.assert_array_equal(run()[-1], base[-1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*depth = 4"):
        build_model("raxnet", (30, 32, 1), width=4, depth=2)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("segformer", SHAPE)
    with pytest.raises(ValueError, match="dropout"):
        build_model("unet", SHAPE, width=4, depth=2, dropout=1.5)
    assert plane_input_shape((197, 233, 189), "axial", 4) == (208, 240, 1)
    assert plane_input_shape((99, 117, 95), "sagittal", 2) == (120, 96, 1)


def test_xception_unet_matches_keras_io_example():
    """keras-io oxford-pets model at 160x160x3 has 2,058,979 params with a 3-class 3x3 softmax head
    (3*3*32*3 + 3 = 867 params); ours has a 1-channel 3x3 sigmoid head (3*3*32 + 1 = 289)."""
    model = build_model("xception_unet", (160, 160, 3), width=32, depth=4)
    assert model.count_params() == 2_058_979 - 867 + 289
    widths = [layer.filters for layer in model.layers if isinstance(layer, layers.SeparableConv2D)]
    assert widths == [64, 64, 128, 128, 256, 256]
    widths = [layer.filters for layer in model.layers if isinstance(layer, layers.Conv2DTranspose)]
    assert widths == [256, 256, 128, 128, 64, 64, 32, 32]


def test_flops_hand_computed_tiny_model():
    inp = keras.Input((4, 4, 2))
    a = layers.Conv2D(3, 3, padding="same")(inp)  # 2*9*2*3*16 + 48 bias = 1776
    a = layers.BatchNormalization()(a)  # 2*48 = 96
    a = layers.SeparableConv2D(4, 3, padding="same", use_bias=False)(a)  # 2*9*3*16 + 2*3*4*16 = 1248
    b = layers.Conv2DTranspose(2, 2, strides=2)(a)  # 2*(2*2)*4*2 per input pixel *16 + 128 bias = 1152
    c = layers.DepthwiseConv2D(3, padding="same")(b)  # 2*9*2*64 + 128 bias = 2432
    d = layers.Add()([b, c])  # 128
    d = layers.Activation("relu")(d)  # not counted
    e = layers.GlobalAveragePooling2D()(d)  # not counted
    out = layers.Dense(5)(e)  # 2*2*5 + 5 = 25
    model = keras.Model(inp, out)
    per_layer = [layer_flops(layer) for layer in model.layers]
    assert per_layer == [0, 1776, 96, 1248, 1152, 2432, 128, 0, 0, 25]
    assert count_flops(model) == 6857

    prelu = keras.Model(inp, layers.PReLU()(inp))
    with pytest.raises(NotImplementedError, match="PReLU"):
        count_flops(prelu)


def test_flops_scale_with_input_area(tiny_models):
    small = count_flops(tiny_models["raxnet"])
    big = count_flops(build_model("raxnet", (64, 64, 1), **TINY))
    assert small > 0 and big == 4 * small  # every counted layer is linear in the pixel count


def test_mixed_precision_keeps_float32_output(x_batch):
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        model = build_model("raxnet", SHAPE, **TINY)
        assert model.get_layer("enc0_conv1").compute_dtype == "float16"
        assert model.output.dtype == "float32"
        y = model(x_batch, training=False)
        assert keras.ops.convert_to_numpy(y).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_train_then_reload_in_fresh_process(tiny_models, tmp_path):
    """A few steps lower the loss; every model reloads with plain Keras, the compiled one with raxnet.losses."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.1, size=(4, *SHAPE)).astype(np.float32)
    y = np.zeros((4, *SHAPE), np.float32)
    for i in range(4):
        r, c = rng.integers(4, 20, size=2)
        y[i, r : r + 8, c : c + 8] = 1
        x[i, r : r + 8, c : c + 8] += 1.0

    keras.utils.set_random_seed(0)
    model = build_model("raxnet", SHAPE, **TINY)
    # Eager steps: tracing a train graph costs ~20 s on 2 cores; the maths is the same.
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=losses.get_loss(),
        metrics=[losses.dice_coefficient, losses.DiceMetric()],
        run_eagerly=True,
    )
    # train_on_batch reports the loss of the forward pass before that step's update.
    history = [float(model.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(8)]
    assert history[-1] < 0.85 * history[0], history

    fixed = np.random.default_rng(4).normal(size=(2, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", fixed)
    expected = {}
    for name, m in tiny_models.items():
        m.save(tmp_path / f"{name}.keras")
        expected[name] = keras.ops.convert_to_numpy(m(fixed, training=False))
    model.save(tmp_path / "compiled.keras")
    expected["compiled"] = keras.ops.convert_to_numpy(model(fixed, training=False))

    script = textwrap.dedent(
        f"""
        import sys, numpy as np, keras
        d = {str(tmp_path)!r}
        x = np.load(d + "/x.npy")
        for name in {list(MODEL_NAMES)!r}:
            m = keras.saving.load_model(d + "/" + name + ".keras")
            np.save(d + "/" + name + "_out.npy", np.asarray(m(x, training=False)))
        assert "raxnet.losses" not in sys.modules
        import raxnet.losses
        m = keras.saving.load_model(d + "/compiled.keras")
        assert type(m.loss).__name__ == "TverskyFocalLoss", m.loss
        np.save(d + "/compiled_out.npy", np.asarray(m(x, training=False)))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, want in expected.items():
        got = np.load(tmp_path / f"{name}_out.npy")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)


def test_stage06_report(tmp_path):
    """models.csv: one row per model and plane, input size from 01_dataset/subjects.csv, counts match."""
    import pandas as pd

    from raxnet.errors import ConfigError, StageInputError
    from raxnet.model_report import main, run

    work = tmp_path / "work"
    (work / "01_dataset").mkdir(parents=True)
    pd.DataFrame({"subject": ["a", "b"], "shape": ["20x30x13", "20x30x13"]}).to_csv(
        work / "01_dataset" / "subjects.csv", index=False
    )
    cfg = {"model": {"width": 2, "depth": 2}}
    out = run(cfg, {"work_dir": str(work)}, planes="axial,sagittal", models="raxnet,unet")
    table = pd.read_csv(out["models_csv"])
    assert list(table.columns) == ["model", "plane", "params", "flops_per_slice", "input_shape"]
    assert len(table) == 4
    shapes = dict(zip(table["plane"] + "/" + table["model"], table["input_shape"]))
    # slices: axial 20x30 -> 20x32, sagittal 30x13 -> 32x16 (multiples of 2**depth = 4)
    assert shapes["axial/raxnet"] == shapes["axial/unet"] == "20x32x1"
    assert shapes["sagittal/unet"] == shapes["sagittal/raxnet"] == "32x16x1"
    ref = build_model("unet", (20, 32, 1), width=2, depth=2)
    row = table[(table["model"] == "unet") & (table["plane"] == "axial")].iloc[0]
    assert row["params"] == ref.count_params() and row["flops_per_slice"] == count_flops(ref)
    text = (work / "06_model" / "summary.txt").read_text()
    assert text.count("=== ") == 4 and "Total params" in text

    (work / "01_dataset" / "subjects.csv").write_text("subject,shape\na,20x30x13\nb,21x30x13\n")
    with pytest.raises(StageInputError, match="different grids"):
        run(cfg, {"work_dir": str(work)}, planes="axial", models="unet")
    with pytest.raises(ConfigError, match="unknown model"):
        main(["--work-dir", str(work), "--models", "resnet"])


def test_stage06_needs_a_grid(tmp_path):
    """Without stage 01's subjects.csv or --shape, stage 06 refuses (no silent 1 mm guess) and leaves no folder."""
    from raxnet.errors import StageInputError
    from raxnet.model_report import main, volume_shape

    with pytest.raises(StageInputError, match="--shape"):
        main(["--work-dir", str(tmp_path), "--models", "unet"])
    assert not (tmp_path / "06_model").exists()
    assert volume_shape(tmp_path, (20, 30, 13)) == (20, 30, 13)
