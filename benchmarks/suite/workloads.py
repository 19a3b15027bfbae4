"""What the suite measures: the synthetic sensor stream, the tumbling-window cases of the sweeps
(sweeps.py) and the window workloads of ``--windows`` (windows.py)."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

RECORD_BYTES = 16  # key uint32 + timestamp int64 + value float32, as pushed
WINDOW_NS = 10 * 10**9  # 10 s tumbling windows
T0 = 1_700_000_000 * 10**9
AGGS5 = ("count", "sum", "mean", "min", "max")
AGGS7 = AGGS5 + ("var", "std")


def si(x: float) -> str:
    if x >= 1 and math.log10(x).is_integer():
        return f"1e{int(math.log10(x))}"
    return f"{x:g}"


@dataclasses.dataclass(frozen=True)
class Case:
    records: int
    keys: int
    batch: int
    aggs: tuple = AGGS5
    per_window: float = 100.0  # records per (key, window) on average

    @property
    def label(self) -> str:
        label = (f"records={si(self.records)} keys={si(self.keys)} batch={si(self.batch)} "
                 f"aggs={len(self.aggs)}")
        return label if self.per_window == 100.0 else f"{label} per_window={self.per_window:g}"


@dataclasses.dataclass
class Stream:
    keys: np.ndarray  # uint32
    ts: np.ndarray  # int64 ns
    values: np.ndarray  # float32
    disorder_ns: int  # max_out_of_orderness that makes no record late


def make_stream(records: int, keys: int, per_window: float = 100.0, seed: int = 42,
                active: float = 1.0, cycle_ns: int = WINDOW_NS) -> Stream:
    """Synthetic sensor stream: keys uniform in [0, keys); record i at T0 + i*dt minus a jitter in
    [0, disorder) (mild disorder, up to 5% of a window), dt = window / (keys * per_window);
    float32 values ~ N(20, 5). With max_out_of_orderness = disorder no record is late.

    ``active < 1`` makes the keys bursty (for session windows): each key is silent for
    ``(1 - active) * cycle_ns`` of every cycle, the phases spread evenly over the keys, so every
    key still gets the same share of the records and there is always the same number of keys
    sending."""
    rng = np.random.default_rng(seed)
    dt = WINDOW_NS / (keys * per_window)
    disorder = WINDOW_NS // 20
    ts = (np.arange(records, dtype=np.float64) * dt).astype(np.int64)
    if active >= 1.0:
        k = rng.integers(0, keys, records, dtype=np.uint32)
    else:
        # the senders at time t are a block of n_active keys that rotates once per cycle
        n_active = max(1, math.ceil(active * keys))
        rot = (ts % cycle_ns) * keys // cycle_ns
        k = ((rng.integers(0, n_active, records, dtype=np.int64) + rot) % keys).astype(np.uint32)
    ts += T0
    ts -= rng.integers(0, disorder, records, dtype=np.int64)
    v = rng.standard_normal(records, dtype=np.float32)
    v *= 5.0
    v += 20.0
    return Stream(k, ts, v, disorder)


# window workloads (--windows, windows.py): their window parameters and aggregations
SLIDING_SIZE_NS = 10 * 10**9
SLIDING_SLIDE_NS = 2 * 10**9
SESSION_GAP_NS = 10**9
SESSION_CYCLE_NS = 10 * 10**9  # session stream: each key sends for SESSION_ACTIVE of every cycle
SESSION_ACTIVE = 0.7
ROLLING_N = 10
AGGS_WIN = ("count", "mean", "min", "max")


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    description: str
    window: object  # cusense window
    aggs: tuple
    columns: tuple  # compared, besides the aggregations (the first ones form the sort key)
    sort_by: tuple
    stream: Callable  # (records, keys) -> Stream
    peers: dict  # peer name -> fn(stream, workload) -> dict of numpy columns
    expansion: float = 1.0  # peer rows per record (sliding: windows per record), for the memory guard
