"""Generated fleet of sensors for the fleet anomaly benchmark (``evaluate.py``).

Every sensor reports one value per ``period`` (with up to +-20 % timestamp jitter) for ``days``
days. A healthy sensor is ``level + daily cycle + noise``: the cycle's amplitude is 0 to 8 times
the noise sd, the noise an AR(1) process (phi 0 to 0.3) scaled to sd ``sigma`` (so "k sd" below
is k times the sensor's noise sd). Half the sensors stay healthy; the other half get one fault,
starting at a random time after the first day:

| fault | what |
|---|---|
| ``spike`` | one value off by 6 to 12 sd (either sign) |
| ``level_shift`` | every value from the start on off by 4 to 8 sd (either sign) |
| ``drift`` | a ramp reaching 6 sd after 6 hours, then continuing |
| ``flatline`` | the value stuck at its last reading for 3 hours |
| ``variance`` | the noise sd multiplied by 4 for 3 hours |
| ``silence`` | no records for 3 hours |

The generator is deterministic in ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAULTS = ("spike", "level_shift", "drift", "flatline", "variance", "silence")
DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9


@dataclass
class Fleet:
    keys: np.ndarray        # uint32, records in time order (all sensors interleaved)
    ts: np.ndarray          # int64 ns
    values: np.ndarray      # float64
    fault: np.ndarray       # per sensor: index into FAULTS, or -1 (healthy)
    fault_start: np.ndarray  # per sensor: int64 ns (0 when healthy)
    fault_end: np.ndarray    # per sensor: int64 ns, end of the fault episode (spike: start)
    magnitude: np.ndarray    # per sensor: fault size in sd (signed), 0 when not applicable
    sigma: np.ndarray        # per sensor noise sd
    period_ns: int
    days: float

    @property
    def sensors(self) -> int:
        return len(self.fault)


def generate(sensors: int = 2000, days: float = 3.0, period_s: float = 120.0, seed: int = 0) -> Fleet:
    rng = np.random.default_rng(seed)
    period = int(period_s * 10**9)
    n = int(days * DAY_NS // period)
    t0 = 1_700_000_000 * 10**9
    steps = np.arange(n, dtype=np.int64) * period
    jitter = rng.integers(-period // 5, period // 5 + 1, size=(sensors, n))
    ts = t0 + steps[None, :] + jitter
    ts[:, 0] = t0 + np.abs(jitter[:, 0])

    sigma = np.exp(rng.normal(0.0, 1.0, sensors))
    level = rng.normal(0.0, 50.0, sensors)
    amp = rng.uniform(0.0, 8.0, sensors) * sigma
    phase = rng.uniform(0, 2 * np.pi, sensors)
    phi = rng.uniform(0.0, 0.3, sensors)
    e = rng.normal(size=(sensors, n))
    noise = np.empty_like(e)
    noise[:, 0] = e[:, 0]
    for j in range(1, n):
        noise[:, j] = phi * noise[:, j - 1] + np.sqrt(1 - phi**2) * e[:, j]
    tday = (ts - t0) / DAY_NS
    x = level[:, None] + amp[:, None] * np.sin(2 * np.pi * tday + phase[:, None]) + sigma[:, None] * noise

    fault = np.full(sensors, -1, dtype=np.int64)
    faulty = rng.permutation(sensors)[: sensors // 2]
    fault[faulty] = np.arange(len(faulty)) % len(FAULTS)
    start = np.zeros(sensors, dtype=np.int64)
    end = np.zeros(sensors, dtype=np.int64)
    mag = np.zeros(sensors)
    keep = np.ones((sensors, n), dtype=bool)
    episode = 3 * HOUR_NS
    for s in faulty:
        f = FAULTS[fault[s]]
        j0 = int(rng.integers(int(DAY_NS // period), n - int(7 * HOUR_NS // period)))
        start[s] = ts[s, j0]
        sign = rng.choice([-1.0, 1.0])
        if f == "spike":
            mag[s] = sign * rng.uniform(6, 12)
            x[s, j0] += mag[s] * sigma[s]
            end[s] = start[s]
        elif f == "level_shift":
            mag[s] = sign * rng.uniform(4, 8)
            x[s, j0:] += mag[s] * sigma[s]
            end[s] = ts[s, -1]
        elif f == "drift":
            mag[s] = sign * 6.0
            x[s, j0:] += mag[s] * sigma[s] * (ts[s, j0:] - start[s]) / (6 * HOUR_NS)
            end[s] = ts[s, -1]
        else:
            j1 = min(n, j0 + int(episode // period))
            end[s] = ts[s, j1 - 1]
            if f == "flatline":
                x[s, j0:j1] = x[s, j0 - 1]
            elif f == "variance":
                mag[s] = 4.0
                x[s, j0:j1] += 3.0 * sigma[s] * noise[s, j0:j1]
            elif f == "silence":
                keep[s, j0:j1] = False
    keys = np.broadcast_to(np.arange(sensors, dtype=np.uint32)[:, None], (sensors, n))
    kk, tt, xx = keys[keep], ts[keep], x[keep]
    order = np.argsort(tt, kind="stable")
    return Fleet(kk[order], tt[order], xx[order], fault, start, end, mag, sigma, period, days)
