"""Session windows with allowed lateness against a direct model of the documented rules: rows
(and their order), is_update flags, late records and the open-state counters, for random
streams with disorder, silences, late records and merges of emitted with open sessions."""
import numpy as np

import cusense


class SessionModel:
    """The rules of the session engine, record by record (integer values, so sums are exact)."""

    def __init__(self, gap, ooo, lateness):
        self.gap, self.ooo, self.lateness = gap, ooo, lateness
        self.max_ts = None
        self.sessions = {}  # key -> list of dicts: first, last, count, sum, emitted, closed
        self.freed_until = {}
        self.rows, self.late = [], []

    def row(self, key, s, update):
        self.rows.append((key, s["first"], s["last"] + self.gap, s["count"], s["sum"], update))

    def push(self, key, t, v):
        if self.max_ts is not None:
            horizon = self.max_ts - self.ooo - self.lateness
            if t + self.gap <= horizon or t < self.freed_until.get(key, -np.inf):
                self.late.append(t)
                return
        sessions = self.sessions.setdefault(key, [])
        touching = [s for s in sessions if s["first"] - self.gap < t < s["last"] + self.gap]
        merged = dict(first=t, last=t, count=1, sum=v, emitted=False, closed=False)
        for s in touching:
            sessions.remove(s)
            merged["first"] = min(merged["first"], s["first"])
            merged["last"] = max(merged["last"], s["last"])
            merged["count"] += s["count"]
            merged["sum"] += s["sum"]
            merged["emitted"] = merged["emitted"] or s["emitted"]
        sessions.append(merged)
        if self.max_ts is not None and merged["last"] + self.gap <= self.max_ts - self.ooo:
            merged["closed"] = merged["emitted"] = True  # changes an emitted session: again now
            self.row(key, merged, True)
        if self.max_ts is None or t > self.max_ts:
            self.max_ts = t
            self.close(self.max_ts - self.ooo, self.max_ts - self.ooo - self.lateness)

    def close(self, emit_limit, free_limit, mark=True):
        ready = sorted((s["first"], k, s) for k, ss in self.sessions.items() for s in ss
                       if not s["closed"] and s["last"] + self.gap <= emit_limit)
        for _, k, s in ready:
            self.row(k, s, s["emitted"])
            s["emitted"] = s["closed"] = True
        for k, ss in self.sessions.items():
            for s in [s for s in ss if s["closed"] and s["last"] + self.gap <= free_limit]:
                ss.remove(s)
                if mark:
                    self.freed_until[k] = max(self.freed_until.get(k, -np.inf), s["last"] + self.gap)

    def flush(self):
        self.close(np.inf, np.inf, mark=False)
        self.freed_until.clear()

    def open_windows(self):
        return sum(len(ss) for ss in self.sessions.values())

    def open_keys(self):
        return sum(1 for ss in self.sessions.values() if ss)


def test_session_lateness_matches_model(backend, rng):
    for _ in range(4):
        gap, ooo, lateness = int(rng.integers(3, 30)), int(rng.integers(0, 40)), int(rng.integers(1, 120))
        n, n_keys = 3000, int(rng.integers(1, 60))
        steps = rng.integers(0, 3, n) + np.where(rng.random(n) < 0.01, rng.integers(0, 300, n), 0)
        ts = np.cumsum(steps) - np.where(rng.random(n) < 0.3, rng.integers(0, ooo + lateness + 2 * gap + 1, n), 0)
        keys = (rng.integers(0, n_keys, n) * 7919).astype(np.uint32)
        values = rng.integers(-50, 50, n).astype(np.float64)
        pipe = cusense.Pipeline(cusense.Session(gap), aggs=["count", "sum"], max_out_of_orderness=ooo,
                                allowed_lateness=lateness, backend=backend)
        model = SessionModel(gap, ooo, lateness)
        got_rows, got_late = [], []
        cuts = np.unique(np.concatenate(([0, n], rng.integers(0, n, 40))))
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            pipe.push(keys[lo:hi], ts[lo:hi], values[lo:hi])
            for i in range(lo, hi):
                model.push(int(keys[i]), int(ts[i]), float(values[i]))
            res = pipe.poll()
            got_rows += list(zip(*(res[c].tolist() for c in
                                   ("key", "window_start", "window_end", "count", "sum", "is_update"))))
            got_late += pipe.poll_late()["timestamp"].tolist()
            assert pipe.stats["open_windows"] == model.open_windows()
            assert pipe.stats["open_keys"] == model.open_keys()
        res = pipe.flush()
        model.flush()
        got_rows += list(zip(*(res[c].tolist() for c in
                               ("key", "window_start", "window_end", "count", "sum", "is_update"))))
        assert model.late and any(r[5] for r in model.rows)  # the stream exercises both
        assert got_late == model.late
        assert got_rows == [(k, s, e, c, sm, bool(u)) for k, s, e, c, sm, u in model.rows]
