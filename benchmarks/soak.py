#!/usr/bin/env python3
"""Soak benchmark: a simulated sensor fleet streamed through cusense pipelines for a day.

    .venv/bin/python benchmarks/soak.py [--quick] [--hours H] [--sensors N] [--out DIR]

A generated fleet (no external data) reports readings for ``--hours`` of simulated time
(default 24). Sensors join during a ramp-up, then leave and are replaced by new ones (new key
ids: the set of active keys changes while its size stays near ``--sensors``); a sensor falls
silent now and then for minutes to an hour; readings arrive out of order within the
pipelines' ``max_out_of_orderness``, and every so often a *late burst* replays readings that
are already behind the watermark (they must be counted late, never lost). Each pipeline kind
runs in its own process, so its RSS is its own:

    tumbling   Tumbling("1min"), moments, allowed_lateness="1min"
    sliding    Sliding("5min", "1min"), mean/max and quantiles (p50, p99)
    session    Session("2min"), count/first/last/mean
    rolling    Rolling(10), mean/std/min/max (count windows), with key_ttl="2h"
    detectors  detectors.default() and detectors.Silence("10min"), no window, with
               key_ttl="2h"
    (key_ttl: a key silent for longer than any silence of the fleet is forgotten, so the
    per-key histories follow the active keys)

Every few simulated minutes a pipeline is checkpointed (``pipe.checkpoint``), and every few
hours it is restored from that checkpoint (``Pipeline.restore``) and the run continues with
the restored pipeline. Over simulated time the run samples the process RSS (VmRSS),
``stats`` (``state_bytes``, ``open_windows``, ``open_keys``, records pushed / aggregated /
late / rejected) and the checkpoint file size.

Checks, per pipeline: every record pushed is aggregated, late or rejected; the records of the
late bursts are exactly the late ones; and in the second half of the run (after the ramp-up)
``state_bytes``, the checkpoint size and RSS are flat: every sample within a band around the
median, and the least-squares slope, times the span of the half, at most a small fraction of
the median (no growth trend) (the bounds are in ``BOUNDS`` and written into the report). A pipeline kind whose
state grows by design with every key ever seen is listed in ``KNOWN_GROWTH``: it is reported
as growing (rate per hour and per new key), not passed as flat.

Results go to benchmarks/results/soak-<machine>-<date>/ (soak.json, README.md, soak.png).
``--quick`` runs a small fleet for 2 simulated hours (well under a minute); the CI test
(tests/python/test_soak.py) runs it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SECOND = 10**9
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
EPOCH = 1_790_000_000 * SECOND  # 2026-09-21 UTC: an arbitrary start of simulated time

KINDS = ("tumbling", "sliding", "session", "rolling", "detectors")

# Flatness bounds, applied to the samples of the second half of the run.
BOUNDS = {
    # every sample within this fraction of the median (state varies with the active keys)
    "state_band": 0.35,
    # slope * span of the half, as a fraction of the median: the growth allowed
    "state_trend": 0.10,
    "rss_band": 0.25,     # the allocator keeps freed memory: RSS steps at restores
    "rss_trend": 0.05,
}

# Kinds whose state grows with every key ever seen, by their semantics: reported as growth.
# (Count windows and detectors keep per-key histories; both expire keys with key_ttl, which
# their pipelines here set, so there is none.)
KNOWN_GROWTH: dict[str, str] = {}

# Event time after which the rolling and detectors pipelines forget a key: longer than any
# silence of the fleet (silence_max_min), so only sensors that left the fleet expire.
KEY_TTL = "2h"


@dataclass
class Config:
    hours: float = 24.0
    sensors: int = 10000           # active sensors once ramped up
    period_s: float = 30.0         # mean reporting interval of a sensor
    step_s: float = 10.0           # one push per step of simulated time
    ramp_hours: float = 1.0        # sensors join linearly over this span
    lifetime_hours: float = 3.0    # mean lifetime of a sensor (exponential) after the ramp-up
    silence_per_hour: float = 0.1  # chance per hour that an active sensor falls silent
    silence_max_min: float = 60.0  # silences last 5 .. this many minutes
    late_every_min: float = 30.0   # a late burst every this many minutes
    late_burst: int = 200          # readings per late burst
    ooo_s: float = 30.0            # max_out_of_orderness of the pipelines
    delay_s: float = 20.0          # delivery delay of ordinary readings (< ooo_s: none late)
    checkpoint_every_min: float = 5.0
    restore_every_hours: float = 3.0
    sample_every_min: float = 10.0
    seed: int = 1
    # Self-tests of the checks only: keep this many bytes per key that joins, forever (an RSS
    # leak in the driver), or never poll the outputs (they pile up in the pipeline).
    leak_bytes_per_key: int = 0
    skip_polls: bool = False


QUICK = dict(hours=6.0, sensors=500, ramp_hours=0.5, lifetime_hours=1.0, silence_per_hour=0.5,
             silence_max_min=20.0, late_every_min=10.0, late_burst=50, checkpoint_every_min=5.0,
             restore_every_hours=1.0, sample_every_min=5.0)


def make_pipeline(kind: str, cfg: Config):
    import cusense
    from cusense import detectors

    common = dict(backend="cpu", cpu_threads=1, max_out_of_orderness=int(cfg.ooo_s * SECOND))
    if kind == "tumbling":
        return cusense.Pipeline(cusense.Tumbling("1min"),
                                aggs=["count", "sum", "mean", "min", "max", "var", "std"],
                                allowed_lateness="1min", **common)
    if kind == "sliding":
        return cusense.Pipeline(cusense.Sliding("5min", "1min"), aggs=["count", "mean", "max", "p50", "p99"],
                                **common)
    if kind == "session":
        return cusense.Pipeline(cusense.Session("2min"), aggs=["count", "first", "last", "mean"], **common)
    if kind == "rolling":
        return cusense.Pipeline(cusense.Rolling(10), aggs=["mean", "std", "min", "max"],
                                key_ttl=KEY_TTL, **common)
    if kind == "detectors":
        return cusense.Pipeline(None, detectors=[detectors.default(), detectors.Silence("10min")],
                                key_ttl=KEY_TTL, **common)
    raise ValueError(f"unknown pipeline kind {kind!r}")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Fleet:
    """The simulated fleet: which sensors are active and silent at each step, and their readings.

    Deterministic for a seed, so every pipeline process sees the same stream."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.step = int(cfg.step_s * SECOND)
        self.next_id = 0
        self.active = np.zeros(0, np.uint32)       # key ids
        self.leaves_at = np.zeros(0, np.int64)     # event time the sensor leaves the fleet
        self.silent_until = np.zeros(0, np.int64)  # event time its current silence ends
        self.level = np.zeros(0, np.float64)       # each sensor's typical value
        self.recent: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # for late bursts
        self.joined = 0

    def _join(self, n: int, now: int) -> None:
        if n <= 0:
            return
        cfg, rng = self.cfg, self.rng
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.uint32)
        self.next_id += n
        self.joined += n
        life = rng.exponential(cfg.lifetime_hours * HOUR, n).astype(np.int64)
        # sensors of the ramp-up live at least until its end, so the fleet ramps up to its size
        ramp_end = EPOCH + int(cfg.ramp_hours * HOUR)
        self.active = np.concatenate([self.active, ids])
        self.leaves_at = np.concatenate([self.leaves_at, np.maximum(now, ramp_end) + life])
        self.silent_until = np.concatenate([self.silent_until, np.zeros(n, np.int64)])
        self.level = np.concatenate([self.level, rng.normal(20.0, 5.0, n)])

    def batch(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The readings delivered during step ``i`` (arrival order) and how many are a late burst
        (they come last)."""
        cfg, rng = self.cfg, self.rng
        end = EPOCH + (i + 1) * self.step
        # joining: linear ramp-up, then one new sensor for each that left
        target = cfg.sensors if end >= EPOCH + cfg.ramp_hours * HOUR else \
            int(cfg.sensors * (end - EPOCH) / (cfg.ramp_hours * HOUR))
        stay = self.leaves_at > end
        if not stay.all():
            self.active, self.leaves_at = self.active[stay], self.leaves_at[stay]
            self.silent_until, self.level = self.silent_until[stay], self.level[stay]
        self._join(target - len(self.active), end)
        # silences
        p_silent = cfg.silence_per_hour * cfg.step_s / 3600.0
        start = (self.silent_until <= end) & (rng.random(len(self.active)) < p_silent)
        if start.any():
            self.silent_until[start] = end + (rng.uniform(5.0, cfg.silence_max_min, start.sum()) * MINUTE
                                              ).astype(np.int64)
        on = self.silent_until <= end
        # readings: each sensor on reports with probability step/period, at a random time of the
        # step, delivered after a delay below max_out_of_orderness
        sends = on & (rng.random(len(self.active)) < cfg.step_s / cfg.period_s)
        keys = self.active[sends]
        n = len(keys)
        ts = end - (rng.uniform(0.0, cfg.step_s + cfg.delay_s, n) * SECOND).astype(np.int64)
        ts = np.maximum(ts, EPOCH)
        values = self.level[sends] + rng.normal(0.0, 1.0, n)
        order = rng.permutation(n)
        keys, ts, values = keys[order], ts[order], values[order]
        self.recent.append((keys, ts, values))
        del self.recent[:-int(HOUR // self.step)]  # the last hour, for the late bursts
        n_late = 0
        every = max(1, int(cfg.late_every_min * MINUTE // self.step))
        if (i + 1) % every == 0 and end - EPOCH >= HOUR // 2:
            # a late burst: readings of 15 to 60 minutes ago arriving again (a gateway's
            # backlog), behind the watermark of every pipeline kind here
            old_k = np.concatenate([k for k, _, _ in self.recent])
            old_t = np.concatenate([t for _, t, _ in self.recent])
            old_v = np.concatenate([v for _, _, v in self.recent])
            age = end - old_t
            pick = np.flatnonzero((age >= 15 * MINUTE) & (age <= 60 * MINUTE))
            if len(pick):
                pick = rng.choice(pick, min(cfg.late_burst, len(pick)), replace=False)
                keys = np.concatenate([keys, old_k[pick]])
                ts = np.concatenate([ts, old_t[pick]])
                values = np.concatenate([values, old_v[pick]])
                n_late = len(pick)
        return keys, ts, values, n_late


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def run_kind(kind: str, cfg: Config, progress: bool = True) -> dict:
    """Stream the fleet through one pipeline kind in this process; the samples and totals."""
    import cusense

    fleet = Fleet(cfg)
    pipe = make_pipeline(kind, cfg)
    steps = int(cfg.hours * HOUR // fleet.step)
    per_min = MINUTE // fleet.step
    ckpt_every = max(1, int(cfg.checkpoint_every_min * per_min))
    restore_every = max(1, int(cfg.restore_every_hours * 60 * per_min))
    sample_every = max(1, int(cfg.sample_every_min * per_min))
    has_silence = kind == "detectors"
    leak: list[bytes] = []
    totals = dict(pushed=0, late_expected=0, late_polled=0, rows=0, scores=0, silence_events=0,
                  checkpoints=0, restores=0, checkpoint_s=0.0, restore_s=0.0,
                  restore_state_bytes=[])
    samples = []
    ckpt_size = 0
    t0 = time.perf_counter()
    last_report = t0
    with tempfile.TemporaryDirectory(prefix="cusense-soak-") as tmp:
        ckpt = os.path.join(tmp, f"{kind}.ckpt")
        for i in range(steps):
            joined_before = fleet.joined
            k, t, v, n_late = fleet.batch(i)
            if cfg.leak_bytes_per_key:
                leak.extend(os.urandom(cfg.leak_bytes_per_key) for _ in range(fleet.joined - joined_before))
            pipe.push(k, t, v)
            totals["pushed"] += len(k)
            totals["late_expected"] += n_late
            if not cfg.skip_polls:
                totals["rows"] += len(pipe.poll())
                totals["late_polled"] += len(pipe.poll_late())
                if pipe.detectors:
                    scores = pipe.poll_scores()
                    totals["scores"] += len(scores)
                    if pipe.window is None:
                        totals["late_polled"] += int(np.count_nonzero(scores["late"]))
                if has_silence:
                    totals["silence_events"] += len(pipe.poll_silence())
            if (i + 1) % ckpt_every == 0:
                c0 = time.perf_counter()
                pipe.checkpoint(ckpt)
                totals["checkpoint_s"] += time.perf_counter() - c0
                totals["checkpoints"] += 1
                ckpt_size = os.path.getsize(ckpt)
                if (i + 1) % restore_every == 0:
                    before = pipe.stats
                    c0 = time.perf_counter()
                    pipe = cusense.Pipeline.restore(ckpt, backend="cpu")
                    totals["restore_s"] += time.perf_counter() - c0
                    totals["restores"] += 1
                    after = pipe.stats
                    # state_bytes is an estimate (a restored quantile sketch may be stored more
                    # compactly): it is recorded, every other figure must match
                    totals["restore_state_bytes"].append([before["state_bytes"], after["state_bytes"]])
                    if {**after, "state_bytes": 0} != {**before, "state_bytes": 0}:
                        raise AssertionError(f"{kind}: stats changed by restore: {before} -> {after}")
            if (i + 1) % sample_every == 0 or i == steps - 1:
                st = pipe.stats
                samples.append(dict(
                    hours=(i + 1) * fleet.step / HOUR, wall_s=time.perf_counter() - t0, rss=rss_bytes(),
                    state_bytes=st["state_bytes"], open_windows=st["open_windows"],
                    open_keys=st["open_keys"], checkpoint_bytes=ckpt_size,
                    records_pushed=st["records_pushed"], records_aggregated=st["records_aggregated"],
                    records_late=st["records_late"], records_rejected=st["records_rejected"],
                    records_scored=st["records_scored"], records_score_late=st["records_score_late"],
                    records_score_buffered=st["records_score_buffered"], active_sensors=int(len(fleet.active)),
                    keys_seen=fleet.joined))
                now = time.perf_counter()
                if progress and (now - last_report >= 5.0 or i == steps - 1):
                    last_report = now
                    s = samples[-1]
                    print(f"soak {kind:9s} {s['hours']:6.2f}/{cfg.hours:g} h  {s['records_pushed']:>11,} records  "
                          f"RSS {_fmt_bytes(s['rss'])}  state {_fmt_bytes(s['state_bytes'])}  "
                          f"ckpt {_fmt_bytes(s['checkpoint_bytes'])}  {now - t0:6.1f} s",
                          file=sys.stderr, flush=True)
        final = pipe.stats
    totals["wall_s"] = time.perf_counter() - t0
    return dict(kind=kind, samples=samples, totals=totals, final_stats=final,
                window=None if pipe.window is None else repr(pipe.window), aggs=pipe.aggs,
                detectors=[repr(d) for d in pipe.detectors])


def trend(hours: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope (units per hour) and median of a series."""
    x, y = np.asarray(hours, float), np.asarray(ys, float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(x) >= 2 and np.ptp(x) > 0 else 0.0
    return slope, float(np.median(y))


def flatness(samples: list[dict], metric: str, band: float, trend_bound: float) -> dict:
    """Is ``metric`` flat over the second half of the run? Band and trend relative to the median."""
    span = samples[-1]["hours"]
    half = [s for s in samples if s["hours"] >= span / 2]
    hours = [s["hours"] for s in half]
    ys = [s[metric] for s in half]
    slope, med = trend(hours, ys)
    width = hours[-1] - hours[0] if hours else 0.0
    if med == 0:
        worst, growth = (0.0 if max(ys, default=0) == 0 else float("inf")), (0.0 if slope == 0 else float("inf"))
    else:
        worst = max(abs(y - med) / med for y in ys)
        growth = slope * width / med  # shrinking is not growth
    return dict(metric=metric, start=samples[0][metric], median=med, end=ys[-1] if ys else None,
                min=min(ys), max=max(ys), slope_per_hour=slope, max_deviation=worst, trend=growth,
                band_bound=band, trend_bound=trend_bound,
                flat=bool(worst <= band and growth <= trend_bound))


def check(result: dict) -> dict:
    """The checks of one pipeline's run: accounting, late bursts, flatness after the ramp-up."""
    tot, fin, samples = result["totals"], result["final_stats"], result["samples"]
    skip_polls = result.get("skip_polls", False)
    if result["window"] is not None:
        # windows: every record pushed is aggregated, late or rejected
        def accounted(s):
            return s["records_aggregated"] + s["records_late"] + s["records_rejected"]
        late = fin["records_late"]
    else:
        # detectors alone: every record pushed is scored, scored late, still buffered (waiting
        # for the watermark) or rejected
        def accounted(s):
            return (s["records_scored"] + s["records_score_late"] + s["records_score_buffered"]
                    + s["records_rejected"])
        late = fin["records_score_late"]
    checks = {
        "accounting": (fin["records_pushed"] == accounted(fin) == tot["pushed"]
                       and all(s["records_pushed"] == accounted(s) for s in samples)),
        "late_bursts_late": late == tot["late_expected"] and fin["records_rejected"] == 0,
        "late_records_polled": skip_polls or tot["late_polled"] == late,
    }
    flat = {m: flatness(samples, m, BOUNDS["state_band"], BOUNDS["state_trend"])
            for m in ("state_bytes", "checkpoint_bytes")}
    flat["rss"] = flatness(samples, "rss", BOUNDS["rss_band"], BOUNDS["rss_trend"])
    span = samples[-1]["hours"]
    half = [s for s in samples if s["hours"] >= span / 2]
    new_keys = half[-1]["keys_seen"] - half[0]["keys_seen"]
    for f in flat.values():
        f["per_new_key"] = (f["slope_per_hour"] * (half[-1]["hours"] - half[0]["hours"]) / new_keys
                            if new_keys else None)
    return dict(checks=checks, late=late, flatness=flat, flat=all(f["flat"] for f in flat.values()),
                known_growth=KNOWN_GROWTH.get(result["kind"]))


def _worker(args: argparse.Namespace) -> None:
    cfg = Config(**json.loads(args.config))
    result = run_kind(args.worker, cfg, progress=not args.no_progress)
    result["skip_polls"] = cfg.skip_polls
    Path(args.result).write_text(json.dumps(result))


def run(cfg: Config, kinds=KINDS, progress: bool = True) -> dict:
    """Run every kind in its own process (one after the other) and check it."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="cusense-soak-") as tmp:
        for kind in kinds:
            out = os.path.join(tmp, f"{kind}.json")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--result", out,
                   "--config", json.dumps(asdict(cfg))]
            if not progress:
                cmd.append("--no-progress")
            subprocess.run(cmd, check=True)
            r = json.loads(Path(out).read_text())
            r.update(check(r))
            results[kind] = r
    return results


def passed(r: dict) -> bool:
    """All checks hold, and the state is flat unless the kind is known to grow."""
    return all(r["checks"].values()) and (r["flat"] or r["known_growth"] is not None)


# --- report ---------------------------------------------------------------------------------------

def plot(results: dict, path: Path, cfg: Config) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    for kind, r in results.items():
        h = [s["hours"] for s in r["samples"]]
        axes[0].plot(h, [s["rss"] / 2**20 for s in r["samples"]], label=kind)
        axes[1].plot(h, [s["state_bytes"] / 2**20 for s in r["samples"]], label=kind)
        axes[2].plot(h, [s["checkpoint_bytes"] / 2**20 for s in r["samples"]], label=kind)
    axes[0].set_ylabel("RSS (MiB), one process per kind")
    axes[1].set_ylabel("stats state_bytes (MiB)")
    axes[2].set_ylabel("checkpoint file (MiB)")
    axes[2].set_xlabel("simulated hours")
    for ax in axes:
        ax.axvline(cfg.hours / 2, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"cusense soak: {cfg.sensors} active sensors, {cfg.hours:g} h simulated "
                 f"(checks on the half right of the dashed line)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict) -> str:
    cfg, m = report["config"], report["machine"]
    lines = [f"# Soak: {cfg['hours']:g} h of simulated fleet time", "",
             f"- machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB; "
             f"{m.get('os')}; Python {m.get('python')}; load average at start {m.get('load_average_at_start')}",
             f"- commit: {report['commit']}; cusense {m.get('versions', {}).get('cusense')}; "
             f"date {report['date']}; run time {report['wall_s']:.0f} s",
             f"- fleet: {cfg['sensors']} active sensors after a {cfg['ramp_hours']:g} h ramp-up, one reading "
             f"per {cfg['period_s']:g} s on average, mean lifetime {cfg['lifetime_hours']:g} h (then replaced "
             f"by a new key), silences of 5-{cfg['silence_max_min']:g} min ({cfg['silence_per_hour']:g} per "
             f"sensor-hour), a late burst of {cfg['late_burst']} readings every {cfg['late_every_min']:g} min, "
             f"pushes every {cfg['step_s']:g} s, max_out_of_orderness {cfg['ooo_s']:g} s",
             f"- checkpoint every {cfg['checkpoint_every_min']:g} min, restore from it every "
             f"{cfg['restore_every_hours']:g} h; CPU backend, one thread, one process per pipeline kind",
             f"- flat = in the second half every sample within ±{BOUNDS['state_band']:.0%} of the median "
             f"(RSS ±{BOUNDS['rss_band']:.0%}) and slope × span ≤ {BOUNDS['state_trend']:.0%} of the median "
             f"(RSS {BOUNDS['rss_trend']:.0%})",
             *([f"- {report['checks_recomputed']}"] if report.get("checks_recomputed") else []), "",
             "![RSS, state_bytes and checkpoint size over simulated time](soak.png)", "",
             "| kind | records | late (bursts) | keys seen | metric | start | median (2nd half) | end | slope / h "
             "| per new key | flat | checks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, r in report["pipelines"].items():
        fin, tot = r["final_stats"], r["totals"]
        ok = "ok" if all(r["checks"].values()) else "FAIL " + ",".join(k for k, v in r["checks"].items() if not v)
        for j, (name, f) in enumerate(r["flatness"].items()):
            per_key = "" if f["per_new_key"] is None else f"{f['per_new_key']:.0f} B"
            head = (f"| {kind} | {fin['records_pushed']:,} | {r['late']:,} ({tot['late_expected']:,}) "
                    f"| {r['samples'][-1]['keys_seen']:,} ") if j == 0 else "| | | | "
            lines.append(head + f"| {name} | {_fmt_bytes(f['start'])} | {_fmt_bytes(f['median'])} | "
                         f"{_fmt_bytes(f['end'])} | {_fmt_bytes(f['slope_per_hour'])} | {per_key} | "
                         f"{'yes' if f['flat'] else 'NO'} | {ok if j == 0 else ''} |")
    lines += ["", "Known growth (state kept for every key ever seen):", ""]
    for kind, r in report["pipelines"].items():
        if r["known_growth"]:
            lines.append(f"- **{kind}**: {r['known_growth']}; measured "
                         + ", ".join(f"{name} {_fmt_bytes(f['slope_per_hour'])}/h"
                                     for name, f in r["flatness"].items()))
    lines += ["", "Wall time per kind: " + ", ".join(
        f"{k} {r['totals']['wall_s']:.0f} s ({r['totals']['checkpoints']} checkpoints, "
        f"{r['totals']['restores']} restores)" for k, r in report["pipelines"].items()), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI scale: 2 h simulated, 300 sensors")
    for f in fields(Config):
        if f.name in ("leak_bytes_per_key", "skip_polls"):
            continue
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--recheck", type=Path, default=None,
                    help="recompute the checks, report and plot of a soak.json (no new run)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0
    if args.recheck:
        report = json.loads(args.recheck.read_text())
        for r in report["pipelines"].values():
            r.update(check(r))
        report["bounds"] = BOUNDS
        report["checks_recomputed"] = "checks recomputed from the samples with the bounds above"
        report["passed"] = {k: passed(r) for k, r in report["pipelines"].items()}
        return write_report(report, Config(**report["config"]), args.recheck.parent)
    cfg = Config(**(QUICK if args.quick else {}))
    for f in fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    kinds = [k for k in args.kinds.split(",") if k]
    t0 = time.perf_counter()
    results = run(cfg, kinds, progress=not args.no_progress)
    sys.path.insert(0, str(HERE))
    from suite.machine import git_commit, machine_info, machine_slug

    info = machine_info()
    date = dt.date.today().isoformat()
    report = dict(config=asdict(cfg), bounds=BOUNDS, machine=info, commit=git_commit(), date=date,
                  wall_s=time.perf_counter() - t0, pipelines=results,
                  passed={k: passed(r) for k, r in results.items()})
    return write_report(report, cfg, args.out or HERE / "results" / f"soak-{machine_slug(info)}-{date}")


def write_report(report: dict, cfg: Config, out: Path) -> int:
    results = report["pipelines"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "soak.png", cfg)
    (out / "README.md").write_text(markdown(report))
    for kind, r in results.items():
        f = r["flatness"]
        print(f"{kind:9s} checks {'ok' if all(r['checks'].values()) else r['checks']}  "
              f"state {'flat' if f['state_bytes']['flat'] else 'GROWS'} "
              f"({_fmt_bytes(f['state_bytes']['slope_per_hour'])}/h)  "
              f"ckpt {'flat' if f['checkpoint_bytes']['flat'] else 'GROWS'} "
              f"({_fmt_bytes(f['checkpoint_bytes']['slope_per_hour'])}/h)  "
              f"RSS {'flat' if f['rss']['flat'] else 'GROWS'} ({_fmt_bytes(f['rss']['slope_per_hour'])}/h)"
              + (f"  [known growth]" if r["known_growth"] else ""))
    print(f"results in {out}")
    return 0 if all(report["passed"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
