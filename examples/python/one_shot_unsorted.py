"""One-shot aggregation of unsorted records with cusense.window_aggregate, checked against
pandas.

    python examples/python/one_shot_unsorted.py
"""
import numpy as np
import pandas as pd

import cusense

rng = np.random.default_rng(5)
N = 100_000
df = pd.DataFrame({
    "sensor": rng.integers(0, 50, N).astype(np.uint32),
    # a day of readings in random order (e.g. files collected from devices at different times)
    "time": pd.Timestamp("2026-03-01") + pd.to_timedelta(rng.integers(0, 86_400, N), unit="s"),
    "kwh": rng.gamma(2.0, 0.5, N),
})

# The whole input is known, so every record counts whatever its order (nothing is late).
hourly = cusense.window_aggregate(df["sensor"].to_numpy(), df["time"].to_numpy(), df["kwh"].to_numpy(),
                                  window=cusense.Tumbling("1h"), aggs=["count", "sum", "max"]).to_pandas()

expected = (df.assign(window_start=df["time"].dt.floor("1h"))
              .groupby(["window_start", "sensor"])["kwh"].agg(["count", "sum", "max"]).reset_index())
print(hourly.head(3).to_string(index=False))
same = (len(hourly) == len(expected)
        and (hourly["count"].to_numpy() == expected["count"].to_numpy()).all()
        and np.allclose(hourly["sum"].to_numpy(), expected["sum"].to_numpy(), rtol=1e-9))
print(f"{len(hourly)} hourly windows from {N} unsorted records; matches pandas: {same}")
