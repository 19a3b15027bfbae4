#!/usr/bin/env python3
"""Evaluate streaming anomaly detectors on the NAB subset.

Usage::

    python benchmarks/nab/evaluate.py --out results/nab [--data DIR] \
        [--detectors ewma_z rolling_z rolling_mad knn_discord]

Writes ``<out>/nab_scores.json`` (normalised score and threshold per detector
and profile, plus per-file counts at the standard threshold),
``<out>/nab_scores.md`` (markdown table) and ``<out>/nab_streams.png``
(a few streams with values, scores and labelled windows).

Detectors come from :data:`reference_detectors.DETECTORS`. When the optional
``cusense`` package is importable and exposes ``cusense.score(name,
timestamps, values)``, every reference name is also registered as
``cusense:<name>`` so the native implementation can be compared with the numpy
reference (the import is guarded: absence of ``cusense`` is not an error).
The data folder defaults to ``$CUSENSE_NAB_DIR`` or ``<repo>/../shared/data/nab``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nab_scoring as ns  # noqa: E402
import reference_detectors as rd  # noqa: E402

PLOT_FILES = (
    "realKnownCause/nyc_taxi.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv",
    "artificialWithAnomaly/art_daily_flatmiddle.csv",
    "realTweets/Twitter_volume_GOOG.csv",
)


def build_registry() -> Dict[str, rd.Detector]:
    """Name -> detector callable. Adds ``cusense:<name>`` entries when cusense is available."""
    reg: Dict[str, rd.Detector] = dict(rd.DETECTORS)
    try:
        import cusense  # type: ignore
    except Exception:  # optional dependency; any import failure means "not available"
        return reg
    score = getattr(cusense, "score", None)
    if callable(score):
        for name in rd.DETECTORS:
            def _fn(ts, vals, _name=name):
                return np.asarray(score(_name, ts, vals), dtype=np.float64)
            reg[f"cusense:{name}"] = _fn
    return reg


def run_detector(fn, corpus, name) -> Dict[str, np.ndarray]:
    """Apply ``fn`` to every file, check the output, print progress."""
    out = {}
    for i, (fname, (ts, vals)) in enumerate(corpus.items(), 1):
        t0 = time.perf_counter()
        s = np.asarray(fn(ts, vals), dtype=np.float64)
        if s.shape != vals.shape or not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
            raise ValueError(f"{name} on {fname}: scores must be finite, in [0,1], one per row")
        out[fname] = s
        print(f"  [{name}] {i:2d}/{len(corpus)} {fname} ({len(vals)} rows, "
              f"{time.perf_counter() - t0:.2f}s)", flush=True)
    return out


def markdown_table(results: Dict[str, Dict[str, Dict[str, float]]], profiles) -> str:
    head = "| detector | " + " | ".join(profiles) + " |"
    sep = "|---|" + "---:|" * len(profiles)
    rows = [head, sep]
    for det, res in results.items():
        cells = [f"{res[p]['score']:.1f} (thr {res[p]['threshold']:.4g})" for p in profiles]
        rows.append(f"| {det} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot_streams(path: Path, corpus, tables, detections, thresholds, files=PLOT_FILES) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [f for f in files if f in corpus]
    if not files:
        files = list(corpus)[:4]
    names = list(detections)
    fig, axes = plt.subplots(len(files), 1, figsize=(14, 3.2 * len(files)), squeeze=False)
    for ax, fname in zip(axes[:, 0], files):
        ts, vals = corpus[fname]
        t = ts.astype("datetime64[ns]")
        table = tables[fname]
        ax.plot(t, vals, color="black", lw=0.6, label="value")
        for k in np.unique(table.window_id[table.window_id >= 0]):
            idx = np.flatnonzero(table.window_id == k)
            ax.axvspan(t[idx[0]], t[idx[-1]], color="red", alpha=0.15)
        prob = np.flatnonzero(table.window_id == -2)
        if len(prob):
            ax.axvspan(t[prob[0]], t[prob[-1]], color="grey", alpha=0.15)
        ax.set_title(f"{fname} (red: labelled windows, grey: probation; "
                     f"markers: detections at the standard threshold)", fontsize=9)
        ax2 = ax.twinx()
        ax.set_zorder(ax2.get_zorder() + 1)  # values drawn above the scores
        ax.patch.set_visible(False)
        for j, det in enumerate(names):
            s = detections[det][fname]
            color = f"C{j % 10}"
            if det == names[-1]:  # only the last detector's score curve, to stay readable
                ax2.plot(t, s, lw=0.5, alpha=0.6, color=color, label=f"{det} score")
            hit = s >= thresholds[det]
            ax2.plot(t[hit], np.full(hit.sum(), 1.03 + 0.05 * j), "|", color=color, ms=7,
                     label=f"{det} detections")
        ax2.set_ylim(0, 1.05 + 0.05 * len(names))
        ax2.set_ylabel("score")
        handles2 = ax2.get_legend_handles_labels()
    fig.legend(*handles2, loc="upper right", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    registry = build_registry()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="NAB data folder (default: $CUSENSE_NAB_DIR or <repo>/../shared/data/nab)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--detectors", nargs="+", default=list(rd.DETECTORS),
                    help=f"detector names, from: {', '.join(registry)}")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = ap.parse_args(argv)

    data_dir = args.data if args.data is not None else ns.default_data_dir()
    if not ns.data_available(data_dir):
        print(f"NAB data not found in {data_dir}", file=sys.stderr)
        return 2
    unknown = [d for d in args.detectors if d not in registry]
    if unknown:
        print(f"unknown detectors {unknown}; available: {list(registry)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    windows = ns.load_windows(data_dir)
    profiles = ns.load_profiles(data_dir)
    corpus = ns.load_corpus(data_dir, sorted(windows))
    tables = ns.build_tables(corpus, windows)

    results, detections, std_thr = {}, {}, {}
    for name in args.detectors:
        t0 = time.perf_counter()
        det = run_detector(registry[name], corpus, name)
        res = ns.score_corpus(det, data_dir, profiles=profiles, tables=tables)
        thr = res["standard"][1]
        breakdown = ns.per_file_breakdown(det, tables, profiles["standard"], thr)
        results[name] = {p: {"score": float(s), "threshold": float(t)} for p, (s, t) in res.items()}
        results[name]["per_file_standard"] = json.loads(breakdown.to_json(orient="index"))
        results[name]["seconds"] = time.perf_counter() - t0
        detections[name], std_thr[name] = det, thr
        print(f"{name}: " + ", ".join(f"{p} {s:.2f}" for p, (s, _t) in res.items()), flush=True)

    profile_names = list(profiles)
    meta = {"data_dir_name": Path(data_dir).name, "files": len(corpus),
            "windows": int(sum(t.n_windows for t in tables.values())),
            "threshold_search": "exact sweep over all distinct scores (corpus-wide, per profile)"}
    (args.out / "nab_scores.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    table = markdown_table({k: {p: v[p] for p in profile_names} for k, v in results.items()},
                           profile_names)
    (args.out / "nab_scores.md").write_text(
        f"NAB normalised scores ({meta['files']} files, {meta['windows']} windows)\n\n" + table)
    print(table)
    if not args.no_plot:
        plot_streams(args.out / "nab_streams.png", corpus, tables, detections, std_thr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
