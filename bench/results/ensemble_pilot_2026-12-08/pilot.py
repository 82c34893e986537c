"""Pilot (exploratory): average two network sets' out-of-fold plane probabilities, then run stage 08's
post-processing selection (the shipped run's grid) on the average and on each set alone.

Reads the per-plane dumps of ``bench/results/size_rule_2026-12-07/dump_oof.py --per-plane`` (one folder per
set) and each run's ``08_fusion/fusion.json`` for the weighted fusion's plane weights. Paths are the scratch
paths of the 2026-12-08 run; edit SETS / W to reproduce elsewhere.

    .venv/bin/python bench/results/ensemble_pilot_2026-12-08/pilot.py S B SB
"""
import json, sys
from pathlib import Path
import numpy as np, pandas as pd
from raxnet.postprocess_selection import score_candidates, summarise_candidates, choose
from raxnet.postprocess import postprocess
from raxnet.metrics import dice, lesion_f1
PL = ["axial", "sagittal", "coronal"]
SETS = {"S": "/work/exp/oof/bb_planes", "B": "/work/exp/ens/adopt_deep", "A": "/work/exp/ens/adopt_mild"}
W = {"S": "bb", "B": "adopt_deep", "A": "adopt_mild"}
combos = sys.argv[1:] or ["S", "B", "A", "SB", "SA", "SBA"]
subs = sorted(p.stem for p in Path(SETS["S"]).glob("*.npz"))
for c in combos:
    ws = [json.load(open(f"/work/exp/{W[k]}/08_fusion/fusion.json"))["weights"] for k in c]
    w = {p: float(np.mean([x[p] for x in ws])) for p in PL}
    rows = []
    for s in subs:
        ds = [np.load(f"{SETS[k]}/{s}.npz") for k in c]
        probs = {p: np.mean([d[f"prob_{p}"].astype(np.float32) for d in ds], axis=0) for p in PL}
        truth = ds[0]["truth"]; sp = tuple(ds[0]["spacing"])
        for r in score_candidates(probs, truth, sp, methods=["mean", "vote", "weighted"],
                                  thresholds=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7], sizes_mm3=[0, 20, 50, 100, 200, 500],
                                  peaks=[0, 0.5, 0.6, 0.7, 0.8, 0.9], weights=w):
            rows.append({**r, "subject": s})
    df = pd.DataFrame(rows)
    summ = summarise_candidates(df)
    ch = choose(summ, metric="dice_lesion_f1", default_threshold=0.5, methods=["mean", "vote", "weighted"], min_gain=0.005)
    sel = df[(df.method == ch["fusion"]) & (df.threshold == ch["threshold"]) & (df.min_lesion_mm3 == ch["min_lesion_mm3"]) & (df.min_peak == ch["min_peak"])]
    ship = df[(df.method == "weighted") & (df.threshold == 0.3) & (df.min_lesion_mm3 == 50) & (df.min_peak == 0.7)]
    print(f"{c}: chosen {ch['fusion']} {ch['threshold']} size {ch['min_lesion_mm3']} peak {ch['min_peak']} score {ch['score']:.4f} "
          f"dice {sel.dice.mean():.4f} F1 {sel.lesion_f1.mean():.4f} | shipped rule dice {ship.dice.mean():.4f} F1 {ship.lesion_f1.mean():.4f}", flush=True)
    sel[["subject", "dice", "lesion_f1"]].to_csv(f"/work/exp/ens/pilot_{c}.csv", index=False)
