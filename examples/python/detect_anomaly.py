"""Anomaly scores on a generated stream with one injected spike, scored as it streams in.

    python examples/python/detect_anomaly.py
"""
import numpy as np
import pandas as pd

import cusense
from cusense import detectors as D

SENSORS, PER_SENSOR = 5, 2_000
SPIKE_SENSOR, SPIKE_AT = 3, 1_500
rng = np.random.default_rng(1)

# Every sensor reports once a second (times in seconds: time_unit="s" below): a slow sine plus
# noise; one reading jumps.
t = np.arange(PER_SENSOR, dtype=np.int64)
keys = np.repeat(np.arange(SENSORS, dtype=np.uint32), PER_SENSOR)
ts = np.tile(t, SENSORS)
values = np.sin(ts / 300) + rng.normal(0, 0.05, SENSORS * PER_SENSOR)
spike = SPIKE_SENSOR * PER_SENSOR + SPIKE_AT
values[spike] += 3.0
order = np.argsort(ts, kind="stable")                 # arrival order: by time, sensors interleaved
keys, ts, values = keys[order], ts[order], values[order]

# min_count: no alarms until a sensor has 30 earlier values (its warm-up)
pipe = cusense.Pipeline(window=None, detectors=[D.EWMA(alpha=0.05, threshold=0.9, min_count=30),
                                                D.RollingZ(window=60, threshold=0.9, min_count=30)])
scores = []
for part in np.array_split(np.arange(len(ts)), 10):  # ten micro-batches
    pipe.push(keys[part], ts[part], values[part], time_unit="s")
    scores.append(pipe.poll_scores().to_pandas(datetimes=False))
pipe.flush()
scores.append(pipe.poll_scores().to_pandas(datetimes=False))

scores = pd.concat(scores, ignore_index=True)
flagged = scores[scores["is_anomaly_ewma"] & scores["is_anomaly_rolling_z"]]
print(flagged[["key", "timestamp", "value", "score_ewma", "score_rolling_z"]].to_string(index=False))
hit = ((flagged["key"] == SPIKE_SENSOR) & (flagged["timestamp"] == SPIKE_AT * 10**9)).any()
print(f"scored {len(scores)} records; injected spike at sensor {SPIKE_SENSOR}, "
      f"t={SPIKE_AT}s: {'found' if hit else 'missed'}")
