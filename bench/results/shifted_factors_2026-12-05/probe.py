"""Which factor of the ``shifted`` profile breaks the shipped weights at 1 mm? Leave-one-out probe.

Each variant is the ``shifted`` profile with one group of factors put back to its ``training`` range (the
lesion look as one group); ``all shifted`` and ``none shifted`` (every range the training one, through the
same code path) bracket them. Same subjects (the generator's testing stream, seed 8080, 1 mm whole-head) in
every variant; fused mask as ``raxnet predict`` makes it (bench_quality.predict_masks).

    .venv/bin/python bench/results/shifted_factors_2026-12-05/probe.py --subjects 10 --weights weights/demo

Aligned random streams (the default since 2026-12-07): the generator draws every subject from one random stream,
so a variant that consumes a different number of draws changes every later draw too -- the lesion look's soft edge
widens the box the lesion's texture is drawn over, and the training profile's blur range (0, 0) draws nothing --
and such a row would compare another bias field, gamma and noise as well. :func:`align_streams` makes the rendering
and every range draw take a fixed number of draws, so each variant changes only its own factors.
``--unaligned`` reproduces the tables of 2026-12-05 and the first re-run of 2026-12-07 (``probe.log``,
``probe_2026-12-07.log``), whose "lesion look" and "blur" rows carry that confound.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import bench_quality as BQ  # noqa: E402
from raxnet import synthetic  # noqa: E402
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402

LOOK = ("core", "texture", "texture_mm", "rim", "rim_mm", "edge_mm")
GROUPS = {"lesion look": LOOK, "gm_contrast": ("gm_contrast",), "csf_shift": ("csf_shift",), "gamma": ("gamma",),
          "noise": ("noise",), "bias": ("bias",), "blur_mm": ("blur_mm",)}


def variants() -> dict[str, dict]:
    train, shifted = synthetic.PROFILES["training"], synthetic.PROFILES["shifted"]
    bias = float(synthetic.DEFAULTS["bias"])
    as_train = {**train, "bias": ((bias, bias),)}  # training draws bias from [synthetic] bias
    out = {"all shifted": dict(shifted), "none shifted": dict(as_train)}
    for name, keys in GROUPS.items():
        out[f"{name} back to training"] = {**shifted, **{k: as_train[k] for k in keys}}
    return out


def align_streams() -> None:
    """Patch the generator (this process only) so that a variant's ranges do not move later random draws:
    the lesion is rendered from its own child stream (one draw from the subject's stream, whatever the box size)
    and every range draw takes a choice and a uniform, also from an empty interval."""
    render = synthetic.render_lesion

    def render_own_stream(t1, lesion, brain, look, spacing, rng):
        render(t1, lesion, brain, look, spacing, np.random.default_rng(int(rng.integers(2**63))))

    def draw_aligned(rng: np.random.Generator, intervals) -> float:
        lengths = np.array([hi - lo for lo, hi in intervals], dtype=float)
        weights = lengths / lengths.sum() if lengths.sum() > 0 else np.full(len(lengths), 1.0 / len(lengths))
        lo, hi = intervals[int(rng.choice(len(intervals), p=weights))]
        return float(rng.uniform(lo, hi))

    synthetic.render_lesion = render_own_stream
    synthetic.draw_from = draw_aligned


def parse_args(doc: str, switches: dict[str, str] | None = None) -> argparse.Namespace:
    """The probes' shared flags: subjects per variant, weight set, generator seed, plus a caller's on/off
    ``switches`` (flag -> help); aligns the random streams (:func:`align_streams`) unless ``--unaligned``."""
    ap = argparse.ArgumentParser(description=doc)
    for flag, text in (switches or {}).items():
        ap.add_argument(flag, action="store_true", help=text)
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--weights", default="weights/demo")
    ap.add_argument("--seed", type=int, default=8080)
    ap.add_argument("--unaligned", action="store_true", help="the generator's own streams (the confounded tables)")
    args = ap.parse_args()
    if not args.unaligned:
        align_streams()
    return args


def subject(variant: str, j: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(t1, truth, affine)`` of subject ``j`` (testing stream, 1 mm whole-head) drawn with ``variant``'s ranges."""
    t1, truth, affine, _ = subject_from(variants()[variant], j, seed)
    return t1, truth, affine


def subject_from(ranges: dict, j: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``(t1, truth, affine, info)`` of subject ``j`` (testing stream, 1 mm whole-head) drawn with ``ranges``
    (a profile: :data:`raxnet.synthetic.PROFILES`' keys)."""
    synthetic.PROFILES["probe"] = ranges
    return synthetic.generate_subject(j, seed, 1, testing=True, n_sites=BQ.N_SITES,
                                      params={"whole_head": True, "profile": "probe"})


def main() -> None:
    args = parse_args(__doc__)
    pred = Predictor(args.weights)
    for name in variants():
        rows = []
        for j in range(args.subjects):
            t1, truth, affine = subject(name, j, args.seed)
            mask = BQ.predict_masks(pred, t1, affine, f"{name}-{j}")[BQ.FUSED]
            r = evaluate(mask, truth, spacing=(1.0, 1.0, 1.0))
            rows.append((r["dice"], r["lesion_f1"]))
        d = np.array(rows)
        print(f"{name:32s} fused Dice {d[:, 0].mean():.3f} ± {d[:, 0].std(ddof=1):.3f}  lesion F1 {d[:, 1].mean():.3f}  "
              f"per subject {' '.join(f'{v:.2f}' for v in d[:, 0])}", flush=True)


if __name__ == "__main__":
    main()
