"""Benchmark suite: cusense against the tools users would pick instead, and the hardware limits.

Run ``benchmarks/run.py --quick`` (or ``cusense bench --quick`` in a source checkout); ``--help``
lists the modes. Every peer result is checked equal to cusense's output before its time counts;
ratios come from the same run. Output: ``<mode>.json``, ``<mode>.md`` and PNG plots in ``--out``.

The suite is organised as *workloads* run by *implementations* (cusense per backend, and peers:
numpy, pandas, polars, CuPy, PyTorch). The sweeps (``--quick``, ``--standard``, ``--full``) run
keyed tumbling windows; ``--windows`` runs sliding, session and count windows (``Workload``
entries: a stream generator, the cusense window, the compared columns, and peers for numpy,
pandas and polars; none for CuPy/PyTorch). A new workload (a detector) adds such an entry and
peer functions with the same ``(data, spec) -> dict of numpy columns`` signature.

Modules:

- workloads: the synthetic stream, the sweep cases, the window workload parameters
- peers, window_peers: the numpy, pandas, polars, CuPy and PyTorch implementations
- streaming: cusense itself, fed in micro-batches
- checks: every output compared with the reference before its time counts
- measure, limits, machine: timing and memory, copy bandwidth, the machine description
- sweeps, windows: the two kinds of run; results: the rows they share
- report, plots: JSON, markdown and PNG outputs
- cli: the command line of ``benchmarks/run.py``
"""
