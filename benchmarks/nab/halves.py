"""Over-fitting guard for the NAB evaluation (``evaluate.py --halves``).

The dev files are split into two halves (sorted by name, alternately: every category lands in
both). For each profile, every parameter of a small grid *and* the threshold are chosen on one
half (the best normalised score there, exact threshold sweep) and applied unchanged to the
other half, both ways. The report gives the score of each held-out half beside the score of the
detector's default configuration on all the dev files, and whether both stay within 5 points.
"""
from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

import nab_scoring as ns

# AnomalyLikelihood's default configuration, flat (its KnnDiscord base's parameters included).
_LIKELIHOOD = dict(L=4, H=3000, min_candidates=50, tod_weight=0.02, scale=1.0, short_window=10,
                   long_window=4000, reestimate=100, learn=150, warmup=300, rest=200, spatial=0.05)

# Parameter grids searched on a half (the default configuration is always one of them).
GRIDS: Dict[str, List[dict]] = {
    "anomaly_likelihood": [dict(_LIKELIHOOD, tod_weight=w, rest=r, long_window=lw)
                           for w, r, lw in itertools.product((0.0, 0.01, 0.02), (100, 200, 400),
                                                             (4000, 8600))],
    "multiscale_z": [dict(alpha=a, trend=0.01, beta=b, gamma=g, clip=4.0, min_count=30, K=k)
                     for a, b, g, k in itertools.product((0.02, 0.05, 0.1), (0.3,), (0.002, 0.01),
                                                         (150, 500, 1000))],
}


def split(files: Sequence[str]) -> Tuple[List[str], List[str]]:
    s = sorted(files)
    return s[0::2], s[1::2]


def score_at(detections: Mapping[str, np.ndarray], tables, files: Sequence[str], profile,
             threshold: float) -> float:
    """Normalised NAB score of ``files`` at a fixed threshold."""
    raw = sum(ns.score_file_at_threshold(detections[f], tables[f], profile, threshold)["score"]
              for f in files)
    null, perfect = ns.null_and_perfect([tables[f] for f in files], profile)
    return ns.normalise(raw, null, perfect)


def half_half(score_config: Callable[[dict], Dict[str, np.ndarray]], grid: List[dict],
              tables, profiles, full: Mapping[str, float]) -> dict:
    """``score_config(params) -> {file: scores}``; ``full``: the default's score per profile on
    all files. Returns, per profile, both directions with the chosen parameters and threshold."""
    files = sorted(tables)
    halves = split(files)
    runs = [(p, score_config(p)) for p in grid]
    out = {}
    for pname, prof in profiles.items():
        res = {"full_dev_default": full[pname], "directions": []}
        for fit, held in (halves, halves[::-1]):
            best = None
            for params, det in runs:
                thr, raw = ns.best_threshold([(det[f], tables[f]) for f in fit], prof)
                null, perfect = ns.null_and_perfect([tables[f] for f in fit], prof)
                fit_score = ns.normalise(raw, null, perfect)
                if best is None or fit_score > best[0]:
                    best = (fit_score, params, thr, det)
            fit_score, params, thr, det = best
            res["directions"].append({
                "fit_files": len(fit), "held_out_files": len(held), "params": params,
                "threshold": thr, "fit_score": fit_score,
                "held_out_score": score_at(det, tables, held, prof, thr)})
        res["within_5_points"] = all(abs(d["held_out_score"] - full[pname]) <= 5.0
                                     for d in res["directions"])
        out[pname] = res
    return out


def markdown(name: str, result: dict) -> List[str]:
    lines = [f"Half/half guard for `{name}` (parameters and threshold chosen on one half, applied "
             "to the other):", "",
             "| profile | all dev files (default config) | half A -> B | half B -> A | within 5 points |",
             "|---|---:|---:|---:|---|"]
    for pname, r in result.items():
        d = r["directions"]
        lines.append(f"| {pname} | {r['full_dev_default']:.1f} | {d[0]['held_out_score']:.1f} | "
                     f"{d[1]['held_out_score']:.1f} | {'yes' if r['within_5_points'] else 'no'} |")
    lines.append("")
    for pname, r in result.items():
        for tag, d in zip(("A -> B", "B -> A"), r["directions"]):
            lines.append(f"- {pname}, {tag}: fit score {d['fit_score']:.1f}, threshold "
                         f"{d['threshold']:.6g}, params {d['params']}")
    lines.append("")
    return lines
