#!/usr/bin/env python3
"""Benchmark suite entry point: ``benchmarks/run.py --quick`` (or ``--full``, ``--standard``,
``--windows``); ``cusense bench`` runs this script. ``--help`` lists options.

Runs the suite in benchmarks/suite/ against the installed cusense extension.
"""
import sys

from suite.cli import main  # the suite package sits next to this script (sys.path[0])

if __name__ == "__main__":
    sys.exit(main())
