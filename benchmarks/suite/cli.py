"""Benchmark suite: cusense against the tools users would pick instead, and the hardware limits.

The command line of ``benchmarks/run.py``: picks the mode, runs it, writes the report and prints
its markdown table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .machine import machine_info
from .peers import PEERS
from .report import default_out_dir, markdown
from .sweeps import run_suite


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_const", const="quick", dest="mode",
                   help="small sweep, under 2 minutes on a 2-core CPU")
    g.add_argument("--full", action="store_const", const="full", dest="mode",
                   help="records 1e5..1e8, keys 1e1..1e6, batches 1e3..1e7 (long)")
    g.add_argument("--standard", action="store_const", const="standard", dest="mode",
                   help="the target workload only: 1e7 records, 1e4 keys, 5 aggregations, vs peers")
    g.add_argument("--cardinality", action="store_const", const="cardinality", dest="mode",
                   help="the standard workload at 2, 17 and 100 records per (key, window): the "
                        "cost of emitting windows, vs peers")
    g.add_argument("--windows", action="store_const", const="windows", dest="mode",
                   help="sliding, session and count windows vs peers: 1e6 records, 1e3 keys, "
                        "batches of 1e5 (--records/--keys/--batches take one value each here)")
    g.add_argument("--detectors", action="store_const", const="detectors", dest="mode",
                   help="anomaly detectors on one core vs a numpy reference and River: "
                        "benchmarks/fleet/speed.py (--keys: one value, default 1e4)")
    g.add_argument("--smoke", action="store_const", const="smoke", dest="mode", help=argparse.SUPPRESS)
    p.add_argument("--records", type=lambda x: int(float(x)), nargs="+", help="custom grid: records")
    p.add_argument("--keys", type=lambda x: int(float(x)), nargs="+", help="custom grid: keys")
    p.add_argument("--batches", type=lambda x: int(float(x)), nargs="+", help="custom grid: batch sizes")
    p.add_argument("--aggs", type=int, choices=(5, 7), default=5,
                   help="5 = count/sum/mean/min/max, 7 adds var/std (ddof=1)")
    p.add_argument("--backends", nargs="+", choices=("cpu", "cuda"), help="default: every usable one")
    p.add_argument("--peers", nargs="*", choices=tuple(PEERS), help="default: every importable one")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (best counts)")
    p.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<machine>-<date>)")
    p.add_argument("--no-write", action="store_true", help="print only")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = args.mode or ("custom" if (args.records or args.keys or args.batches) else "quick")
    if mode != "windows" and (args.records or args.keys or args.batches):
        mode = "custom"
    if mode == "windows":
        for opt in ("records", "keys", "batches"):
            if len(getattr(args, opt) or ()) > 1:
                parser.error(f"--windows takes one value for --{opt}")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.mode == "detectors":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))
        import speed  # benchmarks/fleet/speed.py

        argv_speed = ["--keys", str((args.keys or [10_000])[0])]
        if not args.no_write:
            argv_speed += ["--out", str(args.out or default_out_dir(machine_info()))]
        return speed.main(argv_speed)
    out = None
    if not args.no_write:
        out = args.out or default_out_dir(machine_info())
    report = run_suite(mode, backends=args.backends, peers=args.peers, repeats=args.repeats,
                       out=out, args=args, log=log)
    print(markdown(report))
    if report["failures"]:
        log("\n!! BENCHMARK CHECKS FAILED:\n" + "\n".join(f"  - {f}" for f in report["failures"]))
        return 1
    return 0
