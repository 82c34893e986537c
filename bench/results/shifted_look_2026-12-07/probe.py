"""Which part of the shifted *lesion look* breaks the shipped weights? Leave-one-out within the look.

The factor probe (``../shifted_factors_2026-12-05/probe.py``) treats the lesion look (core level, texture,
rim, soft edge) as one group. Here every variant is the ``shifted`` profile with one part of the look put back
to its ``training`` range, plus the shifted core split into its two intervals (darker than CSF; 62-72 % of the
way to grey matter). Same subjects in every variant (generator testing stream, 1 mm whole-head, a seed never
trained or selected on); fused mask as ``raxnet predict`` makes it. With ``--add-one`` the variants are the
other way round: every range the training one, with one part of the look (or one core interval) shifted.
The generator's random streams are aligned as in the factor probe (``align_streams``; ``--unaligned`` turns it
off), so that a variant changes only its own factors.

    .venv/bin/python bench/results/shifted_look_2026-12-07/probe.py --subjects 12 --seed 6262 --weights weights/demo
    .venv/bin/python bench/results/shifted_look_2026-12-07/probe.py --subjects 12 --seed 6262 --weights weights/demo --add-one
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2]))
import bench_quality as BQ  # noqa: E402
from raxnet import synthetic  # noqa: E402
from raxnet.metrics import evaluate  # noqa: E402
from raxnet.predict import Predictor  # noqa: E402

# the factor probe (its flags and its "none shifted" ranges), loaded by path: both scripts are called probe.py
_spec = importlib.util.spec_from_file_location("factor_probe", HERE.parents[1] / "shifted_factors_2026-12-05" / "probe.py")
factors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(factors)

PARTS = {"core": ("core",), "texture": ("texture", "texture_mm"), "rim": ("rim", "rim_mm"), "edge": ("edge_mm",)}


def variants() -> dict[str, dict]:
    shifted, as_train = synthetic.PROFILES["shifted"], factors.variants()["none shifted"]
    out = {"all shifted": dict(shifted), "none shifted": dict(as_train),
           "lesion look back to training": {**shifted, **{k: as_train[k] for k in factors.LOOK}}}
    for name, keys in PARTS.items():
        out[f"{name} back to training"] = {**shifted, **{k: as_train[k] for k in keys}}
    dark, grey = shifted["core"]
    out["core darker than CSF only"] = {**shifted, "core": (dark,)}
    out["core 62-72 % to GM only"] = {**shifted, "core": (grey,)}
    return out


def add_one_variants() -> dict[str, dict]:
    shifted, as_train = synthetic.PROFILES["shifted"], factors.variants()["none shifted"]
    out = {"none shifted": dict(as_train)}
    for name, keys in PARTS.items():
        if name == "core":  # its two intervals apart, below
            continue
        out[f"only {name} shifted"] = {**as_train, **{k: shifted[k] for k in keys}}
    dark, grey = shifted["core"]
    out["only core shifted, darker than CSF"] = {**as_train, "core": (dark,)}
    out["only core shifted, 62-72 % to GM"] = {**as_train, "core": (grey,)}
    out["only lesion look shifted"] = {**as_train, **{k: shifted[k] for k in factors.LOOK}}
    return out


def main() -> None:
    args = factors.parse_args(__doc__, {"--add-one": "training ranges with one part of the look shifted"})
    pred = Predictor(args.weights)
    for name, ranges in (add_one_variants() if args.add_one else variants()).items():
        rows = []
        for j in range(args.subjects):
            t1, truth, affine, info = factors.subject_from(ranges, j, args.seed)
            mask = BQ.predict_masks(pred, t1, affine, f"{name}-{j}")[BQ.FUSED]
            r = evaluate(mask, truth, spacing=(1.0, 1.0, 1.0))
            rows.append((r["dice"], r["lesion_f1"], info["lesion_mm3"] / 1000, info["lesion_core"]))
        d = np.array(rows)
        print(f"{name:30s} fused Dice {d[:, 0].mean():.3f} ± {d[:, 0].std(ddof=1):.3f}  lesion F1 {d[:, 1].mean():.3f}  "
              f"per subject {' '.join(f'{v:.2f}' for v in d[:, 0])}", flush=True)
        if name in ("all shifted", "only lesion look shifted"):
            print(f"{'  lesion mL':30s} {' '.join(f'{v:.2f}' for v in d[:, 2])}", flush=True)
            print(f"{'  core (0 CSF, 1 GM)':30s} {' '.join(f'{v:.2f}' for v in d[:, 3])}", flush=True)


if __name__ == "__main__":
    main()
