"""Throughput plots (when matplotlib is installed): records/s along each sweep, and per window
workload."""
from __future__ import annotations

from pathlib import Path

from .workloads import RECORD_BYTES, si


def plots(report: dict, out: Path, prefix: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    if report["mode"] == "windows":
        return windows_plot(report, out, prefix, plt)
    written = []
    lim = report.get("limits")
    h2d_rec = lim["h2d_pinned"] / RECORD_BYTES if lim else None
    for sweep, xkey, xlabel in (("batch", "batch", "micro-batch size (records)"),
                                ("keys", "keys", "distinct keys"),
                                ("records", "records", "records in the stream"),
                                ("per_window", "per_window", "records per (key, window)")):
        own = [r for r in report["results"] if r["sweep"] == sweep and "records_per_s" in r]
        if not own:
            continue
        # every measured row with this sweep's fixed parameters (other sweeps may hold points)
        fixed_keys = [k for k in ("records", "keys", "batch", "per_window") if k != xkey]
        f0 = own[0]
        rows, seen = [], set()
        for r in report["results"]:
            if ("records_per_s" in r and r["aggs"] == f0["aggs"]
                    and all(r[k] == f0[k] for k in fixed_keys if not (k == "batch" and r["kind"] == "peer"))
                    and (sweep != "batch" or r["kind"] == "cusense")
                    and (r["impl"], r[xkey]) not in seen):
                seen.add((r["impl"], r[xkey]))
                rows.append(r)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r[xkey], r["records_per_s"]) for r in rows if r["impl"] == impl)
            style = "-o" if impl.startswith("cusense") else "--s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl)
        if sweep == "batch":  # peers run one-shot: draw them as levels from the matching key sweep
            fixed = rows[0]
            for r in report["results"]:
                if (r["kind"] == "peer" and "records_per_s" in r and r["records"] == fixed["records"]
                        and r["keys"] == fixed["keys"] and r["aggs"] == fixed["aggs"]):
                    ax.axhline(r["records_per_s"], ls=":", lw=1, color="gray")
                    ax.annotate(f"{r['impl']} (one-shot)", (rows[0]["batch"], r["records_per_s"]),
                                fontsize=7, color="gray")
        if h2d_rec:
            ax.axhline(h2d_rec, color="red", lw=1.2, label="pinned H2D limit (16 B/record)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("records / s")
        r0 = rows[0]
        fixed_desc = {"batch": f"{si(r0['records'])} records, {si(r0['keys'])} keys",
                      "keys": f"{si(r0['records'])} records, batch {si(r0['batch'])}",
                      "records": f"{si(r0['keys'])} keys, batch {si(r0['batch'])}",
                      "per_window": f"{si(r0['records'])} records, {si(r0['keys'])} keys, batch "
                                    f"{si(r0['batch'])}"}[sweep]
        ax.set_title(f"tumbling windows, {len(r0['aggs'])} aggs: {fixed_desc}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{prefix}-throughput_vs_{sweep}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def windows_plot(report: dict, out: Path, prefix: str, plt) -> list[str]:
    """Grouped bars: records/s per workload (groups) and implementation (bars), log scale."""
    measured = [r for r in report["results"] if "records_per_s" in r]
    if not measured:
        return []
    workloads = list(dict.fromkeys(r["workload"] for r in report["results"]))
    impls = list(dict.fromkeys(r["impl"] for r in measured))
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for i, wname in enumerate(workloads):
            r = next((r for r in measured if r["workload"] == wname and r["impl"] == impl), None)
            if r is not None:
                xs.append(i - 0.4 + (j + 0.5) * width)
                ys.append(r["records_per_s"])
        ax.bar(xs, ys, width, label=impl, hatch="" if impl.startswith("cusense") else "//",
               edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_yscale("log")
    ax.set_ylabel("records / s")
    wl = report["workload"]
    ax.set_title(f"sliding / session / count windows: {si(wl['records'])} records, "
                 f"{si(wl['keys'])} keys (cusense batch {si(wl['batch'])})", fontsize=10)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    name = f"{prefix}-throughput.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]
