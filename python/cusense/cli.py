"""The ``cusense`` command line: ``MAIN_HELP`` below lists the commands and exit statuses."""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from typing import Any

EXIT_DATA, EXIT_USAGE = 1, 2
QUANTILE_NAME = re.compile(r"p\d+(\.\d+)?")

# The top-level --help (plain text: argparse prints it as it is).
MAIN_HELP = """\
cusense: stream analytics for sensor data.

  cusense run INPUT --key COL --time COL --value COL [--value COL ...] --window 1min
                    --aggs mean,max [--max-out-of-orderness 5s] [--detector ewma] --out OUTPUT
  cusense devices          usable CUDA devices (or why there are none)
  cusense bench [...]      the benchmark suite of a source checkout (arguments are passed on)
  cusense demo [...]       the synthetic fleet demo (arguments are passed on)
  cusense serve FILE.toml  the fleet service: broker in, PostgreSQL and Parquet out
  cusense simulate [...]   a simulated fleet publishing to MQTT or Kafka

'cusense COMMAND --help' describes each command. Exit status: 0 on success, 1 for bad
input data (the message names the file, the line or row, and the column), 2 for bad options
or a missing feature.
"""


class UsageError(Exception):
    """Bad options or a feature this installation lacks (exit status 2)."""


# --- cusense run ------------------------------------------------------------------------------

RUN_HELP = """\
Streams a CSV or Parquet file through a windowing pipeline in micro-batches and writes the
emitted windows (CSV or Parquet, by the extension of --out). Records whose window had already
closed when they arrived (see --max-out-of-orderness) go to a sibling file OUTPUT.late.EXT;
with --detector, per-record anomaly scores go to OUTPUT.scores.EXT. Outputs are written as
NAME.partial and renamed when the run succeeds; a failed run removes them (or keeps them with
--keep-partial).

Times: integer columns are read as --time-unit since the epoch (default ns); strings as
ISO 8601 datetimes (or with --time-format); Parquet timestamps as they are. Output times keep
the input's form (ISO layout, fraction digits and zone; Parquet unit and zone; numbers in
--time-unit), argmin_ts/argmax_ts included, unless --out-times asks for ISO 8601 in UTC or
epoch numbers. Keys: integer ids are used as they are (0..2^32-1); other ids (strings) are
mapped to codes and written back as the original ids.
"""

RUN_EXAMPLES = """\
examples:
  cusense run readings.csv --key sensor --time ts --value temp --window 1min --aggs mean,max --out windows.csv
  cusense run data.parquet --key id --time t --time-unit s --value a --value b --window 10s \\
      --aggs count,mean,std --max-out-of-orderness 2s --out windows.parquet
  cusense run nyc_taxi.csv --key-const 0 --time timestamp --value value --window 1d --detector ewma --out taxi.csv
"""


