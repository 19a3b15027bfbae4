"""An independent pandas computation of what the fleet service must store, written plainly from
the documented semantics (README: window semantics), for the service tests."""
from __future__ import annotations

import numpy as np
import pandas as pd


def tumbling_windows(readings: pd.DataFrame, size_ns: int, max_out_of_orderness_ns: int):
    """(emitted windows, late readings) for readings in arrival order (device, channel,
    timestamp ns, value): a reading is late when its window ended at or before the watermark
    just before it (largest earlier event time minus the bound); windows are emitted once the
    final watermark reaches their end."""
    ts = readings["timestamp"].to_numpy(np.int64)
    running_max = np.maximum.accumulate(ts)
    watermark_before = np.empty_like(ts)
    watermark_before[0] = np.iinfo(np.int64).min
    watermark_before[1:] = running_max[:-1] - max_out_of_orderness_ns
    start = (ts // size_ns) * size_ns
    end = start + size_ns
    late = end <= watermark_before
    kept = readings[~late].assign(window_start=start[~late], window_end=end[~late])
    final_watermark = int(running_max[-1]) - max_out_of_orderness_ns
    kept = kept[kept["window_end"] <= final_watermark]
    windows = (kept.groupby(["device", "channel", "window_start"], as_index=False)
               .agg(count=("value", "size"), mean=("value", "mean"), min=("value", "min"),
                    max=("value", "max")))
    return windows.sort_values(["device", "channel", "window_start"]).reset_index(drop=True), \
        readings[late].reset_index(drop=True)


def compare_windows(stored: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same windows, exact counts, min and max; means to rounding."""
    stored = stored.copy()
    stored["window_start"] = (pd.to_datetime(stored["window_start"], utc=True)
                              .dt.tz_localize(None).astype("datetime64[ns]").astype(np.int64))
    stored = stored.sort_values(["device", "channel", "window_start"]).reset_index(drop=True)
    assert len(stored) == len(expected), f"{len(stored)} windows stored, {len(expected)} expected"
    for col in ("device", "channel", "window_start", "count", "min", "max"):
        np.testing.assert_array_equal(stored[col].to_numpy(), expected[col].to_numpy(), err_msg=col)
    np.testing.assert_allclose(stored["mean"].to_numpy(float), expected["mean"].to_numpy(float),
                               rtol=1e-12, atol=1e-12)
