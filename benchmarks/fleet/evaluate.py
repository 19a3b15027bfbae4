#!/usr/bin/env python3
"""Fleet benchmark: is a detector quiet on healthy sensors and loud on real faults?

    python benchmarks/fleet/evaluate.py --out benchmarks/results/fleet   # --sensors 2000 --days 3

Generates a fleet (``fleet_data.py``: daily cycles, AR(1) noise, timestamp jitter; half the
sensors get one fault each: spike, level shift, drift, flatline, variance change or silence),
streams all sensors interleaved in time order through every detector with its default
threshold (``cusense.detectors.score`` with keys, CPU backend), and reports for each detector:

* per fault type: recall (an alarm on the sensor within the fault's tolerance after its start:
  spike 10 min, level shift 1 h, drift 6 h, flatline / variance / silence the 3 h episode) and
  the median detection delay;
* on the healthy sensors: false alarms per sensor-day (alarm onsets: a record at or above the
  threshold whose predecessor of the same key was below it) and the number of healthy sensors
  alarmed at the end of the detector's warm-up (from the sensor's first non-zero score on, for
  20 records).

Silence is reported by the ``Silence`` detector (timeout 10 min) of a streaming pipeline (the
scoring detectors see no records then). Writes ``fleet_scores.json`` and ``fleet_scores.md``
(with machine and commit) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "nab"))

import fleet_data as fd  # noqa: E402

MINUTE = 60 * 10**9
TOLERANCE_NS = {"spike": 10 * MINUTE, "level_shift": 60 * MINUTE, "drift": 6 * fd.HOUR_NS}
WARMUP_END_RECORDS = 20


def detectors():
    from cusense import detectors as D

    return {
        "MultiScaleZ() = default()": D.default(),
        "EWMA(alpha=0.05)": D.EWMA(alpha=0.05),
        "RollingZ(window=100)": D.RollingZ(window=100),
        "RollingMAD(window=100)": D.RollingMAD(window=100),
        "KnnDiscord()": D.KnnDiscord(),
        "AnomalyLikelihood()": D.AnomalyLikelihood(),
        "AnomalyLikelihood(base=MultiScaleZ())": D.AnomalyLikelihood(base=D.MultiScaleZ()),
    }


def evaluate_alarms(fl: fd.Fleet, scores: np.ndarray, threshold: float) -> dict:
    """Recall / delay per fault type and false alarms of the healthy sensors for scores aligned
    with the fleet's records."""
    order = np.lexsort((fl.ts, fl.keys))  # by key, then time
    k, t, sc = fl.keys[order], fl.ts[order], scores[order]
    a = sc >= threshold
    bounds = np.searchsorted(k, np.arange(fl.sensors + 1))
    prev = np.concatenate([[False], a[:-1]])
    prev[bounds[:-1][bounds[:-1] < len(a)]] = False
    onset = a & ~prev
    out = {}
    healthy = np.flatnonzero(fl.fault < 0)
    onsets = sum(int(onset[bounds[s]:bounds[s + 1]].sum()) for s in healthy)
    warm = 0
    for s in healthy:
        live = np.flatnonzero(sc[bounds[s]:bounds[s + 1]] > 0)
        if len(live):
            warm += bool(a[bounds[s] + live[0]:bounds[s] + live[0] + WARMUP_END_RECORDS].any())
    out["healthy"] = {"sensors": len(healthy), "false_alarms_per_sensor_day": onsets / (len(healthy) * fl.days),
                      "sensors_alarmed_in_warmup": warm}
    for fi, name in enumerate(fd.FAULTS):
        if name == "silence":
            continue
        sel = np.flatnonzero(fl.fault == fi)
        hits, delays = 0, []
        for s in sel:
            ts_s, a_s = t[bounds[s]:bounds[s + 1]], a[bounds[s]:bounds[s + 1]]
            end = fl.fault_start[s] + TOLERANCE_NS.get(name, fl.fault_end[s] - fl.fault_start[s])
            w = (ts_s >= fl.fault_start[s]) & (ts_s <= end) & a_s
            if w.any():
                hits += 1
                delays.append((ts_s[w][0] - fl.fault_start[s]) / MINUTE)
        out[name] = {"sensors": len(sel), "recall": hits / len(sel) if len(sel) else float("nan"),
                     "median_delay_min": float(np.median(delays)) if delays else None}
    return out