def _add_run(sub):
    p = sub.add_parser("run", help="window (and score) a CSV or Parquet file",
                       description=RUN_HELP, epilog=RUN_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="input file (.csv, .tsv or .parquet)")
    p.add_argument("--out", "-o", required=True, metavar="OUTPUT",
                   help="windows output (.csv or .parquet)")
    cols = p.add_argument_group("columns")
    key = cols.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", metavar="COL", help="sensor id column")
    key.add_argument("--key-const", metavar="ID", type=int,
                     help="treat the whole file as one sensor with this integer id")
    cols.add_argument("--time", required=True, metavar="COL", help="event time column")
    cols.add_argument("--value", required=True, action="append", metavar="COL",
                      help="value column; repeat for several channels (columns <agg>_<COL>)")
    cols.add_argument("--time-unit", choices=["s", "ms", "us", "ns"], default=None,
                      help="unit of integer (or decimal) times (default ns)")
    cols.add_argument("--time-format", metavar="FMT",
                      help="strptime format of string times, e.g. '%%d/%%m/%%Y %%H:%%M:%%S'")
    cols.add_argument("--out-times", choices=["input", "iso", "s", "ms", "us", "ns"], default="input",
                      help="output time columns: input (default) keeps the input's form (ISO text "
                           "with its zone, or numbers in --time-unit); iso: ISO 8601 in UTC; "
                           "s, ms, us, ns: integers since the epoch in that unit")
    cols.add_argument("--key-type", choices=["auto", "int", "string"], default="auto",
                      help="int: ids are uint32 numbers; string: map any ids to codes; "
                           "auto (default): decided by the first key")
    win = p.add_argument_group("windows (one of --window, --session, --count; or --config)")
    win.add_argument("--window", metavar="DURATION",
                     help="window size, e.g. 500ms, 10s, 1min, 1h, 1d: tumbling windows, or "
                          "sliding ones with --slide")
    win.add_argument("--slide", metavar="DURATION",
                     help="sliding windows of --window size starting every DURATION")
    win.add_argument("--offset", default=None, metavar="DURATION",
                     help="window offset: windows are [k*size + offset, (k+1)*size + offset)")
    win.add_argument("--session", metavar="GAP",
                     help="session windows: a key's records less than GAP apart share a session")
    win.add_argument("--count", type=int, metavar="N",
                     help="count windows: one row per record over the key's last N records")
    win.add_argument("--min-periods", type=int, metavar="N",
                     help="with --count: values needed for a result (default N)")
    win.add_argument("--aggs", default=None,
                     help="comma-separated aggregations: count, sum, mean, min, max, var, std, "
                          "var_pop, std_pop, nan_count, first, last, quantiles pXX (p50, p99.9; "
                          "median = p50, column p50) (default count,mean,min,max)")
    win.add_argument("--max-out-of-orderness", dest="max_out_of_orderness", default=None,
                     metavar="DURATION",
                     help="how far event time may go backwards before a record is late (default 0s)")
    win.add_argument("--allowed-lateness", default=None, metavar="DURATION",
                     help="keep windows this long after they closed; late records update them "
                          "(rows with is_update=true) (default 0s)")
    win.add_argument("--config", metavar="FILE.toml",
                     help="take the window, aggregations, bounds and detectors from the [pipeline] "
                          "table of a cusense serve configuration; options given here win")
    det = p.add_argument_group("anomaly scores")
    det.add_argument("--detector", metavar="NAME[:k=v,...]", action="append",
                     help="score every record with a detector from cusense.detectors, e.g. ewma, "
                          "'ewma:alpha=0.05,threshold=0.99' or default; repeat for several")
    det.add_argument("--scores-out", metavar="PATH", help="scores output (default OUTPUT.scores.EXT)")
    run = p.add_argument_group("execution")
    run.add_argument("--backend", choices=["auto", "cpu", "cuda"], default=None,
                     help="auto (default) uses a GPU when one is usable")
    run.add_argument("--batch", type=int, default=1_000_000, metavar="N",
                     help="records per micro-batch (default 1000000)")
    run.add_argument("--late-out", metavar="PATH", help="late records output (default OUTPUT.late.EXT)")
    run.add_argument("--format", choices=["csv", "parquet"], help="input format (default: extension)")
    run.add_argument("--out-format", choices=["csv", "parquet"], help="output format (default: extension)")
    run.add_argument("--delimiter", metavar="CHAR", help="CSV field delimiter (default ',' or tab for .tsv)")
    run.add_argument("--na-values", metavar="LIST", default="",
                     help="comma-separated CSV tokens read as missing (NaN values), e.g. "
                          "'NA,n/a,null' (default: only the empty cell; other tokens are errors)")
    run.add_argument("--keep-partial", action="store_true",
                     help="when the run fails, keep the incomplete outputs as OUTPUT.partial "
                          "(default: remove them)")
    prog = run.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show a progress bar on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    run.add_argument("--quiet", "-q", action="store_true", help="print no summary")
    p.set_defaults(func=cmd_run)


