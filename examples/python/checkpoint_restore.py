"""Checkpoint a pipeline mid-stream, restore it (as after a crash) and check that the
restored run emits exactly what an uninterrupted run emits.

    python examples/python/checkpoint_restore.py
"""
import os
import tempfile

import numpy as np
import pandas as pd

import cusense

rng = np.random.default_rng(3)
N = 200_000
keys = rng.integers(0, 100, N).astype(np.uint32)
ts = np.sort(rng.integers(0, 600 * 10**9, N))
values = rng.normal(0, 1, N)
first, rest = slice(0, N // 2), slice(N // 2, N)


def new_pipeline():
    # the CPU backend restores bit-identically; checkpoints are backend-neutral
    return cusense.Pipeline(window=cusense.Tumbling("10s"), aggs=["count", "mean", "std", "p90"],
                            max_out_of_orderness="1s", backend="cpu")


# The reference: one uninterrupted run.
whole = new_pipeline()
whole.push(keys, ts, values)
expected = whole.flush().to_pandas()

# The interrupted run: first half, checkpoint, "crash", restore, second half.
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "state.ckpt")
    pipe = new_pipeline()
    pipe.push(keys[first], ts[first], values[first])
    before = pipe.poll().to_pandas()                   # windows already written out
    pipe.checkpoint(path)
    del pipe                                           # the process dies here
    pipe = cusense.Pipeline.restore(path, backend="cpu")
    print(f"checkpoint: {os.path.getsize(path):,} bytes")
    pipe.push(keys[rest], ts[rest], values[rest])
    after = pipe.flush().to_pandas()

got = pd.concat([before, after], ignore_index=True)
print(f"windows: {len(got)} (uninterrupted run: {len(expected)})")
print(f"restored run matches the uninterrupted run: {got.equals(expected)}")
