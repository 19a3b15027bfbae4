"""The report on disk: JSON (the schema notebooks/03-performance.ipynb reads), a markdown table
and plots, by default in benchmarks/results/<machine>-<date>/."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from .machine import machine_slug
from .plots import plots
from .workloads import RECORD_BYTES, WINDOW_NS, si


def _fmt_rate(x):
    return "" if x is None else f"{x / 1e6:.2f}"


def _result_row(r: dict, cells: list, volume: str, peer_names) -> str:
    """A markdown table row: the given leading cells, then timings (`volume` is the 4th timing
    column: MB/s or rows out), check and speedups over each peer."""
    if "seconds" in r:
        cells = cells + [f"{r['seconds']:.3f}", f"{r['cpu_seconds']:.2f}", _fmt_rate(r["records_per_s"]), volume,
                         f"{r['latency_p50_ms']:.2f}" if "latency_p50_ms" in r else "",
                         f"{r['latency_p99_ms']:.2f}" if "latency_p99_ms" in r else "",
                         f"{r['host_peak_mb']:.0f}"]
    else:
        cells = cells + [""] * 7
    cells.append(r.get("check", ""))
    sv = r.get("speedup_vs", {})
    cells += [f"{sv[p]:.1f}" if p in sv else "" for p in peer_names]
    return "| " + " | ".join(cells) + " |"


def markdown(report: dict) -> str:
    if report["mode"] == "windows":
        return windows_markdown(report)
    m = report["machine"]
    gpu = m.get("gpu")
    lines = [f"# cusense benchmark ({report['mode']})", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
             + (f"; GPU {gpu['name']} (driver {gpu['driver']})" if gpu else "; no GPU"),
             f"- commit {report['git_commit']}, {report['timestamp']}, backends {', '.join(report['backends'])}",
             f"- workload: tumbling {WINDOW_NS // 10**9} s windows, ~100 records per (key, window) "
             "unless the per-window column says otherwise, "
             f"{RECORD_BYTES} B/record, mild disorder (no late records); "
             + report["workload"]["timing"],
             f"- load average at start: {m.get('load_average_at_start')}", ""]
    lim = report.get("limits")
    if lim:
        lines += [f"Copy bandwidth ({lim['tool']}, {lim['bytes'] >> 20} MiB): pinned H2D "
                  f"{lim['h2d_pinned'] / 1e9:.1f} GB/s, pageable H2D {lim['h2d_pageable'] / 1e9:.1f} GB/s, "
                  f"device-to-device {lim['d2d'] / 1e9:.1f} GB/s (read + write)", ""]
    peer_names = report["peers"]
    head = ["sweep", "records", "keys", "per window", "batch", "aggs", "impl", "s", "CPU s", "M rec/s", "MB/s",
            "p50 ms", "p99 ms", "peak host MB", "check"] + [f"× {p}" for p in peer_names]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        cells = [r["sweep"], si(r["records"]), si(r["keys"]), f"{r.get('per_window', 100):g}",
                 si(r["batch"]) if r["kind"] == "cusense" else "all",
                 str(len(r["aggs"])), r["impl"]]
        volume = f"{r['bytes_per_s'] / 1e6:.0f}" if "seconds" in r else ""
        lines.append(_result_row(r, cells, volume, peer_names))
    if report["failures"]:
        lines += ["", "**FAILURES**", ""] + [f"- {f}" for f in report["failures"]]
    lines.append("")
    return "\n".join(lines)


def windows_markdown(report: dict) -> str:
    m, wl = report["machine"], report["workload"]
    gpu = m.get("gpu")
    lines = ["# cusense benchmark (windows)", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB"
             + (f"; GPU {gpu['name']} (driver {gpu['driver']})" if gpu else "; no GPU"),
             f"- commit {report['git_commit']}, {report['timestamp']}, backends {', '.join(report['backends'])}",
             f"- stream: {si(wl['records'])} records, {si(wl['keys'])} keys ({wl['keys_distribution']}), "
             f"{wl['values']} values, {RECORD_BYTES} B/record; {wl['disorder']}",
             f"- {wl['timing']}", f"- check: {wl['check']}",
             f"- load average at start: {m.get('load_average_at_start')}", "", "Workloads:", ""]
    lines += [f"- **{name}**: {desc}" for name, desc in wl["workloads"].items()]
    notes = [f"- {p}: {why}" for p, why in {**report["peers_not_run"], **report["peers_unavailable"]}.items()]
    if notes:
        lines += ["", "Peers not run:", ""] + notes
    peer_names = report["peers"]
    head = ["workload", "impl", "s", "CPU s", "M rec/s", "rows out", "p50 ms", "p99 ms",
            "peak host MB", "check"] + [f"× {p}" for p in peer_names]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        cells = [r["workload"], r["impl"]]
        lines.append(_result_row(r, cells, f"{r.get('rows_out', '')}", peer_names))
    if report["failures"]:
        lines += ["", "**FAILURES**", ""] + [f"- {f}" for f in report["failures"]]
    lines.append("")
    return "\n".join(lines)


def write_outputs(report: dict, out: Path, log=print) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prefix = report["mode"]
    report["plots"] = plots(report, out, prefix)
    (out / f"{prefix}.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
    (out / f"{prefix}.md").write_text(markdown(report))
    log(f"wrote {out / (prefix + '.json')}, {prefix}.md, {len(report['plots'])} plot(s)")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def default_out_dir(report_machine: dict, base: Path | None = None) -> Path:
    if base is None:
        base = Path("bench-results")
        for root in (Path(__file__).resolve().parents[2], Path.cwd()):
            if (root / "benchmarks").is_dir():
                base = root / "benchmarks" / "results"
                break
    return base / f"{machine_slug(report_machine)}-{_dt.date.today().isoformat()}"