def _run_settings(args) -> dict:
    """The pipeline settings of ``cusense run`` as a ``[pipeline]`` table (the format of
    ``cusense serve`` configurations): ``--config`` first, then the options given here."""
    table = {}
    if args.config:
        from .service.config import load_pipeline_table
        try:
            table = load_pipeline_table(args.config)
        except ValueError as e:
            raise UsageError(f"--config {args.config}: {e}") from None
    kinds = [flag for flag, given in (("--window", args.window and not args.slide),
                                      ("--window/--slide", args.window and args.slide),
                                      ("--session", args.session),
                                      ("--count", args.count is not None)) if given]
    if len(kinds) > 1:
        raise UsageError(f"give one window kind, got {' and '.join(kinds)}")
    if args.slide and not args.window:
        raise UsageError("--slide needs --window (the window size)")
    if args.min_periods is not None and args.count is None:
        raise UsageError("--min-periods goes with --count")
    if kinds:   # a window kind given here replaces the configuration's
        for key in ("window", "size", "slide", "gap", "n", "min_periods"):
            table.pop(key, None)
    if args.window:
        table.update(window="sliding" if args.slide else "tumbling",
                     size=_duration(args.window, "--window", allow_zero=False))
        if args.slide:
            table["slide"] = _duration(args.slide, "--slide", allow_zero=False)
    elif args.session:
        table.update(window="session", gap=_duration(args.session, "--session", allow_zero=False))
    elif args.count is not None:
        if args.count <= 0:
            raise UsageError("--count must be positive")
        table.update(window="rolling", n=args.count)
        if args.min_periods is not None:
            table["min_periods"] = args.min_periods
    if "window" not in table or table["window"] == "none":
        raise UsageError("give the window: --window SIZE [--slide S], --session GAP, --count N, "
                         "or --config FILE with a [pipeline] window")
    if args.offset is not None:
        table["offset"] = _duration(args.offset, "--offset")
    for key, option in (("max_out_of_orderness", args.max_out_of_orderness),
                        ("allowed_lateness", args.allowed_lateness)):
        if option is not None:
            table[key] = _duration(option, "--" + key.replace("_", "-"))
    if args.aggs is not None:
        table["aggs"] = [a.strip() for a in args.aggs.split(",") if a.strip()]
    if args.detector:
        table["detectors"] = list(args.detector)
    if args.backend is not None:
        table["backend"] = args.backend
    from ._time import to_nanoseconds
    try:   # durations from the file may be strings ("5s"); the window classes check the rest
        for key in ("size", "slide", "offset", "gap", "max_out_of_orderness", "allowed_lateness"):
            if key in table:
                table[key] = to_nanoseconds(table[key], key)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config: {e}") from None
    table.setdefault("aggs", ["count", "mean", "min", "max"])
    table.setdefault("max_out_of_orderness", 0)
    table.setdefault("allowed_lateness", 0)
    table.setdefault("detectors", [])
    table.setdefault("backend", "auto")
    return table


def sibling(path: str, tag: str) -> str:
    """``out.csv`` -> ``out.<tag>.csv``."""
    root, ext = os.path.splitext(path)
    return f"{root}.{tag}{ext}"


def _duration(text: str, option: str, allow_zero: bool = True) -> int:
    from ._io import InputError, duration_ns

    if re.fullmatch(r"\s*[+-]?\d+\s*", text) and int(text) != 0:
        raise UsageError(f"{option} {text!r}: give a unit, e.g. {text}s or {text}ms")
    try:
        ns = duration_ns(text, option)
    except InputError as e:
        raise UsageError(str(e)) from None
    if ns < 0 or (ns == 0 and not allow_zero):
        raise UsageError(f"{option} must be {'non-negative' if allow_zero else 'positive'}, got {text!r}")
    return ns


