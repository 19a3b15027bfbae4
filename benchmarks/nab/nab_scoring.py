"""NAB (Numenta Anomaly Benchmark) scoring, re-implemented with numpy/pandas.

This module has no dependency on the ``cusense`` package. It follows the
published description (Lavin & Ahmad 2015, arXiv:1510.03336) and the semantics
of NAB's ``nab/sweeper.py`` (v1.1):

* **Windows.** Each file has a list of anomaly windows ``[start, end]``
  (timestamps, both ends inclusive, exact row timestamps).
* **Probationary period.** The first ``min(floor(0.15 * n), 0.15 * 5000)``
  rows of a file (``n`` rows) are never scored: detections there are ignored
  (NAB tags them ``"probationary"`` and drops them before thresholding).
* **Per-row weights** (NAB's ``calcSweepScore``). With the scaled sigmoid
  ``S(x) = 2 * sigmoid(-5 x) - 1`` (and ``S(x) = -1`` for ``x > 3``):

  - row ``i`` inside a window with right edge ``r`` and width ``w`` rows:
    ``x = -(r - i + 1) / w`` (``-1`` at the first row, ``-1/w`` at the last),
    weight ``S(x) * A_TP / S(-1)``, so a detection at the window start earns
    exactly ``A_TP``;
  - row ``i`` outside every window, after a window with right edge ``r`` and
    width ``w``: ``x = |r - i| / (w - 1)``, weight ``S(x) * A_FP`` (negative,
    close to 0 right after the window, ``-A_FP`` far from it);
  - row outside every window with no preceding window: ``-A_FP``.

* **Thresholding.** A row is a detection when ``score >= threshold``. For a
  threshold the file score is ``sum of FP weights of detected rows outside
  windows + sum over windows of (max TP weight of detected rows in the window,
  or -A_FN if none)``. Because the TP weight decreases through a window, the
  max is the weight of the *earliest* detection, so only the first detection
  per window counts and later ones in the same window are free.
* **Threshold optimisation.** One threshold for the whole corpus per profile.
  Like NAB's sweeper we evaluate the corpus score at *every* distinct score
  value present in the scorable rows (plus "above everything", reported as
  1.1 like NAB), i.e. an exact sweep, and take the maximum. Ties are resolved
  towards the highest threshold (NAB keeps the first maximum of a descending
  sweep).
* **Normalisation.** ``100 * (raw - null) / (perfect - null)`` where
  ``null = -A_FN * n_windows`` (never detects) and
  ``perfect = A_TP * n_windows`` (detects each window at its first row).

Data location: ``<repo>/../shared/data/nab`` by default, overridable with the
environment variable ``CUSENSE_NAB_DIR`` (and by callers' ``--data``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

PROBATION_PERCENT = 0.15
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")
NO_DETECTION_THRESHOLD = 1.1  # NAB's "above every score" start threshold


# --------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------

def default_data_dir() -> Path:
    """Return the NAB data folder: ``$CUSENSE_NAB_DIR`` or ``<repo>/../shared/data/nab``."""
    env = os.environ.get("CUSENSE_NAB_DIR")
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    return (repo_root / ".." / "shared" / "data" / "nab").resolve()


def data_available(data_dir: Optional[os.PathLike] = None) -> bool:
    """True when ``data_dir`` (default: :func:`default_data_dir`) holds the NAB labels."""
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    return (d / "combined_windows.json").is_file() and (d / "profiles.json").is_file()


def load_windows(data_dir: os.PathLike) -> Dict[str, List[Tuple[np.datetime64, np.datetime64]]]:
    """Load ``combined_windows.json`` as ``{file: [(start, end), ...]}`` (datetime64[ns])."""
    with open(Path(data_dir) / "combined_windows.json") as f:
        raw = json.load(f)
    return {
        name: [(np.datetime64(pd.Timestamp(a), "ns"), np.datetime64(pd.Timestamp(b), "ns"))
               for a, b in wins]
        for name, wins in raw.items()
    }


def load_profiles(data_dir: Optional[os.PathLike] = None) -> Dict[str, Dict[str, float]]:
    """Load the cost matrices ``{profile: {"tpWeight", "fpWeight", "fnWeight", ...}}``.

    Falls back to NAB's published weights when ``data_dir`` is None or lacks
    ``profiles.json``.
    """
    if data_dir is not None and (Path(data_dir) / "profiles.json").is_file():
        with open(Path(data_dir) / "profiles.json") as f:
            raw = json.load(f)
        return {name: dict(p["CostMatrix"]) for name, p in raw.items()}
    return {
        "standard": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0, "tnWeight": 1.0},
        "reward_low_FP_rate": {"tpWeight": 1.0, "fpWeight": 0.22, "fnWeight": 1.0, "tnWeight": 1.0},
        "reward_low_FN_rate": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 2.0, "tnWeight": 1.0},
    }


def load_series(data_dir: os.PathLike, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``<data_dir>/<name>``; return ``(timestamps int64 ns, values float64)``."""
    df = pd.read_csv(Path(data_dir) / name)
    ts = pd.to_datetime(df["timestamp"]).to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return ts, df["value"].to_numpy(dtype=np.float64)


