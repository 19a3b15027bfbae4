"""The ``cusense`` command line: CSV and Parquet round trips against a pandas oracle, and every
input error exits non-zero with a message naming the file, the line/row and the column."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import cusense  # noqa: E402
from cusense.cli import main  # noqa: E402

BASE = np.datetime64("2026-03-01T00:00:00", "ns").astype(np.int64)
SEC = 1_000_000_000


def oracle(df, key, time_ns, values, size, bound=0, aggs=("count", "mean", "min", "max")):
    """Windows and late records computed plainly with pandas (arrival order = row order)."""
    t = df[time_ns].to_numpy(np.int64)
    win = np.floor_divide(t, size) * size
    prev_max = np.concatenate([[np.iinfo(np.int64).min], np.maximum.accumulate(t)[:-1]])
    watermark = np.where(prev_max == np.iinfo(np.int64).min, prev_max, prev_max - bound)
    late = win + size <= watermark
    on_time = df[~late].assign(window_start=win[~late])
    groups = on_time.groupby([key, "window_start"], sort=False)
    out = groups[values].agg(list(aggs))
    out.columns = [a if len(values) == 1 else f"{a}_{v}" for v, a in out.columns]
    out = out.reset_index().sort_values(["window_start", key], kind="stable").reset_index(drop=True)
    return out, df[late]


def fleet(rng, n=20_000, keys=50, string_keys=False, shuffle_ns=0):
    t = BASE + np.sort(rng.integers(0, 600 * SEC, n))
    if shuffle_ns:
        t = t - rng.integers(0, shuffle_ns, n)
    k = rng.integers(0, keys, n)
    df = pd.DataFrame({
        "sensor": [f"s-{x:03d}" for x in k] if string_keys else k,
        "t_ns": t,
        "temp": np.round(rng.normal(20, 5, n), 3),
        "hum": np.round(rng.uniform(0, 100, n), 3),
    })
    return df


def read(path):
    return pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path)


def check_windows(got, expected, key, size, time_as):
    assert len(got) == len(expected)
    if time_as == "datetime":
        starts = pd.to_datetime(got["window_start"]).to_numpy().astype("datetime64[ns]").view(np.int64)
        ends = pd.to_datetime(got["window_end"]).to_numpy().astype("datetime64[ns]").view(np.int64)
    else:   # integer seconds
        starts = got["window_start"].to_numpy(np.int64) * SEC
        ends = got["window_end"].to_numpy(np.int64) * SEC
    np.testing.assert_array_equal(ends - starts, np.full(len(got), size))
    # rows come ordered by (window_start, key code); string ids get codes in order of appearance
    got = got.assign(_start=starts, _key=got["key"].astype(str)).sort_values(["_start", "_key"], kind="stable")
    expected = expected.assign(_key=expected[key].astype(str)).sort_values(["window_start", "_key"], kind="stable")
    np.testing.assert_array_equal(got["_start"].to_numpy(), expected["window_start"].to_numpy(np.int64))
    np.testing.assert_array_equal(got["key"].astype(str).to_numpy(), expected[key].astype(str).to_numpy())
    for col in expected.columns:
        if col in (key, "window_start", "_key"):
            continue
        if col.startswith("count"):
            np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy())
        else:
            np.testing.assert_allclose(got[col].to_numpy(float), expected[col].to_numpy(float), rtol=1e-9)


def test_csv_round_trip_datetime_strings_string_keys(tmp_path, rng, capsys):
    df = fleet(rng, string_keys=True, shuffle_ns=3 * SEC)
    df.loc[rng.choice(len(df), 20, replace=False), "temp"] = np.nan     # empty cells -> NaN
    csv = tmp_path / "readings.csv"
    out = df.assign(ts=pd.to_datetime(df["t_ns"]).dt.strftime("%Y-%m-%d %H:%M:%S.%f"))
    out[["sensor", "ts", "temp"]].to_csv(csv, index=False)
    # the strings keep microseconds: the oracle works on the same rounded times
    df["t_ns"] = (df["t_ns"] // 1000) * 1000
    rc = main(["run", str(csv), "--key", "sensor", "--time", "ts", "--value", "temp",
               "--window", "10s", "--aggs", "count,mean,min,max", "--max-out-of-orderness", "1s",
               "--batch", "3000", "--no-progress", "--out", str(tmp_path / "w.csv")])
    assert rc == 0, capsys.readouterr().err
    exp, late = oracle(df, "sensor", "t_ns", ["temp"], 10 * SEC, bound=SEC)
    assert len(late) > 0
    got = read(tmp_path / "w.csv")
    assert list(got.columns) == ["key", "window_start", "window_end", "count", "mean", "min", "max", "nan_count"]
    check_windows(got, exp, "sensor", 10 * SEC, "datetime")
    assert got["nan_count"].sum() == df.loc[~df.index.isin(late.index), "temp"].isna().sum()
    got_late = read(tmp_path / "w.late.csv")
    assert list(got_late.columns) == ["sensor", "ts", "temp"]
    assert got_late["sensor"].tolist() == late["sensor"].tolist()
    np.testing.assert_array_equal(pd.to_datetime(got_late["ts"]).to_numpy().astype("datetime64[ns]").view(np.int64),
                                  late["t_ns"].to_numpy())
    summary = capsys.readouterr().out
    assert f"{len(df):,} records" in summary and f"late records: {len(late):,}" in summary


def test_parquet_round_trip_int_seconds_two_channels(tmp_path, rng, capsys):
    df = fleet(rng, n=30_000, keys=500)
    df["t_s"] = df["t_ns"] // SEC
    df["t_ns"] = df["t_s"] * SEC
    src = tmp_path / "readings.parquet"
    pq.write_table(pa.Table.from_pandas(df[["sensor", "t_s", "temp", "hum"]], preserve_index=False),
                   src, row_group_size=7000)
    rc = main(["run", str(src), "--key", "sensor", "--time", "t_s", "--time-unit", "s",
               "--value", "temp", "--value", "hum", "--window", "1min", "--aggs", "count,mean,max",
               "--batch", "4096", "--backend", "cpu", "--no-progress", "--quiet",
               "--out", str(tmp_path / "w.parquet")])
    assert rc == 0, capsys.readouterr().err
    exp, late = oracle(df, "sensor", "t_ns", ["temp", "hum"], 60 * SEC, aggs=("count", "mean", "max"))
    assert len(late) == 0
    got = read(tmp_path / "w.parquet")
    assert got["window_start"].dtype == np.int64         # integer input -> integer seconds out
    assert got["key"].dtype == np.uint32
    check_windows(got, exp, "sensor", 60 * SEC, "int")
    assert len(read(tmp_path / "w.late.parquet")) == 0
    assert capsys.readouterr().out == ""


def test_csv_to_parquet_one_sensor_int_ns(tmp_path, rng, capsys):
    df = fleet(rng, n=5000)
    csv = tmp_path / "one.csv"
    df[["t_ns", "temp"]].to_csv(csv, index=False)
    rc = main(["run", str(csv), "--key-const", "7", "--time", "t_ns", "--value", "temp",
               "--window", "30s", "--aggs", "mean", "--no-progress", "--quiet",
               "--out", str(tmp_path / "w.parquet")])
    assert rc == 0, capsys.readouterr().err
    got = read(tmp_path / "w.parquet")
    exp, _ = oracle(df.assign(sensor=7), "sensor", "t_ns", ["temp"], 30 * SEC, aggs=("mean",))
    assert (got["key"] == 7).all()
    np.testing.assert_array_equal(got["window_start"].to_numpy(np.int64), exp["window_start"].to_numpy())
    np.testing.assert_allclose(got["mean"].to_numpy(), exp["mean"].to_numpy(), rtol=1e-9)


def test_parquet_timestamps_and_dictionary_keys(tmp_path, capsys):
    times = pd.date_range("2026-01-01", periods=600, freq="1s").to_numpy().astype("datetime64[ms]")
    names = np.array(["pump-a", "pump-b", "valve"])[np.arange(600) % 3]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array(names).dictionary_encode(), "when": pa.array(times),
                             "v": np.arange(600.0)}), src)
    rc = main(["run", str(src), "--key", "id", "--time", "when", "--value", "v", "--window", "1min",
               "--aggs", "count,sum", "--batch", "100", "--no-progress", "--quiet",
               "--out", str(tmp_path / "w.csv")])
    assert rc == 0, capsys.readouterr().err
    got = read(tmp_path / "w.csv")
    df = pd.DataFrame({"key": names, "w": pd.to_datetime(times).floor("1min"), "v": np.arange(600.0)})
    exp = df.groupby(["w", "key"])["v"].agg(["count", "sum"]).reset_index()
    got = got.assign(w=pd.to_datetime(got["window_start"])).sort_values(["w", "key"]).reset_index(drop=True)
    assert got["key"].tolist() == exp["key"].tolist()
    assert (got["w"] == exp["w"]).all()
    np.testing.assert_array_equal(got["count"], exp["count"])
    np.testing.assert_allclose(got["sum"], exp["sum"], rtol=1e-9, atol=1e-9)


# --- errors -----------------------------------------------------------------------------------

def write_csv(tmp_path, text, name="in.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run_err(capsys, path, *extra, out=None):
    args = ["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", "1s",
            "--no-progress", "--out", str(out or path.parent / "out.csv"), *extra]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc != 0
    return rc, err


@pytest.mark.parametrize("text, line, column, words", [
    ("id,t,v\n1,100,1.5\n2,200,abc\n", 3, "v", "'abc' is not a number"),
    ("id,t,v\n1,100,1.5\n2,200,2\n3,x,2\n", 4, "t", "cannot parse 'x'"),
    ("id,t,v\n1,2026-01-01 00:00:00,1\n2,2026-13-01 00:00:00,2\n", 3, "t", "cannot parse '2026-13-01"),
    ("id,t,v\n1,100,1\n2,,2\n", 3, "t", "missing time"),
    ("id,t,v\n1,100,1\n-5,200,2\n", 3, "id", "outside"),
    ("id,t,v\n1,100,1\nabc,200,2\n", 3, "id", "not an integer"),
])
def test_bad_values_name_file_line_column(tmp_path, capsys, text, line, column, words):
    path = write_csv(tmp_path, text)
    rc, err = run_err(capsys, path)
    assert rc == 1
    assert str(path) in err and f"line {line}" in err and f"column '{column}'" in err and words in err, err


def test_bad_value_in_a_later_batch(tmp_path, capsys):
    rows = "".join(f"{i % 3},{i},{i * 0.5}\n" for i in range(5000))
    path = write_csv(tmp_path, "id,t,v\n" + rows + "1,5000,oops\n")
    rc, err = run_err(capsys, path, "--batch", "500")
    assert "line 5002" in err and "column 'v'" in err and "'oops'" in err, err


def test_missing_column(tmp_path, capsys):
    path = write_csv(tmp_path, "id,time,v\n1,100,1\n")
    rc, err = run_err(capsys, path)
    assert rc == 1 and str(path) in err and "'t'" in err and "not found" in err and "'time'" in err, err


def test_missing_file(tmp_path, capsys):
    rc, err = run_err(capsys, tmp_path / "nope.csv")
    assert rc == 1 and "nope.csv" in err and "no such file" in err, err


def test_ragged_csv_row(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n1,100,1\n2,200\n3,300,3\n")
    rc, err = run_err(capsys, path)
    assert rc == 1 and str(path) in err and "line 3" in err and "Expected 3 columns" in err, err


def test_string_values_in_parquet(tmp_path, capsys):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "t": [1, 2, 3], "v": ["1.0", "2.5", "warm"]}), path)
    rc, err = run_err(capsys, path, out=tmp_path / "o.parquet")
    assert rc == 1 and str(path) in err and "row 3" in err and "column 'v'" in err and "'warm'" in err, err


def test_wrong_column_type_in_parquet(tmp_path, capsys):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "t": [1, 2], "v": [[1.0], [2.0]]}), path)
    rc, err = run_err(capsys, path, out=tmp_path / "o.parquet")
    assert rc == 1 and "column 'v'" in err and "must be numbers" in err, err


@pytest.mark.parametrize("extra, words", [
    (["--aggs", "mean,mode"], "unknown aggregation 'mode'"),
    (["--window", "60"], "give a unit"),
    (["--window", "0s"], "must be positive"),
    (["--out", "x.xlsx"], "cannot tell the format"),
])
def test_bad_options(tmp_path, capsys, extra, words):
    path = write_csv(tmp_path, "id,t,v\n1,100,1\n")
    if extra[0] == "--out":
        extra = ["--out", str(tmp_path / extra[1])]
    rc, err = run_err(capsys, path, *extra)
    assert rc == 2 and words in err, err


def test_detector_option(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n" + "".join(f"1,{i * SEC},{np.sin(i)}\n" for i in range(200)))
    args = ["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", "10s",
            "--detector", "ewma", "--no-progress", "--quiet", "--out", str(tmp_path / "w.csv")]
    rc = main(args)
    err = capsys.readouterr().err
    if not hasattr(cusense, "detectors"):
        assert rc == 2 and "cusense.detectors" in err, err
        return
    assert rc == 0, err
    scores = read(tmp_path / "w.scores.csv")
    assert len(scores) == 200 and any(c.startswith("score") for c in scores.columns), scores.columns


def test_unknown_detector(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n1,100,1\n")
    rc, err = run_err(capsys, path, "--detector", "no-such-detector")
    assert rc == 2 and ("no such detector" in err or "cusense.detectors" in err), err


# --- other commands ---------------------------------------------------------------------------

def test_devices(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    if cusense.devices():
        assert "cuda:0" in out
    else:
        assert "no CUDA devices" in out


@pytest.mark.parametrize("command", [[], ["run"], ["devices"], ["bench"], ["demo"]])
def test_help(command):
    proc = subprocess.run([sys.executable, "-m", "cusense.cli", *command, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: cusense")


def test_bench_missing_suite_is_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside a source checkout: no benchmarks/run.py above
    assert main(["bench", "--quick"]) == 2
    assert "benchmark suite is not available" in capsys.readouterr().err


def test_bench_runs_the_suite_of_the_checkout(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2] / "tests")  # found upwards
    proc = subprocess.run([sys.executable, "-m", "cusense.cli", "bench", "--", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: benchmarks/run.py")


def test_demo_runs():
    proc = subprocess.run([sys.executable, "-m", "cusense.cli", "demo", "--records", "20000",
                           "--sensors", "20", "--backend", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backend=cpu" in proc.stdout


def test_console_script_progress(tmp_path):
    path = write_csv(tmp_path, "id,t,v\n" + "".join(f"{i % 4},{i},{i}\n" for i in range(1000)))
    exe = os.path.join(os.path.dirname(sys.executable), "cusense")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "cusense.cli"]
    proc = subprocess.run([*cmd, "run", str(path), "--key", "id", "--time", "t", "--value", "v",
                           "--window", "100ns", "--progress", "--out", str(tmp_path / "w.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "100.0%" in proc.stderr and "1,000 records" in proc.stdout
    assert len(read(tmp_path / "w.csv")) == 40


# --- window kinds, allowed lateness, several detectors, --config ---------------------------------

def _api_result(df, window, **kwargs):
    """What the Python API gives for the same stream (integer keys, ns times, one channel)."""
    pipe = cusense.Pipeline(window, **kwargs)
    pipe.push(df["sensor"].to_numpy(np.uint32), df["t_ns"].to_numpy(np.int64),
              df["temp"].to_numpy(np.float64))
    return pipe.flush().to_pandas(datetimes=False)


@pytest.mark.parametrize("options, window", [
    (["--window", "30s", "--slide", "10s"], cusense.Sliding("30s", "10s")),
    (["--session", "4s"], cusense.Session("4s")),
    (["--count", "5", "--min-periods", "2"], cusense.Rolling(5, min_periods=2)),
    (["--window", "10s", "--allowed-lateness", "5s"], cusense.Tumbling("10s")),
])
def test_window_kinds_match_the_python_api(tmp_path, rng, options, window):
    df = fleet(rng, n=5_000, keys=20, shuffle_ns=4 * SEC)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(df[["sensor", "t_ns", "temp"]], preserve_index=False), src)
    rc = main(["run", str(src), "--key", "sensor", "--time", "t_ns", "--value", "temp", *options,
               "--aggs", "count,mean,max,p90", "--max-out-of-orderness", "1s", "--batch", "777",
               "--no-progress", "--quiet", "--out", str(tmp_path / "w.parquet")])
    assert rc == 0
    got = read(tmp_path / "w.parquet")
    lateness = "5s" if "--allowed-lateness" in options else 0
    want = _api_result(df, window, aggs=["count", "mean", "max", "p90"], max_out_of_orderness="1s",
                       allowed_lateness=lateness)
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want) > 0
    for col in want.columns:
        g = got[col].to_numpy()
        g = g.astype("datetime64[ns]").view(np.int64) if g.dtype.kind == "M" else g
        np.testing.assert_allclose(g.astype(float), want[col].to_numpy().astype(float), rtol=1e-12, err_msg=col)
    if "--allowed-lateness" in options:
        assert got["is_update"].any()


def test_config_file_shares_the_serve_pipeline_table(tmp_path, rng):
    df = fleet(rng, n=3_000, keys=10, shuffle_ns=2 * SEC)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(df[["sensor", "t_ns", "temp"]], preserve_index=False), src)
    config = tmp_path / "serve.toml"
    config.write_text('[source]\ntype = "mqtt"\ntopic_template = "f/{key}"\n\n'
                      '[pipeline]\nwindow = "sliding"\nsize = "20s"\nslide = "5s"\n'
                      'aggs = ["count", "min"]\nmax_out_of_orderness = "3s"\n'
                      'detectors = ["ewma:alpha=0.1", "rolling_z:window=20"]\n')
    out = tmp_path / "w.csv"
    rc = main(["run", str(src), "--key", "sensor", "--time", "t_ns", "--value", "temp",
               "--config", str(config), "--no-progress", "--quiet", "--out", str(out)])
    assert rc == 0
    want = _api_result(df, cusense.Sliding("20s", "5s"), aggs=["count", "min"], max_out_of_orderness="3s")
    got = read(out)
    assert len(got) == len(want) and got["count"].tolist() == want["count"].tolist()
    scores = read(tmp_path / "w.scores.csv")
    assert {"score_ewma", "score_rolling_z"} <= set(scores.columns)
    # options given on the command line win over the file
    rc = main(["run", str(src), "--key", "sensor", "--time", "t_ns", "--value", "temp",
               "--config", str(config), "--window", "1min", "--aggs", "count",
               "--no-progress", "--quiet", "--out", str(out)])
    assert rc == 0 and list(read(out).columns) == ["key", "window_start", "window_end", "count", "nan_count"]


@pytest.mark.parametrize("options, message", [
    (["--window", "10s", "--session", "5s"], "one window kind"),
    (["--slide", "5s"], "--slide needs --window"),
    (["--count", "0"], "--count must be positive"),
    (["--aggs", "mean"], "give the window"),
    (["--window", "10s", "--min-periods", "3"], "--min-periods goes with --count"),
])
def test_window_option_errors(tmp_path, capsys, options, message):
    src = tmp_path / "in.csv"
    src.write_text("k,t,v\n1,1,1.0\n")
    rc = main(["run", str(src), "--key", "k", "--time", "t", "--value", "v", *options,
               "--out", str(tmp_path / "w.csv")])
    assert rc == 2 and message in capsys.readouterr().err


# --- progress ---------------------------------------------------------------------------------

def test_csv_progress_follows_the_records(tmp_path):
    """The bar shows the bytes of the batches handed out, not how far pyarrow has read ahead."""
    from cusense._io import Reader

    n = 200_000
    path = write_csv(tmp_path, "id,t,v\n" + "".join(f"{i % 7},{1_000_000 + i},{i % 10}.5\n" for i in range(n)))
    reader = Reader(str(path), ["id", "t", "v"], 10_000)
    rows, fractions = 0, []
    for batch in reader:
        rows += batch.data.num_rows
        done, total = reader.progress()
        fractions.append(done / total)
        assert abs(done / total - rows / n) < 0.01, (rows, done, total)
    assert rows == n and len(fractions) > 5
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_parquet_progress_follows_the_row_groups(tmp_path):
    from cusense._io import Reader

    n = 60_000
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": np.arange(n) % 5, "t": np.arange(n), "v": np.ones(n)}), path,
                   row_group_size=10_000)
    reader = Reader(str(path), ["id", "t", "v"], 3000)
    rows = 0
    for batch in reader:
        rows += batch.data.num_rows
        assert reader.progress() == (rows, n)
    assert rows == n


# --- outputs appear only when complete ------------------------------------------------------------

def _bad_near_the_end(tmp_path):
    rows = "".join(f"{i % 3},{i * 10**8},{i * 0.5}\n" for i in range(5000))
    return write_csv(tmp_path, "id,t,v\n" + rows + "1,500000000000,oops\n")


def test_failed_run_leaves_no_partial_output(tmp_path, capsys):
    path = _bad_near_the_end(tmp_path)
    out = tmp_path / "w.csv"
    out.write_text("previous result\n")
    detector = ["--detector", "ewma"] if hasattr(cusense, "detectors") else []
    rc, err = run_err(capsys, path, "--batch", "500", *detector, out=out)
    assert rc == 1 and "line 5002" in err, err
    assert out.read_text() == "previous result\n"          # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "w.csv"]


def test_keep_partial_keeps_the_temporary_files(tmp_path, capsys):
    path = _bad_near_the_end(tmp_path)
    out = tmp_path / "w.csv"
    rc, err = run_err(capsys, path, "--batch", "500", "--keep-partial", out=out)
    assert rc == 1
    assert not out.exists()
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name != "in.csv")
    assert kept == ["w.csv.partial", "w.late.csv.partial"]
    assert "incomplete" in err and str(tmp_path / "w.csv.partial") in err, err
    assert len(read(tmp_path / "w.csv.partial")) > 100


def test_successful_run_leaves_no_temporary_files(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n1,100,1\n2,200,2\n")
    assert main(["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", "1s",
                 "--no-progress", "--quiet", "--out", str(tmp_path / "w.parquet")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "w.late.parquet", "w.parquet"]


# --- missing values, BOM, blank lines ---------------------------------------------------------------

@pytest.mark.parametrize("token", ["n/a", "NA", "null", "N/A", "#N/A"])
def test_missing_value_tokens_are_errors_by_default(tmp_path, capsys, token):
    path = write_csv(tmp_path, f"id,t,v\n1,100,1\n2,200,{token}\n")
    rc, err = run_err(capsys, path)
    assert rc == 1 and f"line 3, column 'v': value '{token}' is not a number" in err, err


def test_na_values_option(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n1,100,1\n1,200,n/a\n1,300,NA\n1,400,null\n1,500,\n1,600,3\n")
    out = tmp_path / "w.csv"
    rc = main(["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", "1s",
               "--aggs", "count,mean", "--na-values", "NA,n/a,null", "--no-progress", "--quiet",
               "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    got = read(out)
    assert got["count"].tolist() == [2] and got["nan_count"].tolist() == [4] and got["mean"].tolist() == [2.0]


def test_na_values_for_a_missing_time(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n1,100,1\n1,NA,2\n")
    rc, err = run_err(capsys, path, "--na-values", "NA")
    assert rc == 1 and "line 3, column 't': missing time" in err, err


def test_utf8_bom_before_the_header(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_bytes("\ufeffid,t,v\n1,100,1.5\n2,200,2.5\n".encode("utf-8"))
    rc = main(["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", "1s",
               "--no-progress", "--quiet", "--out", str(tmp_path / "w.csv")])
    assert rc == 0, capsys.readouterr().err
    assert read(tmp_path / "w.csv")["key"].tolist() == [1, 2]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_blank_lines_do_not_shift_line_numbers(tmp_path, capsys, newline):
    text = newline.join(["id,t,v", "1,100,1", "", "", "2,200,abc", ""])
    path = tmp_path / "in.csv"
    path.write_bytes(text.encode())
    rc, err = run_err(capsys, path)
    assert rc == 1 and "line 5, column 'v'" in err, err


def test_blank_lines_in_a_later_batch(tmp_path, capsys):
    lines = ["id,t,v"]
    for i in range(5000):
        lines.append(f"{i % 3},{i},{i * 0.5}")
        if i % 100 == 0:
            lines.append("")
    lines.append("1,5000,oops")
    path = write_csv(tmp_path, "\n".join(lines) + "\n")
    rc, err = run_err(capsys, path, "--batch", "500")
    assert f"line {len(lines)}, column 'v'" in err and "'oops'" in err, err


# --- output times and values keep the input's form ----------------------------------------------

def _run_strings(tmp_path, capsys, times, *extra, values=None, window="10s"):
    values = values or [f"{i}.5" for i in range(len(times))]
    path = write_csv(tmp_path, "id,t,v\n" + "".join(f"1,{t},{v}\n" for t, v in zip(times, values)))
    rc = main(["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", window,
               "--aggs", "count", "--no-progress", "--quiet", "--out", str(tmp_path / "w.csv"), *extra])
    assert rc == 0, capsys.readouterr().err
    windows = pd.read_csv(tmp_path / "w.csv", dtype=str)
    late = pd.read_csv(tmp_path / "w.late.csv", dtype=str)
    return windows, late


@pytest.mark.parametrize("times, starts, late_time", [
    (["2026-03-01T00:00:01", "2026-03-01T00:00:12", "2026-03-01T00:00:03"],
     ["2026-03-01T00:00:00", "2026-03-01T00:00:10"], "2026-03-01T00:00:03"),
    (["2026-03-01 00:00:01.250", "2026-03-01 00:00:12.5", "2026-03-01 00:00:03.125"],
     ["2026-03-01 00:00:00.000", "2026-03-01 00:00:10.000"], "2026-03-01 00:00:03.125"),
    (["2026-03-01T00:00:01+02:00", "2026-03-01T00:00:12+02:00", "2026-03-01T00:00:03+02:00"],
     ["2026-03-01T00:00:00+02:00", "2026-03-01T00:00:10+02:00"], "2026-03-01T00:00:03+02:00"),
    (["2026-03-01T00:00:01.5Z", "2026-03-01T00:00:12.5Z", "2026-03-01T00:00:03.5Z"],
     ["2026-03-01T00:00:00.000Z", "2026-03-01T00:00:10.000Z"], "2026-03-01T00:00:03.500Z"),
    (["2026-03-01 00:00:01-0500", "2026-03-01 00:00:12-0500", "2026-03-01 00:00:03-0500"],
     ["2026-03-01 00:00:00-0500", "2026-03-01 00:00:10-0500"], "2026-03-01 00:00:03-0500"),
])
def test_iso_times_come_out_in_the_input_form(tmp_path, capsys, times, starts, late_time):
    windows, late = _run_strings(tmp_path, capsys, times)
    assert windows["window_start"].tolist() == starts
    # late records are written back as they were read (fractions padded to 3, 6 or 9 digits)
    assert late["t"].tolist() == [late_time]


def test_iso_times_get_the_digits_the_window_needs(tmp_path, capsys):
    windows, _ = _run_strings(tmp_path, capsys, ["2026-03-01T00:00:01", "2026-03-01T00:00:02"],
                              window="500ms")
    assert windows["window_start"].tolist() == ["2026-03-01T00:00:01.000", "2026-03-01T00:00:02.000"]


def test_parquet_zone_unit_and_value_dtype_are_kept(tmp_path, capsys):
    times = pa.array(np.array([1_000, 12_000, 3_000, 25_000], dtype=np.int64) + 1_772_323_200_000,
                     type=pa.timestamp("ms", tz="Europe/Berlin"))
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 1, 1, 1], pa.int32()), "t": times,
                             "v": pa.array([1.5, 2.5, 3.5, 4.5], pa.float32()),
                             "n": pa.array([1, 2, 3, 4], pa.int64())}), src)
    for out in ("w.parquet", "w.csv"):
        rc = main(["run", str(src), "--key", "id", "--time", "t", "--value", "v", "--value", "n",
                   "--window", "10s", "--no-progress", "--quiet", "--out", str(tmp_path / out)])
        assert rc == 0, capsys.readouterr().err
    windows = pq.read_table(tmp_path / "w.parquet")
    late = pq.read_table(tmp_path / "w.late.parquet")
    assert windows.schema.field("window_start").type == pa.timestamp("ms", tz="Europe/Berlin")
    assert late.schema.field("t").type == pa.timestamp("ms", tz="Europe/Berlin")
    assert late.schema.field("v").type == pa.float32() and late.schema.field("n").type == pa.int64()
    assert late.column("t").to_pylist() == [times[2].as_py()] and late.column("n").to_pylist() == [3]
    csv_windows = pd.read_csv(tmp_path / "w.csv", dtype=str)
    assert csv_windows["window_start"].tolist()[0] == "2026-03-01 01:00:00.000+01:00"


# --- output times against a pandas oracle ---------------------------------------------------------

def _oracle_stream(rng, n=3_000, keys=7):
    """Readings over ~10 minutes, in order but for up to 2 s of jitter (covered by the bound)."""
    ns = np.int64(1_772_323_200) * 10**9 + np.sort(rng.integers(0, 600 * 10**9, n))
    ns = ns - rng.integers(0, 2 * 10**9, n)
    ns -= ns % 10**6                       # whole milliseconds
    return pd.DataFrame({"id": rng.integers(0, keys, n), "t_ns": ns,
                         "v": rng.normal(20, 5, n).round(3)})


def _pandas_windows(df, size_ns):
    """Tumbling windows by plain pandas: key, window start (int ns), count, time of the max."""
    g = df.assign(start=df["t_ns"] // size_ns * size_ns).groupby(["id", "start"])
    out = g.agg(count=("v", "size")).reset_index()
    out["argmax_ns"] = df.loc[g["v"].idxmax().to_numpy(), "t_ns"].to_numpy()
    return out.sort_values(["start", "id"], ignore_index=True)


def _run_oracle(tmp_path, capsys, df, time_text, *extra):
    path = write_csv(tmp_path, "id,t,v\n" + "".join(
        f"{k},{t},{v}\n" for k, t, v in zip(df["id"], time_text, df["v"])))
    rc = main(["run", str(path), "--key", "id", "--time", "t", "--value", "v", "--window", "10s",
               "--aggs", "count,argmax_ts", "--max-out-of-orderness", "3s", "--no-progress",
               "--quiet", "--out", str(tmp_path / "w.csv"), *extra])
    assert rc == 0, capsys.readouterr().err
    assert not (tmp_path / "w.late.csv").read_text().strip().split("\n")[1:]   # nothing late
    return pd.read_csv(tmp_path / "w.csv", dtype=str)


@pytest.mark.parametrize("unit", ["s", "ms"])
def test_epoch_numbers_come_out_in_the_input_unit(tmp_path, capsys, rng, unit):
    df = _oracle_stream(rng)
    per = {"s": 10**9, "ms": 10**6}[unit]
    df["t_ns"] -= df["t_ns"] % per
    got = _run_oracle(tmp_path, capsys, df, (df["t_ns"] // per).astype(str), "--time-unit", unit)
    want = _pandas_windows(df, 10 * 10**9)
    assert got["window_start"].tolist() == (want["start"] // per).astype(str).tolist()
    assert got["window_end"].tolist() == ((want["start"] + 10 * 10**9) // per).astype(str).tolist()
    assert got["argmax_ts"].tolist() == (want["argmax_ns"] // per).astype(str).tolist()
    assert got["count"].astype(int).tolist() == want["count"].tolist()


@pytest.mark.parametrize("offset, layout", [("+05:30", "%Y-%m-%dT%H:%M:%S.%f"),
                                            ("-08:00", "%Y-%m-%d %H:%M:%S.%f")])
def test_zoned_iso_times_keep_their_zone(tmp_path, capsys, rng, offset, layout):
    df = _oracle_stream(rng)
    local = pd.to_datetime(df["t_ns"], unit="ns", utc=True).dt.tz_convert(offset)
    text = local.dt.strftime(layout).str[:-3] + offset          # milliseconds, as a user writes
    got = _run_oracle(tmp_path, capsys, df, text)
    want = _pandas_windows(df, 10 * 10**9)

    def as_text(ns):
        return (pd.to_datetime(ns, unit="ns", utc=True).dt.tz_convert(offset)
                .dt.strftime(layout).str[:-3] + offset).tolist()

    assert got["window_start"].tolist() == as_text(want["start"])
    assert got["argmax_ts"].tolist() == as_text(want["argmax_ns"])
    # read back by pandas: tz-aware, the same instants and the input's offset
    starts = pd.to_datetime(got["window_start"], format="ISO8601")
    assert str(starts.dt.tz) == f"UTC{offset}"
    assert (starts.dt.tz_convert("UTC") == pd.to_datetime(want["start"], unit="ns", utc=True)).all()


@pytest.mark.parametrize("out_times", ["iso", "ns", "ms"])
def test_out_times_option(tmp_path, capsys, rng, out_times):
    df = _oracle_stream(rng, n=500)
    text = (pd.to_datetime(df["t_ns"], unit="ns", utc=True).dt.tz_convert("+02:00")
            .dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "+02:00")
    got = _run_oracle(tmp_path, capsys, df, text, "--out-times", out_times)
    want = _pandas_windows(df, 10 * 10**9)
    if out_times == "iso":
        assert got["window_start"].str.endswith("Z").all()
        starts = pd.to_datetime(got["window_start"], format="ISO8601", utc=True)
        assert (starts == pd.to_datetime(want["start"], unit="ns", utc=True)).all()
    else:
        per = {"ns": 1, "ms": 10**6}[out_times]
        assert got["window_start"].tolist() == (want["start"] // per).astype(str).tolist()
        assert got["argmax_ts"].tolist() == (want["argmax_ns"] // per).astype(str).tolist()


def test_out_times_coarser_than_the_window_is_refused(tmp_path, capsys):
    path = write_csv(tmp_path, "id,t,v\n1,1,1.0\n")
    rc, err = run_err(capsys, path, "--window", "500ms", "--out-times", "s")
    assert rc == 2 and "--out-times s" in err


# --- help -------------------------------------------------------------------------------------------

def test_top_level_help_is_plain_text():
    proc = subprocess.run([sys.executable, "-m", "cusense.cli", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "``" not in proc.stdout and ":class:" not in proc.stdout
    assert "cusense run" in proc.stdout and "Exit status" in proc.stdout
