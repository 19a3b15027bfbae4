#!/usr/bin/env python3
"""SKAB outlier detection with cusense's default multivariate configuration.

    python benchmarks/skab/evaluate.py --data ../shared/data/skab --out benchmarks/results/skab

For every ``DIR/<sub>/<name>.csv`` with an ``anomaly`` column (SKAB layout: ``;``-separated,
``datetime`` first, then the sensor channels, then ``anomaly`` and ``changepoint``) it streams
the rows, in file order, through ``cusense.detectors.JointZ()`` (all channels, one key per
file, one configuration and its fixed threshold for every file) and writes
``OUT/<sub>/<name>.csv`` with the columns ``datetime,anomaly_score,is_anomaly``, one row per
data row, in order. Files without an ``anomaly`` column (``anomaly-free``) are scored and
written too but not counted. Then it prints the SKAB outlier metrics over the labelled files
(the first 400 rows of each are warm-up, not scored; TP/FP/FN/TN summed over all files):
F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN), MAR = FN / (FN + TP), and writes them with
the run's machine and commit to ``OUT/skab_scores.json`` and ``OUT/skab_scores.md``.

``--halves`` adds an over-fitting check: the labelled files (sorted by name) are split
alternately into two halves; the parameters (a grid of alpha, beta, gamma and freeze, the
threshold at z = freeze) with the best F1 at FAR <= 15 % on one half are applied to the other,
both ways, and the pooled held-out F1/FAR/MAR is printed and saved.

The detector never sees the row number or the time since the file began: each file is one key
of one stream, scored causally from its own earlier rows (warm-up: the first ``min_count``
rows score 0, then the baseline keeps adapting while the score stays below ``freeze``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "nab"))
WARMUP_ROWS = 400


def load(path: Path):
    df = pd.read_csv(path, sep=";")
    label = df["anomaly"].to_numpy(dtype=np.int64) if "anomaly" in df.columns else None
    channels = [c for c in df.columns if c not in ("datetime", "anomaly", "changepoint")]
    return df["datetime"], df[channels].to_numpy(dtype=np.float64), label


def score_file(values: np.ndarray, detector, backend: str) -> np.ndarray:
    import cusense

    # one key, rows in file order: timestamps are the row positions (1 s apart), so the order
    # is the file's order whatever the datetime column holds; the detector never reads them
    ts = np.arange(len(values), dtype=np.int64) * 10**9
    return cusense.detectors.score(ts, values, detector=detector, backend=backend)


def metrics(tp: int, fp: int, fn: int, tn: int) -> dict:
    return {"F1": tp / (tp + (fp + fn) / 2) if tp + fp + fn else 0.0,
            "FAR": 100.0 * fp / (fp + tn) if fp + tn else 0.0,
            "MAR": 100.0 * fn / (fn + tp) if fn + tp else 0.0,
            "TP": tp, "FP": fp, "FN": fn, "TN": tn}


def halves(labelled: dict, backend: str) -> dict:
    """Parameters chosen on one half of the labelled files, scored on the other, both ways."""
    import itertools
    import math

    import cusense

    def threshold_of(z: float) -> float:  # the score of z, a hair below it
        lp = -math.log10(math.erfc(z / math.sqrt(2)))
        return lp / (1 + lp) - 1e-12

    def counts(params, names):
        det = cusense.detectors.JointZ(**params)
        c = np.zeros(4, dtype=np.int64)
        for name in names:
            x, y = labelled[name]
            a = score_file(x, det, backend)[WARMUP_ROWS:] >= det.threshold
            t = y[WARMUP_ROWS:] == 1
            c += [(a & t).sum(), (a & ~t).sum(), (~a & t).sum(), (~a & ~t).sum()]
        return c

    grid = [dict(alpha=a, beta=b, gamma=g, freeze=f, threshold=threshold_of(f))
            for a, b, g, f in itertools.product((0.003, 0.005, 0.01), (0.1, 0.2, 0.4), (0.002, 0.01),
                                                (3.0, 4.0, 5.0))]
    names = sorted(labelled)
    pooled = np.zeros(4, dtype=np.int64)
    directions = []
    for fit, held in ((names[0::2], names[1::2]), (names[1::2], names[0::2])):
        def objective(params):
            m = metrics(*counts(params, fit).tolist())
            return m["F1"] if m["FAR"] <= 15.0 else -1.0
        best = max(grid, key=objective)
        c = counts(best, held)
        pooled += c
        directions.append({"params": best, "fit": metrics(*counts(best, fit).tolist()),
                           "held_out": metrics(*c.tolist())})
    return {"directions": directions, "pooled_held_out": metrics(*pooled.tolist())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--halves", action="store_true", help="also the half/half over-fitting check")
    args = ap.parse_args(argv)
    import cusense

    det = cusense.detectors.JointZ()
    files = sorted(p for p in args.data.glob("*/*.csv"))
    if not files:
        print(f"no <sub>/<name>.csv files under {args.data}", file=sys.stderr)
        return 2
    tp = fp = fn = tn = 0
    per_file, labelled = {}, {}
    t0 = time.perf_counter()
    for path in files:
        dt, x, y = load(path)
        s = score_file(x, det, args.backend)
        alarm = s >= det.threshold
        rel = path.relative_to(args.data)
        out = args.out / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"datetime": dt, "anomaly_score": s, "is_anomaly": alarm.astype(np.int64)}).to_csv(
            out, index=False)
        if y is None:
            continue
        labelled[str(rel)] = (x, y)
        p, t = alarm[WARMUP_ROWS:], y[WARMUP_ROWS:] == 1
        c = (int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum()))
        tp, fp, fn, tn = tp + c[0], fp + c[1], fn + c[2], tn + c[3]
        per_file[str(rel)] = metrics(*c)
    elapsed = time.perf_counter() - t0
    m = metrics(tp, fp, fn, tn)
    print(f"{len(per_file)} labelled files: F1 {m['F1']:.2f}  FAR {m['FAR']:.2f}%  MAR {m['MAR']:.2f}%"
          f"  (TP {tp} FP {fp} FN {fn} TN {tn}; {elapsed:.2f} s)")
    try:
        from evaluate import run_info  # benchmarks/nab/evaluate.py: machine, versions, commit
        run = run_info(args.backend)
    except Exception:  # pragma: no cover - informational only
        run = {}
    det_params = {k: getattr(det, k) for k in ("alpha", "beta", "gamma", "freeze", "min_count", "threshold")}
    doc = {"detector": "JointZ", "params": det_params, "metrics": m, "files": per_file, "run": run}
    half_lines = ""
    if args.halves and len(labelled) >= 2:
        hh = halves(labelled, args.backend)
        doc["halves"] = hh
        for d in hh["directions"]:
            print(f"  chosen on one half {d['params']}: fit F1 {d['fit']['F1']:.2f} FAR {d['fit']['FAR']:.2f}%, "
                  f"held-out F1 {d['held_out']['F1']:.2f} FAR {d['held_out']['FAR']:.2f}%")
        ph = hh["pooled_held_out"]
        print(f"half/half, pooled held-out: F1 {ph['F1']:.2f}  FAR {ph['FAR']:.2f}%  MAR {ph['MAR']:.2f}%")
        half_lines = (f"| half/half: parameters chosen on one half, pooled held-out | {ph['F1']:.2f} | "
                      f"{ph['FAR']:.2f} | {ph['MAR']:.2f} |\n")
    (args.out / "skab_scores.json").write_text(json.dumps(doc, indent=1))
    machine = run.get("machine", {})
    (args.out / "skab_scores.md").write_text(
        "| detector | F1 | FAR % | MAR % |\n|---|---:|---:|---:|\n"
        f"| `JointZ()` | {m['F1']:.2f} | {m['FAR']:.2f} | {m['MAR']:.2f} |\n" + half_lines + "\n"
        f"{len(per_file)} labelled files (first {WARMUP_ROWS} rows of each not scored), "
        f"TP {tp} FP {fp} FN {fn} TN {tn}; run {run.get('date_utc')}, commit "
        f"{str(run.get('commit'))[:12]}, {machine.get('cpu')} ({machine.get('logical_cpus')} logical CPUs).\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