def load_corpus(data_dir: os.PathLike,
                names: Optional[Iterable[str]] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Load every labelled file (or ``names``) as ``{name: (timestamps_ns, values)}``."""
    if names is None:
        names = sorted(load_windows(data_dir))
    return {name: load_series(data_dir, name) for name in names}


# --------------------------------------------------------------------------
# Per-row weights (NAB calcSweepScore)
# --------------------------------------------------------------------------

def probation_length(n_rows: int, percent: float = PROBATION_PERCENT) -> int:
    """NAB ``getProbationaryLength``: ``min(floor(percent*n), percent*5000)`` (750 rows)."""
    return int(min(math.floor(percent * n_rows), percent * 5000))


def scaled_sigmoid(x: np.ndarray) -> np.ndarray:
    """NAB scaled sigmoid ``2*sigmoid(-5x) - 1``, and ``-1`` where ``x > 3``."""
    x = np.asarray(x, dtype=np.float64)
    val = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, val)


def window_row_ranges(timestamps_ns: np.ndarray, windows) -> List[Tuple[int, int]]:
    """Map ``[(start, end), ...]`` (timestamps) to inclusive row ranges ``[(left, right), ...]``.

    Window edges must be exact row timestamps, as in NAB.
    """
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    out = []
    for start, end in windows:
        s = np.int64(np.datetime64(start, "ns").astype(np.int64))
        e = np.int64(np.datetime64(end, "ns").astype(np.int64))
        left = int(np.searchsorted(ts, s, side="left"))
        right = int(np.searchsorted(ts, e, side="left"))
        if left >= len(ts) or ts[left] != s or right >= len(ts) or ts[right] != e:
            raise ValueError(f"window edge {start}..{end} is not a row timestamp")
        out.append((left, right))
    return out


@dataclass
class FileTable:
    """Scoring table of one file, independent of any detector or profile.

    ``window_id[i]``: index of the window holding row ``i``, ``-1`` outside
    windows, ``-2`` in the probationary period (ignored).
    ``tp_unit[i]``: ``S(x)/S(-1)`` for in-window rows (multiply by ``A_TP``).
    ``fp_unit[i]``: ``S(x)`` (in ``[-1, 0]``) for rows outside windows
    (multiply by ``A_FP``).
    ``n_windows``: number of windows with at least one scorable row.
    """

    name: str
    window_id: np.ndarray
    tp_unit: np.ndarray
    fp_unit: np.ndarray
    n_windows: int


def build_file_table(name: str, n_rows: int, row_ranges: List[Tuple[int, int]]) -> FileTable:
    """Compute the per-row NAB weights of a file with ``n_rows`` rows and windows ``row_ranges``."""
    idx = np.arange(n_rows)
    window_id = np.full(n_rows, -1, dtype=np.int64)
    tp_unit = np.zeros(n_rows)
    fp_unit = np.full(n_rows, -1.0)  # no preceding window: full FP cost
    max_tp = float(scaled_sigmoid(-1.0))
    ranges = sorted(row_ranges)
    for k, (left, right) in enumerate(ranges):
        width = float(right - left + 1)
        sl = slice(left, right + 1)
        window_id[sl] = k
        tp_unit[sl] = scaled_sigmoid(-(right - idx[sl] + 1) / width) / max_tp
        # Rows after this window up to the next window's start.
        nxt = ranges[k + 1][0] if k + 1 < len(ranges) else n_rows
        after = slice(right + 1, nxt)
        if width > 1:
            fp_unit[after] = scaled_sigmoid(np.abs(right - idx[after]) / (width - 1.0))
        else:  # degenerate 1-row window: NAB would divide by zero; treat as far
            fp_unit[after] = -1.0
    fp_unit[window_id >= 0] = 0.0
    window_id[: probation_length(n_rows)] = -2
    n_windows = len(np.unique(window_id[window_id >= 0]))
    return FileTable(name, window_id, tp_unit, fp_unit, n_windows)


def build_tables(corpus: Mapping[str, Tuple[np.ndarray, np.ndarray]],
                 windows: Mapping[str, list]) -> Dict[str, FileTable]:
    """Build a :class:`FileTable` for every file of ``corpus``."""
    tables = {}
    for name, (ts, _vals) in corpus.items():
        ranges = window_row_ranges(ts, windows.get(name, []))
        tables[name] = build_file_table(name, len(ts), ranges)
    return tables


# --------------------------------------------------------------------------
# Scoring at a threshold and threshold sweep
# --------------------------------------------------------------------------

def score_file_at_threshold(scores: np.ndarray, table: FileTable, profile: Mapping[str, float],
                            threshold: float) -> Dict[str, float]:
    """Raw NAB score of one file at ``threshold`` (detection: ``score >= threshold``).

    Returns ``{"score", "tp", "fp", "fn"}`` where tp/fn count windows and fp
    counts detected rows outside windows (after the probationary period).
    """
    scores = np.asarray(scores, dtype=np.float64)
    det = scores >= threshold
    scorable = table.window_id != -2
    outside = (table.window_id == -1) & det
    fp_sum = profile["fpWeight"] * table.fp_unit[outside].sum()
    total = fp_sum
    tp = fn = 0
    for k in np.unique(table.window_id[table.window_id >= 0]):
        hit = (table.window_id == k) & det & scorable
        if hit.any():
            total += profile["tpWeight"] * table.tp_unit[hit].max()
            tp += 1
        else:
            total -= profile["fnWeight"]
            fn += 1
    return {"score": float(total), "tp": tp, "fp": int(outside.sum()), "fn": fn}


def sweep_thresholds(files: Iterable[Tuple[np.ndarray, FileTable]],
                     profile: Mapping[str, float]) -> Tuple[np.ndarray, np.ndarray]:
    """Exact corpus-wide threshold sweep.

    ``files``: pairs ``(scores, table)``. Returns ``(thresholds, raw_scores)``
    in descending threshold order; the first entry is
    :data:`NO_DETECTION_THRESHOLD` (no detection at all), then one entry per
    distinct score value ``t`` among scorable rows, holding the corpus raw score
    when every row with ``score >= t`` is a detection.
    """
    a_tp, a_fp, a_fn = profile["tpWeight"], profile["fpWeight"], profile["fnWeight"]
    sc, wid, gain_fp, gain_tp = [], [], [], []
    offset = 0
    n_windows = 0
    for scores, table in files:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != table.window_id.shape:
            raise ValueError(f"{table.name}: {scores.shape[0]} scores for "
                             f"{table.window_id.shape[0]} rows")
        keep = table.window_id != -2
        w = table.window_id[keep]
        sc.append(scores[keep])
        wid.append(np.where(w >= 0, w + offset, -1))
        gain_fp.append(np.where(w == -1, a_fp * table.fp_unit[keep], 0.0))
        gain_tp.append(np.where(w >= 0, a_tp * table.tp_unit[keep], 0.0))
        offset += max(int(table.window_id.max()) + 1, 0)
        n_windows += table.n_windows
    sc = np.concatenate(sc) if sc else np.zeros(0)
    wid = np.concatenate(wid) if wid else np.zeros(0, dtype=np.int64)
    gain_fp = np.concatenate(gain_fp) if gain_fp else np.zeros(0)
    gain_tp = np.concatenate(gain_tp) if gain_tp else np.zeros(0)
    if np.any(~np.isfinite(sc)):
        raise ValueError("scores must be finite")

    order = np.argsort(-sc, kind="stable")
    sc, wid, gain_fp, gain_tp = sc[order], wid[order], gain_fp[order], gain_tp[order]
    # Window part: running max of TP weight per window, starting from -A_FN.
    delta = gain_fp.copy()
    inw = wid >= 0
    if inw.any():
        keys = wid[inw]
        run_max = pd.Series(gain_tp[inw]).groupby(keys).cummax().to_numpy()
        prev_max = pd.Series(run_max).groupby(keys).shift(1).to_numpy()
        prev_max = np.where(np.isnan(prev_max), -a_fn, prev_max)
        delta[inw] = run_max - prev_max  # change of that window's contribution
    base = -a_fn * n_windows
    cum = base + np.cumsum(delta)
    # Evaluate at the last row of each run of equal scores.
    if len(sc):
        last = np.r_[sc[1:] != sc[:-1], True]
        thr = np.r_[NO_DETECTION_THRESHOLD, sc[last]]
        raw = np.r_[base, cum[last]]
    else:
        thr, raw = np.array([NO_DETECTION_THRESHOLD]), np.array([base])
    return thr, raw


def null_and_perfect(tables: Iterable[FileTable], profile: Mapping[str, float]) -> Tuple[float, float]:
    """Raw scores of the null detector (never fires) and the perfect one (fires at each window start)."""
    n = sum(t.n_windows for t in tables)
    return -profile["fnWeight"] * n, profile["tpWeight"] * n


def normalise(raw: float, null: float, perfect: float) -> float:
    """NAB normalisation ``100 * (raw - null) / (perfect - null)``."""
    return 100.0 * (raw - null) / (perfect - null)


def best_threshold(files: List[Tuple[np.ndarray, FileTable]],
                   profile: Mapping[str, float]) -> Tuple[float, float]:
    """Return ``(threshold, raw_score)`` maximising the corpus raw score (highest threshold on ties)."""
    thr, raw = sweep_thresholds(files, profile)
    k = int(np.argmax(raw))  # first maximum of the descending sweep
    return float(thr[k]), float(raw[k])


def score_corpus(detections: Mapping[str, np.ndarray],
                 data_dir: Optional[os.PathLike] = None,
                 profiles: Optional[Mapping[str, Mapping[str, float]]] = None,
                 tables: Optional[Mapping[str, FileTable]] = None,
                 ) -> Dict[str, Tuple[float, float]]:
    """Score a detector on the files in ``detections``.

    ``detections``: ``{"<category>/<file>.csv": scores}`` with one score in
    ``[0, 1]`` per row of the file. ``data_dir``: NAB data folder (default
    :func:`default_data_dir`). ``tables``: precomputed :func:`build_tables`
    output, to skip re-reading the CSVs.

    Returns ``{profile: (normalised_score, threshold)}`` with one
    corpus-wide threshold per profile, chosen by the exact sweep.
    """
    if data_dir is None:
        data_dir = default_data_dir()
    if profiles is None:
        profiles = load_profiles(data_dir)
    if tables is None:
        windows = load_windows(data_dir)
        unknown = set(detections) - set(windows)
        if unknown:
            raise KeyError(f"files without labels: {sorted(unknown)}")
        corpus = {}
        for name in detections:
            ts, _ = load_series(data_dir, name)
            corpus[name] = (ts, None)
        tables = build_tables(corpus, windows)
    files = [(np.asarray(detections[n], dtype=np.float64), tables[n]) for n in detections]
    used = [tables[n] for n in detections]
    out = {}
    for pname, prof in profiles.items():
        thr, raw = best_threshold(files, prof)
        null, perfect = null_and_perfect(used, prof)
        out[pname] = (normalise(raw, null, perfect), thr)
    return out


def per_file_breakdown(detections: Mapping[str, np.ndarray], tables: Mapping[str, FileTable],
                       profile: Mapping[str, float], threshold: float) -> pd.DataFrame:
    """Per-file raw score, TP/FP/FN counts at a given threshold (for diagnostics)."""
    rows = []
    for name, scores in detections.items():
        r = score_file_at_threshold(scores, tables[name], profile, threshold)
        r["file"] = name
        r["windows"] = tables[name].n_windows
        rows.append(r)
    return pd.DataFrame(rows).set_index("file")
