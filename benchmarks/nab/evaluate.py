#!/usr/bin/env python3
"""Evaluate streaming anomaly detectors on the NAB subset.

One command evaluates the native cusense detectors (and checks them against the
numpy references)::

    python benchmarks/nab/evaluate.py --detectors cusense --out benchmarks/results/nab

(options: ``--backend cpu|cuda|auto``, ``--data DIR``, ``--no-check``, ``--no-plot``,
``--halves`` for the over-fitting guard of ``halves.py``).

Detector names:

* ``ewma_z``, ``rolling_z``, ``rolling_mad``, ``knn_discord``, ``multiscale_z``,
  ``knn_discord_tod``, ``anomaly_likelihood``: the numpy references of
  :data:`reference_detectors.DETECTORS` (``references`` selects them all; the default);
* ``cusense-<name>`` for each of them but ``knn_discord_tod``: the same configuration
  (:data:`CUSENSE_CONFIGS`) run through
  ``cusense.score(ts, values, detector=cusense.detectors.X(...), backend=...)``
  (``cusense`` selects them all; needs the ``cusense`` package installed).

Every ``cusense-<name>`` run is checked against the ``<name>`` reference on every
file (unless ``--no-check``): the largest ``|cusense - reference|`` per file is
shown in the progress line, and the run reports (and records in the JSON)
whether all scores agree within ``--tol`` (1e-9), together with the NAB scores of
the reference detections. Exit status 1 when a check fails.

Writes ``<out>/nab_scores.json`` (normalised score and threshold per detector
and profile, per-file counts at the standard threshold, timings, the check, and
machine / commit / date), ``<out>/nab_scores.md`` (markdown table) and
``<out>/nab_streams.png`` (a few streams with values, the last detector's score,
detections at the standard threshold and labelled windows).
The data folder defaults to ``$CUSENSE_NAB_DIR`` or ``<repo>/../shared/data/nab``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nab_scoring as ns  # noqa: E402
import reference_detectors as rd  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CUSENSE_PREFIX = "cusense-"

PLOT_FILES = (
    "realKnownCause/nyc_taxi.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_ac20cd.csv",
    "artificialWithAnomaly/art_daily_flatmiddle.csv",
    "realTweets/Twitter_volume_GOOG.csv",
)

# cusense.detectors class and parameters giving the same numbers as each reference
# (the reference functions' defaults; the threshold does not change the scores).
CUSENSE_CONFIGS = {
    "ewma_z": ("EWMA", {"alpha": 0.05, "min_count": 1}),
    "rolling_z": ("RollingZ", {"window": 100, "min_count": 2}),
    "rolling_mad": ("RollingMAD", {"window": 100, "min_count": 2}),
    "knn_discord": ("KnnDiscord", {"L": 4, "H": 3000, "min_candidates": 50, "H2": 500, "K": 50,
                                   "min_count": 250}),
    "multiscale_z": ("MultiScaleZ", {"alpha": 0.05, "trend": 0.01, "beta": 0.3, "gamma": 0.01,
                                     "clip": 4.0, "min_count": 30, "K": 500}),
    # AnomalyLikelihood(base=KnnDiscord(L, H, min_candidates, tod_weight), the others)
    "anomaly_likelihood": ("AnomalyLikelihood", {"L": 4, "H": 3000, "min_candidates": 50,
                                                 "tod_weight": 0.02, "scale": 1.0,
                                                 "short_window": 10, "long_window": 4000,
                                                 "reestimate": 100, "learn": 150, "warmup": 300,
                                                 "rest": 200, "spatial": 0.05}),
}
KNN_BASE_PARAMS = ("L", "H", "min_candidates", "tod_weight")


def build_cusense(name: str, params: dict):
    """The cusense.detectors object of configuration ``name`` with ``params`` (flat: a
    likelihood's KnnDiscord base parameters are among them)."""
    import cusense

    cls = CUSENSE_CONFIGS[name][0]
    if cls == "AnomalyLikelihood":
        p = dict(params)
        base = cusense.detectors.KnnDiscord(**{k: p.pop(k) for k in KNN_BASE_PARAMS if k in p})
        return cusense.detectors.AnomalyLikelihood(base=base, **p)
    return getattr(cusense.detectors, cls)(**params)


def cusense_detector(name: str, backend: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(ts, values)`` scoring one series with the cusense port of reference ``name``."""
    import cusense  # imported here: cusense is optional for the reference runs

    cls, params = CUSENSE_CONFIGS[name]
    det = build_cusense(name, params)

    def fn(ts, vals):
        return np.asarray(cusense.score(ts, vals, detector=det, backend=backend), dtype=np.float64)

    fn.config = f"cusense.detectors.{cls}(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")"
    return fn


def gate_ties(values: np.ndarray, tol: float):
    """Reference ``knn_discord`` scores and the rows where its gate is a tie within ``tol``.

    The last stage of ``knn_discord`` keeps a calibrated score ``s_t`` only when
    ``s_t > max(s[t-K .. t-1])`` (strictly). Where the two sides are equal in exact
    arithmetic (repeated subsequences give equal distances), the last bit of rounding
    decides between ``s_t`` and 0, so a correct port can differ from the reference by
    ``s_t`` there. Returns ``(scores, ungated s, tie mask)``.
    """
    import inspect

    K = inspect.signature(rd.knn_discord).parameters["K"].default
    H2 = inspect.signature(rd.knn_discord).parameters["H2"].default
    s = rd.ratio_to_recent_max(rd.knn_discord_raw(values), H2=H2)
    n = len(s)
    prev_max = np.full(n, -np.inf)
    if n > 1:
        from numpy.lib.stride_tricks import sliding_window_view

        padded = np.concatenate([np.full(K, -np.inf), s[:-1]])
        prev_max = sliding_window_view(padded, K).max(axis=1)  # max(s[t-K .. t-1])
    ties = np.abs(s - prev_max) <= tol
    return rd.trailing_max_gate(s, K=K), s, ties


def detector_names() -> List[str]:
    return list(rd.DETECTORS) + [CUSENSE_PREFIX + n for n in rd.DETECTORS if n in CUSENSE_CONFIGS]


def expand_names(names: List[str]) -> List[str]:
    """Expand the groups ``references``, ``cusense`` and ``all``; keep the order, drop repeats."""
    out: List[str] = []
    for n in names:
        group = {"references": list(rd.DETECTORS),
                 "cusense": [CUSENSE_PREFIX + d for d in rd.DETECTORS if d in CUSENSE_CONFIGS],
                 "all": detector_names()}.get(n, [n])
        out += [g for g in group if g not in out]
    return out


def _git(*args: str) -> Optional[str]:
    try:
        r = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_info(backend: Optional[str]) -> Dict[str, object]:
    """Machine, software versions, commit and date of this run."""
    info: Dict[str, object] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": _git("rev-parse", "HEAD"),
        "worktree_dirty": None,
        "machine": {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
                    "arch": platform.machine(), "os": f"{platform.system()} {platform.release()}"},
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        info["worktree_dirty"] = bool(status)
    if backend is not None:
        import cusense

        devs = cusense.devices()
        info["cusense"] = {"version": cusense.__version__, "backend_requested": backend,
                           "backend_used": ("cuda" if devs else "cpu") if backend == "auto"
                           else backend,
                           "cuda_devices": [str(d) for d in devs]}
    return info


def _check_scores(s: np.ndarray, vals: np.ndarray, name: str, fname: str) -> None:
    if s.shape != vals.shape or not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise ValueError(f"{name} on {fname}: scores must be finite, in [0,1], one per row")


def run_detector(fn, corpus, name, reference=None, ref_cache=None, tol=1e-9):
    """Apply ``fn`` to every file, check the output, print progress.

    With ``reference`` (a reference detector callable), also compare with its scores
    (taken from / stored in ``ref_cache``) and return the per-file comparison.
    Returns ``(scores per file, seconds spent in fn, comparison or None)``.
    """
    out, seconds, cmp = {}, 0.0, ({} if reference is not None else None)
    for i, (fname, (ts, vals)) in enumerate(corpus.items(), 1):
        t0 = time.perf_counter()
        s = np.asarray(fn(ts, vals), dtype=np.float64)
        dt = time.perf_counter() - t0
        seconds += dt
        _check_scores(s, vals, name, fname)
        out[fname] = s
        extra = ""
        if reference is not None:
            if fname not in ref_cache:
                ref_cache[fname] = np.asarray(reference(ts, vals), dtype=np.float64)
            r = ref_cache[fname]
            diff = np.abs(s - r)
            cmp[fname] = {"max_abs_diff": float(diff.max(initial=0.0)),
                          "rows_not_identical": int(np.count_nonzero(s != r))}
            extra = f", max|cusense-reference| {cmp[fname]['max_abs_diff']:.1e}"
            if reference is rd.knn_discord and cmp[fname]["max_abs_diff"] > tol:
                _, ungated, ties = gate_ties(vals, tol)
                off = diff > tol
                # a tie row is explained when cusense gave 0 or the ungated score there
                explained = off & ties & ((s == 0) | (np.abs(s - ungated) <= tol))
                rest = diff[off & ~explained]
                cmp[fname]["gate_tie_rows"] = [int(i) for i in np.flatnonzero(explained)]
                cmp[fname]["max_abs_diff_excluding_gate_ties"] = float(rest.max(initial=0.0))
                extra += (f" at {int(explained.sum())} gate tie(s); elsewhere "
                          f"{float(np.where(explained, 0.0, diff).max()):.1e}")
        print(f"  [{name}] {i:2d}/{len(corpus)} {fname} ({len(vals)} rows, {dt:.2f}s{extra})",
              flush=True)
    return out, seconds, cmp


def markdown_table(results: Dict[str, Dict[str, Dict[str, float]]], profiles) -> str:
    head = "| detector | " + " | ".join(profiles) + " |"
    sep = "|---|" + "---:|" * len(profiles)
    rows = [head, sep]
    for det, res in results.items():
        cells = [f"{res[p]['score']:.1f} (thr {res[p]['threshold']:.6g})" for p in profiles]
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
    fig.legend(*handles2, loc="upper center", fontsize=7, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.2 * len(files))))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="NAB data folder (default: $CUSENSE_NAB_DIR or <repo>/../shared/data/nab)")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--detectors", nargs="+", default=["references"],
                    help="detector names or groups (references, cusense, all), from: "
                         + ", ".join(detector_names()))
    ap.add_argument("--backend", choices=("cpu", "cuda", "auto"), default="auto",
                    help="cusense backend for the cusense-* detectors (default auto)")
    ap.add_argument("--no-check", action="store_true",
                    help="do not compare the cusense-* scores with the numpy references")
    ap.add_argument("--tol", type=float, default=1e-9,
                    help="largest allowed |cusense - reference| per score (default 1e-9)")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG")
    ap.add_argument("--halves", action="store_true",
                    help="over-fitting guard: choose parameters (grid of halves.GRIDS) and "
                         "threshold on one half of the files, score the other, both ways")
    args = ap.parse_args(argv)

    names = expand_names(args.detectors)
    unknown = [d for d in names if d not in detector_names()]
    if unknown:
        print(f"unknown detectors {unknown}; available: {detector_names()}", file=sys.stderr)
        return 2
    data_dir = args.data if args.data is not None else ns.default_data_dir()
    if not ns.data_available(data_dir):
        print(f"NAB data not found in {data_dir}", file=sys.stderr)
        return 2
    uses_cusense = any(n.startswith(CUSENSE_PREFIX) for n in names)
    if uses_cusense:
        try:
            import cusense
        except ImportError as e:
            print(f"the cusense-* detectors need the cusense package ({e})", file=sys.stderr)
            return 2
        if args.backend == "cuda" and not cusense.cuda_available():
            print("--backend cuda: no usable CUDA device (or cusense built without CUDA)",
                  file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)

    windows = ns.load_windows(data_dir)
    profiles = ns.load_profiles(data_dir)
    corpus = ns.load_corpus(data_dir, sorted(windows))
    tables = ns.build_tables(corpus, windows)
    profile_names = list(profiles)

    ref_cache: Dict[str, Dict[str, np.ndarray]] = {}
    results, detections, std_thr, checks = {}, {}, {}, {}
    for name in names:
        t0 = time.perf_counter()
        base = name[len(CUSENSE_PREFIX):] if name.startswith(CUSENSE_PREFIX) else None
        if base is None:
            fn, config, reference = rd.DETECTORS[name], f"reference_detectors.{rd.DETECTORS[name].__name__}", None
        else:
            fn = cusense_detector(base, args.backend)
            config = fn.config
            reference = None if args.no_check else rd.DETECTORS[base]
        det, seconds, cmp = run_detector(fn, corpus, name, reference,
                                         ref_cache.setdefault(base, {}) if reference else None,
                                         tol=args.tol)
        if base is None:
            ref_cache[name] = det
        res = ns.score_corpus(det, data_dir, profiles=profiles, tables=tables)
        thr = res["standard"][1]
        breakdown = ns.per_file_breakdown(det, tables, profiles["standard"], thr)
        results[name] = {p: {"score": float(s), "threshold": float(t)} for p, (s, t) in res.items()}
        results[name]["config"] = config
        results[name]["per_file_standard"] = json.loads(breakdown.to_json(orient="index"))
        results[name]["scoring_seconds"] = seconds
        results[name]["seconds"] = time.perf_counter() - t0
        detections[name], std_thr[name] = det, thr
        if args.halves:
            import halves

            grid = halves.GRIDS.get(base or name, [{}])

            def score_config(params, _base=base, _name=name):
                if not params:
                    return det
                if _base is None:
                    return {f: np.asarray(rd.DETECTORS[_name](ts, v, **params)) for f, (ts, v) in corpus.items()}
                import cusense

                cfg = build_cusense(_base, params)
                return {f: np.asarray(cusense.score(ts, v, detector=cfg, backend=args.backend))
                        for f, (ts, v) in corpus.items()}

            hh = halves.half_half(score_config, grid, tables, profiles, {p: s for p, (s, _t) in res.items()})
            results[name]["halves"] = hh
            for line in halves.markdown(name, hh)[:len(profiles) + 4]:
                print(line, flush=True)
        print(f"{name}: " + ", ".join(f"{p} {s:.2f} (thr {t:.6g})" for p, (s, t) in res.items()),
              flush=True)
        if cmp is not None:
            ref_res = ns.score_corpus(ref_cache[base], data_dir, profiles=profiles, tables=tables)
            worst = max(c["max_abs_diff"] for c in cmp.values())
            rest = max(c.get("max_abs_diff_excluding_gate_ties", c["max_abs_diff"])
                       for c in cmp.values())
            ties = {f: c["gate_tie_rows"] for f, c in cmp.items() if c.get("gate_tie_rows")}
            n_ties = sum(len(v) for v in ties.values())
            nab_equal = all(abs(ref_res[p][0] - res[p][0]) <= 1e-9 for p in res)
            ok = rest <= args.tol
            checks[name] = {
                "reference": base, "tolerance_abs": args.tol, "passed": ok,
                "max_abs_diff": worst,
                "max_abs_diff_excluding_gate_ties": rest,
                "gate_tie_rows": ties,
                "rows_compared": int(sum(len(v) for _, v in corpus.values())),
                "rows_not_bit_identical": int(sum(c["rows_not_identical"] for c in cmp.values())),
                "reference_nab": {p: {"score": float(s), "threshold": float(t)}
                                  for p, (s, t) in ref_res.items()},
                "nab_scores_equal": nab_equal,
                "per_file_max_abs_diff": {f: c["max_abs_diff"] for f, c in cmp.items()},
            }
            results[name]["check"] = checks[name]
            print(f"  check {name} vs reference {base}: max|diff| {rest:.2e} over "
                  f"{checks[name]['rows_compared']} rows"
                  + (f" (excluding {n_ties} gate tie rows, where the diff is up to {worst:.2e})"
                     if n_ties else "")
                  + f" -> {'PASS' if ok else 'FAIL'} (tol {args.tol:g}); NAB scores "
                  + ("equal" if nab_equal else "DIFFERENT") + " (reference: "
                  + ", ".join(f"{p} {s:.2f}" for p, (s, _t) in ref_res.items()) + ")",
                  flush=True)

    meta = {"data_dir_name": Path(data_dir).name, "files": len(corpus),
            "rows": int(sum(len(v) for _, v in corpus.values())),
            "windows": int(sum(t.n_windows for t in tables.values())),
            "threshold_search": "exact sweep over all distinct scores (corpus-wide, per profile)",
            "command": "python benchmarks/nab/evaluate.py " + " ".join(
                "<path>" if Path(a).is_absolute() else a
                for a in (argv if argv is not None else sys.argv[1:])),
            "run": run_info(args.backend if uses_cusense else None)}
    (args.out / "nab_scores.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    table = markdown_table({k: {p: v[p] for p in profile_names} for k, v in results.items()},
                           profile_names)
    run = meta["run"]
    lines = [f"NAB normalised scores ({meta['files']} files, {meta['rows']} rows, "
             f"{meta['windows']} windows; one corpus-wide threshold per profile, exact sweep)", "",
             table]
    if checks:
        lines.append("Check against the numpy references (every score of every file):\n")
        for n, c in checks.items():
            nt = sum(len(v) for v in c["gate_tie_rows"].values())
            lines.append(
                f"- `{n}` vs `{c['reference']}`: max |diff| "
                f"{c['max_abs_diff_excluding_gate_ties']:.2e} over {c['rows_compared']} rows"
                + (f" except {nt} gate ties (see below)" if nt else "")
                + f" -> {'equal' if c['passed'] else 'NOT equal'} to {c['tolerance_abs']:g}; "
                + f"NAB scores {'identical' if c['nab_scores_equal'] else 'DIFFERENT'}")
        if any(c["gate_tie_rows"] for c in checks.values()):
            lines += ["", "Gate ties: `knn_discord` keeps a calibrated score only when it is "
                      "strictly greater than every calibrated score of the previous K records. "
                      "Where the two are equal in exact arithmetic (a repeated pattern gives the "
                      "same nearest-neighbour distance twice) they differ by ~1e-16 after "
                      "rounding, and the last bit decides between the score and 0; cusense and "
                      "numpy sum in different orders, so they can decide differently there. "
                      "Rows (0-based): " + "; ".join(
                          f"{f} {v}" for c in checks.values()
                          for f, v in c["gate_tie_rows"].items()) + "."]
        lines.append("")
    if args.halves:
        import halves

        for n, r in results.items():
            if "halves" in r:
                lines += halves.markdown(n, r["halves"])
    cu = run.get("cusense")
    lines.append(f"Run {run['date_utc']}, commit {str(run['commit'])[:12]}"
                 f"{' (modified tree)' if run['worktree_dirty'] else ''}, "
                 f"{run['machine']['cpu']} ({run['machine']['logical_cpus']} logical CPUs)"
                 + (f", cusense backend {cu['backend_used']}" if cu else "") + ".")
    md = "\n".join(lines) + "\n"
    (args.out / "nab_scores.md").write_text(md)
    print(md)
    if not args.no_plot:
        plot_streams(args.out / "nab_streams.png", corpus, tables, detections, std_thr)
    return 0 if all(c["passed"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
