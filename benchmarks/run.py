#!/usr/bin/env python3
"""Benchmark suite entry point: ``benchmarks/run.py --quick`` (or ``--full``, ``--standard``).

Runs the suite in python/cusense/bench.py of this checkout (the same code as
``python -m cusense.bench``) against the installed cusense extension. ``--help`` lists options.
"""
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent / "python" / "cusense" / "bench.py"

if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("cusense_bench_suite", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    sys.exit(mod.main())
