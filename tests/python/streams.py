"""Helpers shared by the Python tests: random batch cuts and running a stream through a
pipeline in batches. The oracles stay in each test module."""
import cusense


def random_cuts(rng, n, max_batch):
    """Batch bounds [0, ..., n] with batches of 1 to max_batch - 1 records."""
    cuts = [0]
    while cuts[-1] < n:
        cuts.append(min(n, cuts[-1] + int(rng.integers(1, max_batch))))
    return cuts


def run_windows(pipe, keys, ts, values, cuts):
    """Pushes the stream cut at `cuts`, polling after each batch, then flushes; returns the
    windows and the late records."""
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        # The synthetic streams are nanoseconds near 1970: say so, or a batch whose times look
        # like seconds or milliseconds of today would give a TimeUnitWarning.
        pipe.push(keys[a:b], ts[a:b], values[a:b], time_unit="ns")
        parts.append(pipe.poll())
    parts.append(pipe.flush())
    return cusense.Result.concat(parts), pipe.poll_late()
