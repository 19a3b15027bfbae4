"""Reference streaming anomaly detectors for the NAB benchmark (numpy, float64).

Every detector has the signature::

    fn(timestamps: np.ndarray[int64 ns], values: np.ndarray[float64]) -> np.ndarray[float64]

and returns one score in ``[0, 1]`` per record. All of them are *causal* and
*per key*: the score of record ``t`` depends only on ``values[0..t]`` of the
same series, computed in one pass with bounded state, and one configuration is
used for every series. They are written as reference semantics for the C++
(CPU) and CUDA ports; the docstrings give the exact recurrences. The numpy code
is vectorised where the arithmetic is identical to the streaming recurrence
(blockwise evaluation of per-record formulas), and an explicit loop otherwise.
Timestamps are accepted for interface compatibility and unused except by
``knn_discord_tod`` (time of day); all windows are counted in records.

Score mapping shared by the z-score baselines (``z_to_score``)::

    p  = erfc(|z| / sqrt(2))            # two-sided normal tail probability
    Lp = -log10(p)                      # "surprise" in decades, >= 0
    s  = Lp / (1 + Lp)                  # in [0, 1), strictly increasing in |z|

This is a monotone function of ``1 - 2*(1 - Phi(|z|)) = 1 - p`` (so any
threshold on one is a threshold on the other) but it does not saturate to
exactly 1.0 in double precision for |z| > 8.3, which would create ties that
the corpus-wide threshold cannot separate. For ``|z| / sqrt(2) >= 25`` ``Lp``
uses the asymptotic ``-ln erfc(u) = u^2 + ln(u*sqrt(pi))`` (relative error
< 1e-3 there).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Dict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Detector = Callable[[np.ndarray, np.ndarray], np.ndarray]

_LN10 = math.log(10.0)
_SQRT_PI = math.sqrt(math.pi)
TINY = 1e-12  # absolute floor for spreads (std, MAD)


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------

def neglog10_tail(z: float) -> float:
    """``-log10(erfc(|z|/sqrt2))``, the two-sided normal tail in decades, without underflow."""
    u = abs(z) / math.sqrt(2.0)
    if u < 25.0:
        return -math.log10(math.erfc(u))
    return (u * u + math.log(u * _SQRT_PI)) / _LN10


def z_to_score(z: float) -> float:
    """Map a z-score to ``[0, 1)``: ``Lp / (1 + Lp)`` with ``Lp = neglog10_tail(z)``."""
    lp = neglog10_tail(z)
    return lp / (1.0 + lp)


def _safe_z(d: float, spread: float) -> float:
    """``d / spread``; when ``spread <= TINY``: 0 if ``|d| <= TINY`` else ``+-1e6`` (a huge z)."""
    if spread > TINY:
        return d / spread
    if abs(d) <= TINY:
        return 0.0
    return 1e6 if d > 0 else -1e6


def _as_f64(values) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64)


# --------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------

def ewma_zscore(timestamps, values, alpha: float = 0.05) -> np.ndarray:
    """EWMA z-score, alpha = 0.05.

    State per key: ``m`` (EW mean), ``v`` (EW variance), both float64.
    Init with the first record: ``m = x0, v = 0``, ``score0 = 0``.
    For each later record ``x``::

        d = x - m
        z = _safe_z(d, sqrt(v))           # uses the state *before* the update
        score = z_to_score(z)
        m = m + alpha * d
        v = (1 - alpha) * (v + alpha * d * d)
    """
    x = _as_f64(values)
    n = len(x)
    out = np.zeros(n)
    if n == 0:
        return out
    m, v = x[0], 0.0
    for i in range(1, n):
        d = x[i] - m
        out[i] = z_to_score(_safe_z(d, math.sqrt(v)))
        m += alpha * d
        v = (1.0 - alpha) * (v + alpha * d * d)
    return out


def _prev_windows(x: np.ndarray, window: int, min_count: int):
    """Yield ``(t0, t1, W)``: rows ``t`` in ``[t0, t1)`` with ``W[k]`` = the ``window`` values before ``t0+k``."""
    n = len(x)
    # Records with fewer than `window` predecessors (warm-up): ragged, done one by one.
    for t in range(min_count, min(window, n)):
        yield t, t + 1, x[None, :t]
    if n > window:
        W = sliding_window_view(x, window)  # W[j] = x[j .. j+window-1]
        step = 4096
        for t0 in range(window, n, step):
            t1 = min(n, t0 + step)
            yield t0, t1, W[t0 - window:t1 - window]


def rolling_zscore(timestamps, values, window: int = 100, min_count: int = 2) -> np.ndarray:
    """Rolling z-score over the previous ``window`` (=100) records.

    State per key: ring buffer of the last ``window`` values.
    For record ``t`` with buffer ``B = x[max(0, t-window) .. t-1]`` (``|B| >= 2``,
    else score 0)::

        mu = mean(B); sd = sqrt(mean((B - mu)^2))      # population std, two-pass
        score = z_to_score(_safe_z(x_t - mu, sd))
    """
    x = _as_f64(values)
    out = np.zeros(len(x))
    for t0, t1, W in _prev_windows(x, window, min_count):
        mu = W.mean(axis=1)
        sd = np.sqrt(((W - mu[:, None]) ** 2).mean(axis=1))
        d = x[t0:t1] - mu
        out[t0:t1] = [z_to_score(_safe_z(a, b)) for a, b in zip(d, sd)]
    return out


def rolling_mad(timestamps, values, window: int = 100, min_count: int = 2) -> np.ndarray:
    """Robust rolling score: median / MAD of the previous ``window`` (=100) records.

    For record ``t`` with buffer ``B = x[max(0, t-window) .. t-1]``
    (``|B| >= 2``, else score 0)::

        med = median(B)                       # mean of the two middle values if |B| even
        mad = median(|B - med|)
        spread = 1.4826 * mad
        if spread <= TINY: spread = 1.2533 * mean(|B - med|)   # MAD = 0 fallback
        score = z_to_score(_safe_z(x_t - med, spread))
    """
    x = _as_f64(values)
    out = np.zeros(len(x))
    for t0, t1, W in _prev_windows(x, window, min_count):
        med = np.median(W, axis=1)
        dev = np.abs(W - med[:, None])
        spread = 1.4826 * np.median(dev, axis=1)
        fallback = 1.2533 * dev.mean(axis=1)
        spread = np.where(spread > TINY, spread, fallback)
        d = x[t0:t1] - med
        out[t0:t1] = [z_to_score(_safe_z(a, b)) for a, b in zip(d, spread)]
    return out


# --------------------------------------------------------------------------
# Best detector: k-NN subsequence discord + ratio-to-recent-max calibration
# --------------------------------------------------------------------------

def knn_discord_raw(values, L: int = 4, H: int = 3000, min_candidates: int = 50,
                    block: int = 256) -> np.ndarray:
    """Raw left-discord distance (stage 1 of :func:`knn_discord`).

    State per key: ring buffer of the last ``H`` values (``H`` = 3000) plus the
    current ``L``-record subsequence (``L`` = 4).

    For record ``t`` (0-based) with history ``B = x[max(0, t-H) .. t-1]``:

    * query ``q = x[t-L+1 .. t]`` (needs ``t >= L-1``);
    * candidates: every length-``L`` subsequence lying entirely in ``B`` and not
      overlapping ``q``, i.e. ending at ``j`` with
      ``max(L-1, t-H+L-1) <= j <= t-L``; if fewer than ``min_candidates`` (=50)
      exist the raw score is 0;
    * ``dmin = min_j sqrt(sum_{k=0..L-1} (q[k] - x[j-L+1+k])^2)`` (nearest
      neighbour, Euclidean, no z-normalisation of subsequences);
    * ``sd = sqrt(mean((B - mean(B))^2))`` (population std of the whole buffer);
    * ``raw_t = dmin / (sqrt(L) * max(sd, TINY))``; ``raw_t = 0`` if ``sd <= TINY``
      and ``dmin <= TINY``, ``raw_t = 1e6`` if ``sd <= TINY < dmin``.
    """
    x = _as_f64(values)
    n = len(x)
    raw = np.zeros(n)
    if n < L:
        return raw
    E = sliding_window_view(x, L)  # E[s] = x[s .. s+L-1], ends at s+L-1
    first = L - 1
    for b0 in range(first, n, block):
        b1 = min(n, b0 + block)
        lo = max(L - 1, b0 - H + L - 1)   # smallest candidate end over the block
        hi = b1 - 1 - L                    # largest candidate end over the block
        if hi < lo:
            continue
        C = E[lo - L + 1:hi - L + 2]       # candidate subsequences, ends lo..hi
        Q = E[b0 - L + 1:b1 - L + 1]       # queries, ends b0..b1-1
        D = np.sqrt(((Q[:, None, :] - C[None, :, :]) ** 2).sum(axis=2))
        for r, t in enumerate(range(b0, b1)):
            j_lo, j_hi = max(L - 1, t - H + L - 1), t - L
            if j_hi - j_lo + 1 < min_candidates:
                continue
            dmin = D[r, j_lo - lo:j_hi - lo + 1].min()
            B = x[max(0, t - H):t]
            sd = math.sqrt(np.mean((B - B.mean()) ** 2))
            if sd > TINY:
                raw[t] = dmin / (math.sqrt(L) * sd)
            else:
                raw[t] = 0.0 if dmin <= TINY else 1e6
    return raw


def ratio_to_recent_max(raw: np.ndarray, H2: int = 500) -> np.ndarray:
    """Stage 2 of :func:`knn_discord`: ``s_t = r_t / (r_t + M_t)``.

    ``M_t = max(raw[t-H2 .. t-1])`` (0 when ``t == 0``), kept with a monotone
    deque of (index, value) (at most ``H2`` entries). ``s_t = 0`` when
    ``r_t + M_t == 0``. ``s_t > 0.5`` exactly when the record is more surprising
    than every record of the last ``H2`` (=500); after a big event the
    following records are damped automatically (alarm suppression).
    """
    n = len(raw)
    out = np.zeros(n)
    dq: deque = deque()
    for i in range(n):
        while dq and dq[0] < i - H2:
            dq.popleft()
        M = raw[dq[0]] if dq else 0.0
        r = raw[i]
        out[i] = r / (r + M) if (r + M) > 0.0 else 0.0
        while dq and raw[dq[-1]] <= r:
            dq.pop()
        dq.append(i)
    return out


def trailing_max_gate(s: np.ndarray, K: int = 50) -> np.ndarray:
    """Stage 3 of :func:`knn_discord`: repeated-alarm suppression.

    ``g_t = s_t`` if ``s_t > max(s[t-K .. t-1])`` (strictly; the max of an
    empty range is -inf), else ``g_t = 0``. Only a record that beats every
    score of the previous ``K`` (=50) records keeps its score, so a burst of
    high scores yields a single detection at any threshold. State: monotone
    deque of (index, value), at most ``K`` entries (the max is taken over the
    *ungated* ``s``).
    """
    n = len(s)
    out = np.zeros(n)
    dq: deque = deque()
    for i in range(n):
        while dq and dq[0] < i - K:
            dq.popleft()
        if not dq or s[i] > s[dq[0]]:
            out[i] = s[i]
        while dq and s[dq[-1]] <= s[i]:
            dq.pop()
        dq.append(i)
    return out


def knn_discord(timestamps, values, L: int = 4, H: int = 3000, H2: int = 500,
                K: int = 50, min_count: int = 250, tod_weight: float = 0.0) -> np.ndarray:
    """Best reference detector: 1-NN left discord, recent-max calibration, gating.

    ``score = trailing_max_gate(ratio_to_recent_max(knn_discord_raw(x; L=4, H=3000),
    H2=500), K=50)``, then 0 at the first ``min_count`` (=250) records: the calibration's
    warm-up (the first raw scores have too few earlier ones to be compared with, and the very
    first would score ``r / (r + 0) = 1``). ``tod_weight > 0`` takes the raw distances of
    :func:`knn_discord_tod_raw` instead. Per-key state: last ``H`` values (and their hours of
    day), a deque of <= ``H2`` raw scores and a deque of <= ``K`` calibrated scores. See
    :func:`knn_discord_raw`, :func:`ratio_to_recent_max`, :func:`trailing_max_gate`.
    """
    raw = (knn_discord_tod_raw(timestamps, values, L=L, H=H, w_tod=tod_weight) if tod_weight > 0
           else knn_discord_raw(values, L=L, H=H))
    s = trailing_max_gate(ratio_to_recent_max(raw, H2=H2), K=K)
    s[:min_count] = 0.0
    return s


# --------------------------------------------------------------------------
# Variant: k-NN discord with a time-of-day penalty (uses the timestamps)
# --------------------------------------------------------------------------

def hour_of_day(timestamps) -> np.ndarray:
    """Hour of the day in ``[0, 24)`` of int64 ns timestamps: ``((ts // 1e9) mod 86400) / 3600``.

    The NAB timestamps carry no time zone; they are read as UTC, so this is the
    wall-clock hour the file was written in.
    """
    sec = np.asarray(timestamps, dtype=np.int64) // 1_000_000_000
    return (sec % 86400).astype(np.float64) / 3600.0


def knn_discord_tod_raw(timestamps, values, L: int = 4, H: int = 3000, w_tod: float = 0.01,
                        min_candidates: int = 50, block: int = 256) -> np.ndarray:
    """Raw left-discord distance with a time-of-day penalty (stage 1 of :func:`knn_discord_tod`).

    Same query, candidates, buffer ``B`` and ``sd`` as :func:`knn_discord_raw`
    (``L`` = 4, ``H`` = 3000, ``min_candidates`` = 50), plus the hour of day
    ``h_i`` of every buffered record (:func:`hour_of_day`). For record ``t``::

        e_j   = sum_{k=0..L-1} (q[k] - x[j-L+1+k])^2 / (L * sd^2)   # candidate ending at j
        dh_j  = min(|h_t - h_j|, 24 - |h_t - h_j|)                  # hours, in [0, 12]
        raw_t = sqrt(min_j (e_j + w_tod * dh_j^2))                  # w_tod = 0.01 per hour^2

    so a candidate 12 h away from the query's time of day must be closer by
    ``1.44`` in squared normalised distance to count as its neighbour. With
    ``sd <= TINY``: ``raw_t = 0`` if ``min_j sqrt(sum_k (q[k]-x[j-L+1+k])^2) <= TINY``
    else ``1e6`` (as :func:`knn_discord_raw`; no penalty). ``w_tod = 0`` gives
    :func:`knn_discord_raw` up to rounding. State per key: the last ``H``
    values and their hours of day (or seconds of day).
    """
    x = _as_f64(values)
    hod = hour_of_day(timestamps)
    n = len(x)
    raw = np.zeros(n)
    if n < L:
        return raw
    E = sliding_window_view(x, L)
    for b0 in range(L - 1, n, block):
        b1 = min(n, b0 + block)
        lo = max(L - 1, b0 - H + L - 1)
        hi = b1 - 1 - L
        if hi < lo:
            continue
        C = E[lo - L + 1:hi - L + 2]
        Q = E[b0 - L + 1:b1 - L + 1]
        S = ((Q[:, None, :] - C[None, :, :]) ** 2).sum(axis=2)   # squared distances
        for r, t in enumerate(range(b0, b1)):
            j_lo, j_hi = max(L - 1, t - H + L - 1), t - L
            if j_hi - j_lo + 1 < min_candidates:
                continue
            Sj = S[r, j_lo - lo:j_hi - lo + 1]
            B = x[max(0, t - H):t]
            sd = math.sqrt(np.mean((B - B.mean()) ** 2))
            if sd <= TINY:
                raw[t] = 0.0 if math.sqrt(Sj.min()) <= TINY else 1e6
                continue
            dh = np.abs(hod[t] - hod[j_lo:j_hi + 1])
            dh = np.minimum(dh, 24.0 - dh)
            raw[t] = math.sqrt((Sj / (L * sd * sd) + w_tod * dh * dh).min())
    return raw


def knn_discord_tod(timestamps, values, L: int = 4, H: int = 3000, w_tod: float = 0.01,
                    H2: int = 500, K: int = 50) -> np.ndarray:
    """:func:`knn_discord` with a time-of-day penalty on the neighbour search.

    ``score = trailing_max_gate(ratio_to_recent_max(knn_discord_tod_raw(ts, x; L=4,
    H=3000, w_tod=0.01), H2=500), K=50)``. Per-key state: the last ``H`` values
    and their hours of day, a deque of <= ``H2`` raw scores and a deque of
    <= ``K`` calibrated scores. Not ported to C++/CUDA yet.
    """
    s = ratio_to_recent_max(knn_discord_tod_raw(timestamps, values, L=L, H=H, w_tod=w_tod), H2=H2)
    return trailing_max_gate(s, K=K)


def multiscale_z(timestamps, values, alpha: float = 0.05, trend: float = 0.01, beta: float = 0.3,
                 gamma: float = 0.01, clip: float = 4.0, min_count: int = 30, K: int = 500) -> np.ndarray:
    """Multi-scale residual z-score (``cusense.detectors.MultiScaleZ``, the default detector).

    State per key: Holt level ``l`` and slope ``b``, residual variance ``v``, two short-scale
    residual means ``a1`` (weight ``beta``), ``a2`` (``beta / 3``) and their variances ``w1``,
    ``w2``, two block maxima of the gate. The first value sets ``l = x``. For the value after
    ``c >= 1`` earlier ones: ``e = x - (l + b)``, ``a_k' = (1 - beta_k) a_k + beta_k e``,
    ``t = max(|e| / sqrt v, |a1'| / sqrt w1, |a2'| / sqrt w2)`` (``safe_z`` for zero spreads),
    read as a Student t with ``nu = max(1, (min(c, 2/gamma) - 1) / 2)`` degrees of freedom:
    ``z = sqrt((nu - 2/3 + 0.1/nu) log1p(t^2 / nu))``; score ``z_to_score(z)`` once
    ``c >= min_count`` (else 0). Updates, with ``e`` clipped to
    ``clip sqrt v`` and ``a_k'`` to ``clip sqrt w_k`` once ``c >= min_count``, weights
    ``ra = max(alpha, 1/c)``, ``g = max(gamma, 1/c)``: ``l' = l + b + ra e``,
    ``b' = b + max(trend, 1/c) (l' - l - b)`` (0 when ``trend == 0``), ``v' = (1-g) v + g e^2``,
    ``a_k = (1 - beta_k) a_k + beta_k e``, ``w_k' = (1-g) w_k + g a_k'^2``. Gate (``K > 0``):
    the score at position ``c`` is kept only when it beats every score since position
    ``K (c // K - 1)``, else 0.
    """
    dev, warm = multiscale_z_dev(values, alpha=alpha, trend=trend, beta=beta, gamma=gamma,
                                 clip=clip, min_count=min_count)
    out = np.full(len(dev), np.nan)
    ok = ~np.isnan(dev)
    out[ok] = [z_to_score(z) if w else 0.0 for z, w in zip(dev[ok], warm[ok])]
    if K > 0:
        out[ok] = block_gate(out[ok], K)
    return out


def multiscale_z_dev(values, alpha: float = 0.05, trend: float = 0.01, beta: float = 0.3,
                     gamma: float = 0.01, clip: float = 4.0, min_count: int = 30):
    """:func:`multiscale_z` before its score map and gate: ``(z, warm)`` per record, ``z`` the
    normal equivalent of the Student ``t`` (0 while ``c < min_count``), ``warm`` whether
    ``c >= min_count``; NaN values give NaN and change nothing."""
    x = _as_f64(values)
    n = len(x)
    out = np.full(n, np.nan)
    warm_out = np.zeros(n, dtype=bool)
    betas = (beta, beta / 3.0)
    c = 0
    for t in range(n):
        xv = x[t]
        if math.isnan(xv):
            continue
        if c == 0:
            lvl, slope, v, a, w = xv, 0.0, 0.0, [0.0, 0.0], [0.0, 0.0]
            z = 0.0
        else:
            pred = lvl + slope
            e = xv - pred
            an = [(1 - bk) * a[k] + bk * e for k, bk in enumerate(betas)]
            warm = c >= min_count
            z = 0.0
            if warm:
                tstat = max(abs(_safe_z(e, math.sqrt(v))), abs(_safe_z(an[0], math.sqrt(w[0]))),
                            abs(_safe_z(an[1], math.sqrt(w[1]))))
                nu = max(1.0, (min(c, 2.0 / gamma) - 1.0) / 2.0)
                z = math.sqrt((nu - 2.0 / 3.0 + 0.1 / nu) * math.log1p(tstat * tstat / nu))
                warm_out[t] = True
            ec = min(max(e, -clip * math.sqrt(v)), clip * math.sqrt(v)) if warm else e
            anc = [min(max(an[k], -clip * math.sqrt(w[k])), clip * math.sqrt(w[k])) if warm else an[k]
                   for k in range(2)]
            ra, g = max(alpha, 1.0 / c), max(gamma, 1.0 / c)
            new_lvl = pred + ra * ec
            slope = slope + max(trend, 1.0 / c) * (new_lvl - lvl - slope) if trend > 0 else 0.0
            lvl = new_lvl
            v = (1 - g) * v + g * ec * ec
            a = [(1 - bk) * a[k] + bk * ec for k, bk in enumerate(betas)]
            w = [(1 - g) * w[k] + g * anc[k] * anc[k] for k in range(2)]
        out[t] = z
        c += 1
    return out, warm_out


def block_gate(s: np.ndarray, K: int) -> np.ndarray:
    """``s[c]`` where it is greater than every ``s[K (c // K - 1) .. c-1]``, else 0."""
    m = len(s)
    if m == 0:
        return s
    B = -(-m // K)
    R = np.full(B * K, -np.inf)
    R[:m] = s
    R = R.reshape(B, K)
    within = np.maximum.accumulate(R, axis=1)
    before_in_block = np.concatenate([np.full((B, 1), -np.inf), within[:, :-1]], axis=1)
    prev_block = np.concatenate([[-np.inf], R.max(axis=1)[:-1]])
    M = np.maximum(before_in_block, prev_block[:, None]).ravel()[:m]
    return np.where(s > M, s, 0.0)


# --------------------------------------------------------------------------
# Anomaly likelihood (after Numenta's HTM detector for NAB)
# --------------------------------------------------------------------------

LIKELIHOOD_RED = 1e-5       # tail probabilities at or below: alarms (first of a run only)
LIKELIHOOD_YELLOW = 1e-3    # given to the rest of a run and to reds within `rest` of an alarm
LIKELIHOOD_MEAN_FLOOR = 0.03
LIKELIHOOD_VAR_FLOOR = 0.0003


def likelihood_stage(novelty, values, short_window: int = 10, long_window: int = 4000,
                     reestimate: int = 100, learn: int = 150, warmup: int = 300, rest: int = 200,
                     spatial: float = 0.05) -> np.ndarray:
    """The likelihood stage of :func:`anomaly_likelihood` over one key's novelties in [0, 1].

    For record ``c`` (0-based) with novelty ``n_c`` and value ``x_c``:

    * ``a`` = mean of the last ``min(c + 1, W)`` novelties (``W = short_window``), summed in
      the slot order of a ring of ``W`` slots (``n_c`` goes to slot ``c % W``);
    * from ``c >= warmup``: when there is no estimate yet or ``c % reestimate == 0``, the
      estimate ``(m, sd)`` of ``a`` over the records ``>= learn`` of the last
      ``ceil(long_window / reestimate)`` complete blocks of ``reestimate`` records and the
      current block: ``m = max(S1/S0, 0.03)``, ``sd = sqrt(max(S2/S0 - (S1/S0)^2, 0.0003))``
      (``m = 0.5, sd = 1000`` when ``S0 = 0``); ``y = a`` if ``a >= m`` else ``2m - a``;
      ``p = 0.5 erfc((y - m) / (sd sqrt 2))``; a ``p <= 1e-5`` is kept only when the previous
      record's ``p`` was ``> 1e-5`` and no kept one lies within the previous ``rest`` records,
      else it becomes ``1e-3``; score ``log(p + 1e-10) / log(1e-10)``;
    * ``spatial > 0`` (from ``c >= warmup``): ``x_c`` beyond ``[lo - spatial r, hi + spatial r]``
      (``lo``, ``hi`` = min and max of every earlier value, ``r = hi - lo > 0``) scores 1;
    * ``a`` joins the block accumulator (count, sum, sum of squares) when ``c >= learn``; the
      accumulator closes a block after records ``c`` with ``(c + 1) % reestimate == 0``.
    """
    nov = np.asarray(novelty, dtype=np.float64)
    x = _as_f64(values)
    n = len(nov)
    out = np.zeros(n)
    W, B = short_window, reestimate
    NB = -(-long_window // reestimate)
    ring = [0.0] * W
    blocks = [[0.0, 0.0, 0.0] for _ in range(NB)]
    acc = [0.0, 0.0, 0.0]
    m, sd, estimated = 0.5, 1000.0, False
    prev_tail, last = 1.0, -1
    lo = hi = 0.0
    for c in range(n):
        xv = x[c]
        if c == 0:
            lo = hi = xv
        ring[c % W] = float(nov[c])
        k = c + 1 if c + 1 < W else W
        a = 0.0
        for j in range(k):
            a += ring[j]
        a /= k
        score = 0.0
        if c >= warmup:
            if not estimated or c % B == 0:
                done = min(c // B, NB)
                s0, s1, s2 = acc
                for b in range(done):
                    s0 += blocks[b][0]
                    s1 += blocks[b][1]
                    s2 += blocks[b][2]
                if s0 > 0.0:
                    mm = s1 / s0
                    v = s2 / s0 - mm * mm
                    m = mm if mm > LIKELIHOOD_MEAN_FLOOR else LIKELIHOOD_MEAN_FLOOR
                    sd = math.sqrt(v if v >= LIKELIHOOD_VAR_FLOOR else LIKELIHOOD_VAR_FLOOR)
                else:
                    m, sd = 0.5, 1000.0
                estimated = True
            y = a if a >= m else 2.0 * m - a
            tail = 0.5 * math.erfc((y - m) / (sd * math.sqrt(2.0)))
            kept = tail
            if tail <= LIKELIHOOD_RED:
                if prev_tail > LIKELIHOOD_RED and (last < 0 or c - last > rest):
                    last = c
                else:
                    kept = LIKELIHOOD_YELLOW
            prev_tail = tail
            score = math.log(kept + 1e-10) / math.log(1e-10)
            if spatial > 0.0 and hi > lo:
                tol = (hi - lo) * spatial
                if xv > hi + tol or xv < lo - tol:
                    score = 1.0
        lo = min(lo, xv)
        hi = max(hi, xv)
        if c >= learn:
            acc[0] += 1.0
            acc[1] += a
            acc[2] += a * a
        if (c + 1) % B == 0:
            blocks[(c // B) % NB] = acc
            acc = [0.0, 0.0, 0.0]
        out[c] = score
    return out


def anomaly_likelihood(timestamps, values, base: str = "knn_discord", L: int = 4, H: int = 3000,
                       min_candidates: int = 50, tod_weight: float = 0.02, alpha: float = 0.05,
                       trend: float = 0.01, beta: float = 0.3, gamma: float = 0.01,
                       clip: float = 4.0, min_count: int = 30, scale: float = 1.0,
                       short_window: int = 10, long_window: int = 4000, reestimate: int = 100,
                       learn: int = 150, warmup: int = 300, rest: int = 200,
                       spatial: float = 0.05) -> np.ndarray:
    """Anomaly likelihood (``cusense.detectors.AnomalyLikelihood``): the raw scorer ``base``
    gives each record a deviation (``"knn_discord"``: :func:`knn_discord_tod_raw` with
    ``w_tod = tod_weight``, or :func:`knn_discord_raw` when it is 0; ``"multiscale_z"``: the
    ``z`` of :func:`multiscale_z_dev`), the novelty is ``min(1, deviation / scale)``, and
    :func:`likelihood_stage` gives the scores. No NaN values (NAB has none)."""
    x = _as_f64(values)
    if base == "knn_discord":
        dev = (knn_discord_tod_raw(timestamps, x, L=L, H=H, w_tod=tod_weight,
                                   min_candidates=min_candidates) if tod_weight > 0
               else knn_discord_raw(x, L=L, H=H, min_candidates=min_candidates))
    elif base == "multiscale_z":
        dev, _ = multiscale_z_dev(x, alpha=alpha, trend=trend, beta=beta, gamma=gamma, clip=clip,
                                  min_count=min_count)
    else:
        raise ValueError(f"base must be knn_discord or multiscale_z, got {base!r}")
    nov = np.clip(np.asarray(dev, dtype=np.float64) / scale, 0.0, 1.0)
    return likelihood_stage(nov, x, short_window=short_window, long_window=long_window,
                            reestimate=reestimate, learn=learn, warmup=warmup, rest=rest,
                            spatial=spatial)


DETECTORS: Dict[str, Detector] = {
    "ewma_z": ewma_zscore,
    "rolling_z": rolling_zscore,
    "rolling_mad": rolling_mad,
    "knn_discord": knn_discord,
    "multiscale_z": multiscale_z,
    "knn_discord_tod": knn_discord_tod,
    "anomaly_likelihood": anomaly_likelihood,
}