def silence_recall(fl: fd.Fleet) -> dict:
    import cusense

    pipe = cusense.Pipeline(window=None, detectors=[cusense.detectors.Silence(timeout="10min")],
                            max_out_of_orderness="1min", backend="cpu")
    step = 100_000
    events = []
    for i in range(0, len(fl.ts), step):
        pipe.push(fl.keys[i:i + step], fl.ts[i:i + step], fl.values[i:i + step])
        events.append(pipe.poll_silence().to_pandas(datetimes=False))
    import pandas as pd

    ev = pd.concat(events)
    ev = ev[~ev["back"]]
    sel = np.flatnonzero(fl.fault == fd.FAULTS.index("silence"))
    hits, delays = 0, []
    for s in sel:
        e = ev[(ev["key"] == s) & (ev["silent_since"] >= fl.fault_start[s] - 10 * MINUTE)
               & (ev["silent_since"] <= fl.fault_end[s])]
        if len(e):
            hits += 1
            delays.append((e["silent_since"].iloc[0] - fl.fault_start[s]) / MINUTE)
    healthy_events = int(ev["key"].isin(np.flatnonzero(fl.fault < 0)).sum())
    return {"sensors": len(sel), "recall": hits / len(sel), "median_delay_min": float(np.median(delays)),
            "healthy_silence_events": healthy_events}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sensors", type=int, default=2000)
    ap.add_argument("--days", type=float, default=3.0)
    ap.add_argument("--period", type=float, default=120.0, help="seconds between readings")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--only", default=None, help="substring of the detector names to run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import cusense

    fl = fd.generate(args.sensors, args.days, args.period, args.seed)
    print(f"fleet: {fl.sensors} sensors, {args.days:g} days, {len(fl.ts):,} records, "
          f"{int((fl.fault < 0).sum())} healthy", flush=True)
    results = {}
    for name, det in detectors().items():
        if args.only and args.only not in name:
            continue
        t0 = time.perf_counter()
        s = cusense.detectors.score(fl.ts, fl.values, keys=fl.keys, detector=det, backend="cpu")
        el = time.perf_counter() - t0
        r = evaluate_alarms(fl, s, det.threshold)
        r["threshold"] = det.threshold
        r["records_per_s"] = len(s) / el
        results[name] = r
        h = r["healthy"]
        print(f"{name:28s} FA/sensor-day {h['false_alarms_per_sensor_day']:.3f}  warm-up alarms "
              f"{h['sensors_alarmed_in_warmup']}/{h['sensors']}  " + "  ".join(
                  f"{f} {r[f]['recall']:.2f}" for f in fd.FAULTS if f in r) + f"  ({len(s) / el / 1e6:.2f} M rec/s)",
              flush=True)
    sil = silence_recall(fl)
    print(f"Silence(timeout=10min): silence recall {sil['recall']:.2f}, median delay "
          f"{sil['median_delay_min']:.1f} min, {sil['healthy_silence_events']} events on healthy sensors")
    if args.out:
        from evaluate import run_info  # benchmarks/nab/evaluate.py

        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"fleet": {"sensors": args.sensors, "days": args.days, "period_s": args.period,
                         "seed": args.seed, "records": int(len(fl.ts))},
               "detectors": results, "silence": sil, "run": run_info("cpu")}
        (args.out / "fleet_scores.json").write_text(json.dumps(doc, indent=1))
        faults = [f for f in fd.FAULTS if f != "silence"]
        lines = ["| detector | FA / sensor-day | healthy alarmed in warm-up | "
                 + " | ".join(f"{f} recall (delay)" for f in faults) + " |",
                 "|---|---:|---:|" + "---:|" * len(faults)]
        for name, r in results.items():
            cells = []
            for f in faults:
                d = r[f]["median_delay_min"]
                cells.append(f"{r[f]['recall']:.2f} ({'-' if d is None else f'{d:.0f} min'})")
            lines.append(f"| `{name}` | {r['healthy']['false_alarms_per_sensor_day']:.3f} | "
                         f"{r['healthy']['sensors_alarmed_in_warmup']}/{r['healthy']['sensors']} | "
                         + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"Silence(timeout=10min): recall {sil['recall']:.2f}, median delay "
                     f"{sil['median_delay_min']:.1f} min, {sil['healthy_silence_events']} events on healthy sensors.")
        run = doc["run"]
        lines.append(f"\n{args.sensors} sensors, {args.days:g} days, one reading per {args.period:g} s, seed "
                     f"{args.seed}; run {run.get('date_utc')}, commit {str(run.get('commit'))[:12]}, "
                     f"{run['machine']['cpu']} ({run['machine']['logical_cpus']} logical CPUs)")
        (args.out / "fleet_scores.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