def _parse_param(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def make_detector(spec: str):
    """A detector from ``NAME`` or ``NAME:k=v,k=v``, looked up in ``cusense.detectors``
    (case and underscores ignored; ``default`` gives ``cusense.detectors.default()``)."""
    import cusense

    detectors = getattr(cusense, "detectors", None)
    if detectors is None:
        raise UsageError("--detector needs anomaly detectors (cusense.detectors), which this "
                         "installation of cusense does not provide; run without --detector")
    name, _, params = spec.partition(":")
    kwargs = {}
    for item in filter(None, (s.strip() for s in params.split(","))):
        k, eq, v = item.partition("=")
        if not eq:
            raise UsageError(f"--detector {spec!r}: parameters are k=v pairs separated by commas")
        kwargs[k.strip()] = _parse_param(v.strip())

    def norm(s):
        return re.sub(r"[^a-z0-9]", "", s.lower())

    wanted = norm(name)
    if wanted == "default" and callable(getattr(detectors, "default", None)):
        factory = detectors.default
    else:
        import types

        base = getattr(detectors, "Detector", None)

        def usable(obj):
            if isinstance(base, type):      # the detector classes
                return isinstance(obj, type) and issubclass(obj, base) and obj is not base
            return callable(obj) and not isinstance(obj, types.ModuleType)

        candidates = {n: getattr(detectors, n) for n in dir(detectors)
                      if not n.startswith("_") and n not in ("default", "score")
                      and usable(getattr(detectors, n))}
        exact = [n for n in candidates if norm(n) == wanted]
        prefix = [n for n in candidates if norm(n).startswith(wanted)]
        match = exact or (prefix if len(prefix) == 1 else [])
        if not match:
            names = ", ".join(sorted(candidates)) or "none"
            raise UsageError(f"--detector {name!r}: no such detector (available: {names}, default)")
        factory = candidates[match[0]]
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--detector {spec!r}: {e}") from None


def _poll_scores(pipe):
    """The scores emitted so far as a list of Results (one per detector when they come apart)."""
    from ._result import Result

    scores = pipe.poll_scores()
    if isinstance(scores, Result) or hasattr(scores, "columns") and hasattr(scores, "to_dict"):
        return [scores]
    if isinstance(scores, dict):
        return [s for s in scores.values()]
    return list(scores)


def cmd_run(args) -> int:
    import numpy as np

    import cusense

    from ._io import Converter, InputError, Progress, Reader, Writer, file_format
    from ._pipeline import AGG_ALIASES, window_from_config

    settings = _run_settings(args)
    aggs = settings["aggs"]
    known = (set(cusense._core.aggregation_names()) - {"pXX"}) | set(AGG_ALIASES)
    unknown = [a for a in aggs if a not in known and not QUANTILE_NAME.fullmatch(a)]
    if not aggs or unknown:
        raise UsageError(f"--aggs: unknown aggregation {', '.join(map(repr, unknown)) or '(none)'}; "
                         f"choose from {', '.join(sorted(known))} or a quantile pXX (p50, p99.9)")
    if args.batch <= 0:
        raise UsageError("--batch must be positive")
    if len(set(args.value)) != len(args.value):
        raise UsageError("--value: each column may be given once")
    if args.time_unit and args.time_format:
        raise UsageError("--time-unit is for numeric times, --time-format for strings: give one")
    unit = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[args.time_unit or "ns"]
    spans = [settings[k] for k in ("size", "slide", "offset", "gap") if k in settings]
    if any(span % unit for span in spans):
        raise UsageError(f"window sizes, slides, offsets and gaps must be whole multiples of "
                         f"--time-unit {args.time_unit}")
    if args.out_times in ("s", "ms", "us") and any(
            span % {"s": 10**9, "ms": 10**6, "us": 10**3}[args.out_times] for span in spans):
        raise UsageError(f"--out-times {args.out_times}: window sizes, slides, offsets and gaps "
                         f"must be whole multiples of it (window bounds would be rounded)")
    detectors = [make_detector(spec) for spec in settings["detectors"]]
    try:
        out_format = file_format(args.out, args.out_format)
    except InputError as e:
        raise UsageError(str(e)) from None
    late_path = args.late_out or sibling(args.out, "late")
    scores_path = args.scores_out or sibling(args.out, "scores")
    if os.path.abspath(args.out) == os.path.abspath(args.input):
        raise UsageError("--out must not be the input file")

    columns = ([args.key] if args.key else []) + [args.time] + list(args.value)
    na_values = [token.strip() for token in args.na_values.split(",") if token.strip()]
    reader = Reader(args.input, columns, args.batch, fmt=args.format, delimiter=args.delimiter,
                    na_values=na_values)
    conv = Converter(reader, args.key, args.time, args.value, time_unit=args.time_unit,
                     time_format=args.time_format, key_type=args.key_type,
                     spans=spans, out_format=out_format, out_times=args.out_times)
    kwargs: dict[str, Any] = {}
    if len(args.value) > 1:
        kwargs["channels"] = list(args.value)
    if detectors:
        kwargs["detectors"] = detectors
    try:
        pipe = cusense.Pipeline(window_from_config(settings), aggs=aggs,
                                max_out_of_orderness=settings["max_out_of_orderness"],
                                allowed_lateness=settings["allowed_lateness"],
                                backend=settings["backend"], **kwargs)
    except cusense.BackendUnavailableError as e:
        raise UsageError(f"--backend {settings['backend']}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None

    windows = Writer(args.out, out_format)
    late = Writer(late_path, out_format)
    scores = Writer(scores_path, out_format) if detectors else None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress(show)
    t0 = time.perf_counter()
    records = 0

    # Late records keep the input's column names, so they can be fed again.
    late_names = [args.key or "key", args.time] + list(args.value)

    def drain(final: bool):
        res = pipe.flush() if final else pipe.poll()
        windows.write(conv.result_table(res))
        late.write(conv.late_table(pipe.poll_late(), late_names))
        if scores is not None:
            for part in _poll_scores(pipe):
                scores.write(conv.result_table(part))

    outputs = [w for w in (windows, late, scores) if w is not None]
    try:
        for batch in reader:
            if batch.data.num_rows == 0:
                continue
            keys = (conv.keys(batch) if args.key
                    else np.full(batch.data.num_rows, args.key_const, dtype=np.uint32))
            if not args.key and not 0 <= args.key_const <= np.iinfo(np.uint32).max:
                raise UsageError("--key-const must be in 0..4294967295")
            ts = conv.timestamps(batch)
            vals = conv.values(batch)
            try:
                pipe.push(keys, ts, vals)
            except (TypeError, ValueError) as e:
                raise InputError(f"{args.input}, rows {reader.location(batch, 0)} to "
                                 f"{reader.location(batch, batch.data.num_rows - 1)}: {e}") from None
            records += batch.data.num_rows
            drain(final=False)
            progress.update(*reader.progress(), records)
        drain(final=True)
        progress.update(1, 1, records, final=True)
    except BaseException:
        progress.close()
        kept = [name for name in (w.discard(keep=args.keep_partial) for w in outputs) if name]
        if kept:
            print(f"cusense run: the run failed; incomplete outputs kept: {', '.join(kept)}",
                  file=sys.stderr)
        raise
    progress.close()
    for w in outputs:
        w.commit()
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        st = pipe.stats
        print(f"cusense run: {records:,} records in {elapsed:.2f} s on {pipe.backend}; "
              f"{windows.rows:,} windows -> {args.out}")
        print(f"  late records: {st['records_late']:,} -> {late_path}"
              + (f"; scores: {scores.rows:,} -> {scores_path}" if scores is not None else ""))
    return 0


# --- cusense devices --------------------------------------------------------------------------

def cmd_devices(args) -> int:
    import cusense

    devs = cusense.devices()
    if devs:
        for d in devs:
            mem = getattr(d, "total_memory", 0) / 2**30
            cc = f"{getattr(d, 'compute_major', '?')}.{getattr(d, 'compute_minor', '?')}"
            print(f"cuda:{d.ordinal}  {d.name}  compute capability {cc}  {mem:.1f} GiB")
        return 0
    if not cusense._core.cuda_built():
        print("no CUDA devices: this cusense was built without the CUDA backend (CPU only); "
              "rebuild with nvcc available (CUSENSE_CUDA=ON) to use a GPU")
    else:
        print("no CUDA devices: the CUDA backend is built, but no usable GPU was found "
              "(no NVIDIA driver, no device, or CUDA_VISIBLE_DEVICES hides them)")
    print("the CPU backend is used (backend='auto' or 'cpu')")
    return 0


# --- cusense bench / demo ---------------------------------------------------------------------

def _find_upwards(relative: str):
    here = os.path.abspath(os.getcwd())
    while True:
        candidate = os.path.join(here, relative)
        if os.path.isfile(candidate):
            return candidate
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def cmd_bench(args) -> int:
    import subprocess

    # the suite lives in the source tree (benchmarks/), not in the installed package
    script = _find_upwards(os.path.join("benchmarks", "run.py"))
    if script:
        return subprocess.call([sys.executable, script, *_passed_on(args)])
    raise UsageError("the benchmark suite is not available: no benchmarks/run.py in the current "
                     "directory or above (run from a cusense source checkout)")


def _passed_on(args) -> list[str]:
    """The arguments a pass-through command hands on (a leading "--" dropped)."""
    return args.rest[1:] if args.rest[:1] == ["--"] else args.rest


def cmd_demo(args) -> int:
    from . import demo

    return int(demo.main(_passed_on(args)) or 0)


def cmd_serve(args) -> int:
    from .service import ConfigError, serve

    try:
        return serve(args.config)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def cmd_simulate(args) -> int:
    from . import simulator

    return int(simulator.main(_passed_on(args)) or 0)


# --- entry point ------------------------------------------------------------------------------

def _add_passthrough(sub, name: str, func, help: str, description: str) -> None:
    """A command whose arguments all go to another program (its own --help after "--")."""
    p = sub.add_parser(name, help=help, description=description, prefix_chars="+", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=func)


class _Parser(argparse.ArgumentParser):
    """The top-level parser, which also knows its subcommands' parsers (for their --help)."""

    subcommands: dict[str, argparse.ArgumentParser]


def build_parser() -> _Parser:
    ap = _Parser(prog="cusense", description=MAIN_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run(sub)
    d = sub.add_parser("devices", help="list usable CUDA devices",
                       description="Lists the CUDA devices cusense can use, or says why there are none.")
    d.set_defaults(func=cmd_devices)
    _add_passthrough(sub, "bench", cmd_bench, "run the benchmark suite (arguments are passed on)",
                     "Runs the benchmark suite, benchmarks/run.py of the source checkout "
                     "that holds the current directory. Arguments after "
                     "'bench' go to the suite (e.g. cusense bench --quick; "
                     "cusense bench -- --help for its options).")
    _add_passthrough(sub, "demo", cmd_demo, "run the synthetic fleet demo (arguments are passed on)",
                     "Runs python -m cusense.demo; arguments after 'demo' go to it "
                     "(cusense demo -- --help for its options).")
    sv = sub.add_parser("serve", help="run the fleet service: broker -> cusense -> storage",
                        description="Runs cusense as a long-lived service configured by a TOML "
                                    "file (source, pipeline, sinks, checkpoints, metrics; see "
                                    "docs/service.md). [pipeline] workers = N (N >= 2) runs the "
                                    "pipeline partitioned over N Ray actors (cusense.distributed; "
                                    "ray_address = a Ray cluster to join, default a local one). "
                                    "SIGTERM or Ctrl-C drains, takes a final checkpoint and exits 0.")
    sv.add_argument("config", help="TOML configuration file")
    sv.set_defaults(func=cmd_serve)
    _add_passthrough(sub, "simulate", cmd_simulate, "publish a simulated device fleet to MQTT or Kafka",
                     "Runs python -m cusense.simulator; arguments after 'simulate' "
                     "go to it (cusense simulate -- --help for its options).")
    ap.subcommands = dict(sub.choices)
    return ap


def _version() -> str:
    try:
        from . import __version__
        return f"cusense {__version__}"
    except Exception:  # pragma: no cover
        return "cusense"


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "bench"/"demo" pass everything on, "--help" included (after "--"); their own --help/-h
    # without "--" shows the subcommand help.
    if len(argv) >= 2 and argv[0] in ("bench", "demo", "simulate") and argv[1] in ("-h", "--help"):
        parser.subcommands[argv[0]].print_help()
        return 0
    args = parser.parse_args(argv)
    from ._io import InputError

    try:
        return args.func(args)
    except UsageError as e:
        print(f"cusense {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as e:
        print(f"cusense {args.command}: error: {e}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"cusense {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
