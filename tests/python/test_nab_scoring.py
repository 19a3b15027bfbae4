"""Tests of the NAB scorer in benchmarks/nab/nab_scoring.py.

Synthetic tests build their own windows and need no data; the corpus tests
skip when the NAB data folder (``$CUSENSE_NAB_DIR`` or
``<repo>/../shared/data/nab``) is absent.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "nab"))
import nab_scoring as ns  # noqa: E402

PROFILES = ns.load_profiles(None)  # NAB's published weights
STD = PROFILES["standard"]

N = 2000                 # rows per synthetic file, probation = 300
WINDOWS = [(600, 699), (1300, 1399)]


def _table(n=N, windows=WINDOWS, name="synthetic"):
    return ns.build_file_table(name, n, windows)


def _norm(scores_by_table, profile):
    files = [(s, t) for t, s in scores_by_table]
    _thr, raw = ns.best_threshold(files, profile)
    null, perfect = ns.null_and_perfect([t for t, _ in scores_by_table], profile)
    return ns.normalise(raw, null, perfect)


def _raw_at(scores, table, profile=STD, threshold=0.5):
    return ns.score_file_at_threshold(scores, table, profile, threshold)["score"]


def test_probation_length():
    assert ns.probation_length(1000) == 150
    assert ns.probation_length(4032) == 604
    assert ns.probation_length(18050) == 750  # capped at 0.15 * 5000


def test_scaled_sigmoid_reference_values():
    assert ns.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert ns.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert ns.scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert ns.scaled_sigmoid(3.5) == -1.0


def test_perfect_and_null_synthetic():
    t = _table()
    perfect = np.zeros(N)
    for left, _right in WINDOWS:
        perfect[left] = 1.0
    for prof in PROFILES.values():
        assert _norm([(t, perfect)], prof) == pytest.approx(100.0)
        assert _norm([(t, np.zeros(N))], prof) == pytest.approx(0.0)


def test_probationary_detections_are_ignored():
    t = _table()
    s = np.zeros(N)
    s[: ns.probation_length(N)] = 1.0
    assert _raw_at(s, t) == pytest.approx(-len(WINDOWS))
    for prof in PROFILES.values():
        assert _norm([(t, s)], prof) == pytest.approx(0.0)
    # A window inside the probationary period is not counted at all.
    t2 = ns.build_file_table("p", N, [(100, 150)])
    assert t2.n_windows == 0


def test_earlier_detection_in_window_scores_more():
    t = _table()
    early, late = np.zeros(N), np.zeros(N)
    early[600], late[695] = 1.0, 1.0
    assert _raw_at(early, t) > _raw_at(late, t)
    # Only the first detection counts: adding later ones in the window changes nothing.
    both = early.copy()
    both[650:700] = 1.0
    assert _raw_at(both, t) == pytest.approx(_raw_at(early, t))
    # Detection at the window start earns exactly tpWeight.
    assert _raw_at(early, t) == pytest.approx(1.0 - 1.0)  # +1 TP, -1 for the missed 2nd window


def test_fp_right_after_window_costs_less_than_far_fp():
    t = _table()
    near, far, before = np.zeros(N), np.zeros(N), np.zeros(N)
    near[701] = 1.0     # just after window 1
    far[1250] = 1.0     # > 3 window widths after window 1
    before[400] = 1.0   # after probation, before any window
    base = _raw_at(np.zeros(N), t)
    cost_near = base - _raw_at(near, t)
    cost_far = base - _raw_at(far, t)
    cost_before = base - _raw_at(before, t)
    assert 0 < cost_near < cost_far
    assert cost_far == pytest.approx(STD["fpWeight"])
    assert cost_before == pytest.approx(STD["fpWeight"])


def test_profile_weights_matter():
    t = _table()
    s = np.zeros(N)
    s[600] = 1.0   # hit window 1, miss window 2
    s[1000] = 1.0  # one far FP
    raw = {p: _raw_at(s, t, prof) for p, prof in PROFILES.items()}
    # Missing a window costs 2 with reward_low_FN_rate, 1 with standard.
    assert raw["reward_low_FN_rate"] == pytest.approx(raw["standard"] - 1.0)
    # The FP costs twice as much with reward_low_FP_rate.
    assert raw["reward_low_FP_rate"] == pytest.approx(raw["standard"] - STD["fpWeight"])


def test_sweep_matches_brute_force_grid():
    rng = np.random.default_rng(1)
    tables = [_table(), ns.build_file_table("b", 1500, [(400, 450)]),
              ns.build_file_table("c", 1200, [])]
    files = []
    for t in tables:
        s = rng.random(len(t.window_id)) ** 3
        s[t.window_id >= 0] += 0.3 * rng.random((t.window_id >= 0).sum())
        files.append((np.clip(s, 0, 1), t))
    for prof in PROFILES.values():
        thr, best = ns.best_threshold(files, prof)
        grid = np.r_[np.linspace(0, 1, 2001), np.unique(np.concatenate([s for s, _ in files]))]
        brute = max(sum(ns.score_file_at_threshold(s, t, prof, g)["score"] for s, t in files)
                    for g in grid)
        assert best == pytest.approx(brute, abs=1e-9)
        at_thr = sum(ns.score_file_at_threshold(s, t, prof, thr)["score"] for s, t in files)
        assert at_thr == pytest.approx(best, abs=1e-9)
        # Every sweep entry equals the direct evaluation at that threshold.
        thrs, raws = ns.sweep_thresholds(files, prof)
        for k in range(0, len(thrs), max(1, len(thrs) // 50)):
            direct = sum(ns.score_file_at_threshold(s, t, prof, thrs[k])["score"] for s, t in files)
            assert raws[k] == pytest.approx(direct, abs=1e-9)


# ---------------------------------------------------------------- real data

DATA = ns.default_data_dir()
needs_data = pytest.mark.skipif(not ns.data_available(DATA),
                                reason=f"NAB data not found at {DATA} (set CUSENSE_NAB_DIR)")


@pytest.fixture(scope="module")
def nab_tables():
    windows = ns.load_windows(DATA)
    corpus = ns.load_corpus(DATA, sorted(windows))
    return corpus, ns.build_tables(corpus, windows)


@needs_data
def test_corpus_perfect_null_probationary(nab_tables):
    corpus, tables = nab_tables
    assert sum(t.n_windows for t in tables.values()) == 59
    perfect, null, prob = {}, {}, {}
    for name, t in tables.items():
        n = len(t.window_id)
        s = np.zeros(n)
        for k in np.unique(t.window_id[t.window_id >= 0]):
            s[np.argmax(t.window_id == k)] = 1.0
        perfect[name], null[name] = s, np.zeros(n)
        p = np.zeros(n)
        p[: ns.probation_length(n)] = 1.0
        prob[name] = p
    for det, expected in ((perfect, 100.0), (null, 0.0), (prob, 0.0)):
        res = ns.score_corpus(det, DATA, tables=tables)
        for prof, (score, _thr) in res.items():
            assert score == pytest.approx(expected), prof


@needs_data
def test_corpus_sweep_vs_grid(nab_tables):
    corpus, tables = nab_tables
    rng = np.random.default_rng(0)
    det = {n: rng.random(len(t.window_id)) for n, t in tables.items()}
    files = [(det[n], tables[n]) for n in det]
    thr, best = ns.best_threshold(files, STD)
    for g in np.linspace(0.9, 1.0, 41):
        total = sum(ns.score_file_at_threshold(s, t, STD, g)["score"] for s, t in files)
        assert total <= best + 1e-9
