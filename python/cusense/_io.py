"""Streaming readers, column converters and writers used by the ``cusense`` command line.

Input files (CSV, Parquet) are read in micro-batches with pyarrow; each batch is converted to
the arrays a :class:`cusense.Pipeline` takes (uint32 keys, int64 ns timestamps, float64 values),
and results are converted back (original key ids, times in the input's representation) and
appended to CSV or Parquet outputs. Every input problem raises :class:`InputError` with a
message naming the file, the line (CSV) or row (Parquet) and the column.
"""
from __future__ import annotations

import csv
import os
import re
import sys
import time
from typing import Any, NoReturn
from dataclasses import dataclass

import numpy as np

from ._time import to_nanoseconds

TIME_UNITS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
# --out-times: "input" (the input's form), "iso" (ISO 8601 UTC), or epoch numbers in a unit.
OUT_TIMES = ("input", "iso") + tuple(TIME_UNITS)
_NO_TIME = np.iinfo(np.int64).min   # "none" in argmin_ts / argmax_ts columns
# The parts of an ISO 8601 time that make its form: date/time separator, fraction, zone offset.
_ISO_FORM = re.compile(r"\s*\d{4}-\d{2}-\d{2}(?P<sep>[T ])?[\d:]*(?:[.,](?P<fraction>\d+))?"
                       r"\s*(?P<zone>Z|[+-]\d{2}:?\d{2}|[+-]\d{2})?\s*$")
_FRACTION = re.compile(r"\d:\d{2}[.,](\d+)")
_MAX_TIMESTAMP = 1 << 62


class InputError(Exception):
    """Malformed or unreadable input; the message names file, line/row and column."""


def require_pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError:  # pragma: no cover - pyarrow is a declared dependency of the CLI extra
        raise InputError("reading and writing files needs pyarrow: pip install 'cusense[cli]' "
                         "(or pip install pyarrow)") from None


def file_format(path: str, explicit: str | None = None) -> str:
    """"csv" or "parquet", from ``explicit`` or the file extension."""
    if explicit:
        return explicit
    lower = path.lower()
    if lower.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    if lower.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    raise InputError(f"{path}: cannot tell the format from the extension; use .csv or .parquet "
                     f"(or --format/--out-format csv|parquet)")


# --- reading ----------------------------------------------------------------------------------

_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class Batch:
    """One micro-batch of input: a pyarrow RecordBatch and where its rows sit in the file."""

    data: Any               # pyarrow.RecordBatch
    first_row: int          # 0-based index of its first data row in the file
    index: int              # 0-based batch number
    first_line: int = 0     # CSV: the file line (1-based) where the batch's text starts
    text: bytes = b""       # CSV: the batch's text, kept to locate a bad row's line


class Reader:
    """Streams the needed columns of a CSV or Parquet file in micro-batches of about ``batch`` rows.

    CSV files are cut into blocks of whole lines here and each block is parsed by pyarrow, so
    the progress (bytes of the blocks handed out) and the line numbers of errors are exact;
    pyarrow's own streaming reader reads ahead of what it has handed out and skips blank lines
    without saying where they were."""

    def __init__(self, path: str, columns: list[str], batch: int, fmt: str | None = None,
                 delimiter: str | None = None, na_values: list[str] | None = None):
        require_pyarrow()
        self.path = path
        self.format = file_format(path, fmt)
        self.columns = list(dict.fromkeys(columns))
        self.batch = max(1, int(batch))
        # the empty cell is always missing; any other token only when asked for, so that a
        # stray "n/a" is reported instead of silently becoming NaN
        self.na_values = [""] + [v for v in (na_values or []) if v]
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        if os.path.isdir(path):
            raise InputError(f"{path}: is a directory, expected a CSV or Parquet file")
        self.size = os.path.getsize(path)
        self._done = 0          # bytes (CSV) or rows (Parquet) of the batches handed out
        if self.format == "csv":
            self.delimiter = delimiter or ("\t" if path.lower().endswith(".tsv") else ",")
            self._open_csv()
        else:
            self._open_parquet()

    # CSV: the header is read with the csv module to check the columns first; every needed column
    # is then read as strings and converted by the Converter, which locates bad values.
    def _open_csv(self):
        with open(self.path, "rb") as f:
            first = f.readline()
            sample = f.read(1 << 16)
        self._header_bytes = len(first)
        first = first[len(_UTF8_BOM):] if first.startswith(_UTF8_BOM) else first
        text = first.decode("utf-8", "replace").rstrip("\r\n")
        if not text.strip():
            raise InputError(f"{self.path}: the file is empty (expected a header line)")
        self.header = next(csv.reader([text], delimiter=self.delimiter))
        self._check_columns(self.header, "header line 1")
        bytes_per_row = max(8, len(sample) // max(1, sample.count(b"\n")))
        self._block = int(min(1 << 30, max(1 << 16, self.batch * bytes_per_row)))

    def _parse_csv(self, text: bytes):
        """A RecordBatch of the needed columns (all strings) of whole CSV lines (no header)."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        try:
            table = pacsv.read_csv(
                pa.BufferReader(text),
                read_options=pacsv.ReadOptions(column_names=self.header, use_threads=True),
                parse_options=pacsv.ParseOptions(delimiter=self.delimiter),
                convert_options=pacsv.ConvertOptions(
                    include_columns=self.columns,
                    column_types={c: pa.string() for c in self.columns},
                    null_values=self.na_values,
                    strings_can_be_null=True, quoted_strings_can_be_null=False))
        except pa.ArrowInvalid as e:
            raise self._csv_error(e) from None
        batches = table.combine_chunks().to_batches()
        return batches[0] if batches else None

    def _csv_blocks(self):
        """(text, file line of its start) of blocks of whole lines, about ``_block`` bytes each."""
        line, rest = 2, b""
        with open(self.path, "rb") as f:
            f.seek(self._header_bytes)
            while True:
                block = f.read(self._block)
                data = rest + block
                if block:
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:        # no line ends in it yet: read on
                        rest = data
                        continue
                    data, rest = data[:cut], data[cut:]
                if data:
                    yield data, line
                    line += data.count(b"\n")
                if not block:
                    return

    def _parsed_csv_blocks(self):
        """(RecordBatch or None, text, line) of each block; the next block is parsed in the
        background while the caller works on the current one (pyarrow releases the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            ahead = None
            for text, line in self._csv_blocks():
                parsing = pool.submit(self._parse_csv, text)
                if ahead is not None:
                    yield ahead[0].result(), ahead[1], ahead[2]
                ahead = (parsing, text, line)
            if ahead is not None:
                yield ahead[0].result(), ahead[1], ahead[2]

    def _csv_error(self, err) -> InputError:
        """An InputError for a pyarrow CSV parse error, with the line found by a rescan (pyarrow
        does not say which line; this runs only on the error path)."""
        msg = str(err).splitlines()[0]
        line = None
        if "Expected" in msg and "columns" in msg:
            with open(self.path, "r", newline="", encoding="utf-8-sig", errors="replace") as f:
                rows = csv.reader(f, delimiter=self.delimiter)
                header = next(rows, [])
                for row in rows:
                    if row and len(row) != len(header):
                        line = rows.line_num
                        break
        where = f", line {line}" if line else ""
        return InputError(f"{self.path}{where}: malformed CSV: {msg}")

    def _open_parquet(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            self._pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{self.path}: not a readable Parquet file: {e}") from None
        self._check_columns(self._pf.schema_arrow.names, "schema")
        self.num_rows = self._pf.metadata.num_rows

    def _check_columns(self, names, where):
        missing = [c for c in self.columns if c not in names]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise InputError(f"{self.path}: column{plural} {', '.join(repr(m) for m in missing)} "
                             f"not found ({where} has {', '.join(repr(n) for n in names)})")

    def progress(self) -> tuple[int, int]:
        """(done, total) of the batches handed out so far: bytes for CSV, rows for Parquet."""
        return self._done, (self.size if self.format == "csv" else self.num_rows)

    def location(self, batch: Batch, i: int) -> str:
        """Where row ``i`` of ``batch`` is: its file line for CSV, its row (1-based) for Parquet."""
        if self.format != "csv":
            return f"row {batch.first_row + i + 1}"
        # pyarrow skips blank lines, so count the non-blank ones (only on the error path)
        row = -1
        for offset, text in enumerate(batch.text.split(b"\n")):
            if text not in (b"", b"\r"):
                row += 1
                if row == i:
                    return f"line {batch.first_line + offset}"
        return f"line {batch.first_line}"

    def __iter__(self):
        import pyarrow as pa

        first, index = 0, 0
        if self.format == "csv":
            self._done = self._header_bytes
            for rb, text, line in self._parsed_csv_blocks():
                self._done += len(text)
                if rb is None:          # only blank lines
                    continue
                yield Batch(rb, first, index, first_line=line, text=text)
                first += rb.num_rows
                index += 1
        else:
            try:
                for rb in self._pf.iter_batches(batch_size=self.batch, columns=self.columns):
                    self._done = first + rb.num_rows
                    yield Batch(rb, first, index)
                    first += rb.num_rows
                    index += 1
            except (pa.ArrowInvalid, OSError) as e:
                raise InputError(f"{self.path}: Parquet error after row {first}: {e}") from None


# --- column conversion ------------------------------------------------------------------------

def _first_bad(ok: np.ndarray) -> int:
    return int(np.flatnonzero(~ok)[0])


class Converter:
    """Turns input batches into pipeline arrays, and pipeline results back into output tables."""

    def __init__(self, reader: Reader, key: str, time_col: str, values: list[str],
                 time_unit: str | None = None, time_format: str | None = None,
                 key_type: str = "auto", spans=(), out_format: str = "csv",
                 out_times: str = "input"):
        self.reader, self.key, self.time_col, self.value_cols = reader, key, time_col, list(values)
        self.spans = [int(span) for span in spans]   # window sizes etc. in ns
        self.out_format = out_format
        if out_times not in OUT_TIMES:
            raise ValueError(f"out_times must be one of {OUT_TIMES}, got {out_times!r}")
        self.out_times = out_times
        # Datetime outputs keep the input's form, decided by its first batch: the unit (finer
        # when a window bound needs it), the zone, and for CSV the text layout.
        self.out_unit: str = "ns"
        self.out_tz: str | None = None
        self.text_format: str | None = None
        self.value_types: dict = {}     # value column -> the input's type (for late records)
        self.unit = TIME_UNITS[time_unit or "ns"]
        self.unit_name = time_unit or "ns"
        self.time_format = time_format
        self.time_mode: str | None = None   # "int" | "float" | "datetime"
        self.key_mode = None if key_type == "auto" else key_type   # "int" | "string"
        self._key_names: list = []      # code -> original id (string keys)
        self._key_index: dict = {}      # original id -> code

    # errors
    def _fail(self, batch: Batch, i: int, column: str, what: str) -> NoReturn:
        raise InputError(f"{self.reader.path}, {self.reader.location(batch, i)}, "
                         f"column '{column}': {what}")

    def _column(self, batch: Batch, name: str):
        arr = _decoded(batch.data.column(batch.data.schema.get_field_index(name)))
        if arr.null_count:
            import pyarrow.compute as pc
            nulls = np.asarray(pc.is_null(arr).to_numpy(zero_copy_only=False))
            return arr, nulls
        return arr, None

    # keys
    def keys(self, batch: Batch) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        arr, nulls = self._column(batch, self.key)
        if nulls is not None:
            self._fail(batch, _first_bad(~nulls), self.key, "missing key")
        t = arr.type
        if pa.types.is_integer(t) and self.key_mode != "string":
            self.key_mode = "int"
            return self._int_keys(batch, arr.to_numpy())
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t):
            strings = pc.cast(arr, pa.string()) if pa.types.is_integer(t) else arr
            if self.key_mode is None:     # decided by the first key of the stream
                first = strings[0].as_py().strip() if len(strings) else ""
                self.key_mode = "int" if _is_int(first) else "string"
            if self.key_mode == "int":
                ints, ok = _parse_ints(strings)
                if not ok.all():
                    i = _first_bad(ok)
                    self._fail(batch, i, self.key,
                               f"key {strings[i].as_py()!r} is not an integer (keys before it were; "
                               f"pass --key-type string to map any ids to codes)")
                return self._int_keys(batch, ints)
            return self._string_keys(strings.to_numpy(zero_copy_only=False))
        self._fail(batch, 0, self.key, f"keys must be integers or strings, the column has type {t}")

    def _int_keys(self, batch, ints: np.ndarray) -> np.ndarray:
        ints = np.asarray(ints)
        bad = (ints < 0) | (ints > np.iinfo(np.uint32).max)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail(batch, i, self.key, f"key {int(ints[i])} is outside 0..4294967295 "
                                           f"(pass --key-type string to map any ids to codes)")
        return ints.astype(np.uint32)

    def _string_keys(self, strings: np.ndarray) -> np.ndarray:
        import pandas as pd

        codes, uniques = pd.factorize(strings)
        lookup = np.empty(len(uniques), dtype=np.uint32)
        for j, name in enumerate(uniques):
            code = self._key_index.get(name)
            if code is None:
                code = len(self._key_names)
                if code > np.iinfo(np.uint32).max:
                    raise InputError(f"{self.reader.path}: more than 2^32 distinct keys")
                self._key_index[name] = code
                self._key_names.append(name)
            lookup[j] = code
        return lookup[codes]

    def key_output(self, codes: np.ndarray):
        import pyarrow as pa

        if self.key_mode == "string":
            names = np.asarray(self._key_names, dtype=object)
            return pa.array(names[codes] if len(codes) else [], type=pa.string())
        return pa.array(codes, type=pa.uint32())

    # time
    def timestamps(self, batch: Batch) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        arr, nulls = self._column(batch, self.time_col)
        if nulls is not None:
            self._fail(batch, _first_bad(~nulls), self.time_col, "missing time")
        t = arr.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            self.time_mode = "datetime"
            if pa.types.is_timestamp(t):
                self._set_datetime_form(t.unit, t.tz, " ", "%Ez" if t.tz else "")
            else:
                self._set_datetime_form("s", None, " ", "")
            return self._check_range(batch, pc.cast(arr, pa.timestamp("ns")).to_numpy().view(np.int64))
        if pa.types.is_integer(t):
            self.time_mode = self.time_mode or "int"
            return self._scale_ints(batch, arr.to_numpy().astype(np.int64))
        if pa.types.is_floating(t):
            self.time_mode = self.time_mode or "float"
            return self._scale_floats(batch, arr.to_numpy())
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            self._fail(batch, 0, self.time_col, f"times must be integers, datetimes or strings, "
                                                f"the column has type {t}")
        if self.time_format:
            self.time_mode = "datetime"
            self._set_datetime_form("s", None, " ", "")
            try:
                ts = pc.strptime(arr, format=self.time_format, unit="ns", error_is_null=True)
            except pa.ArrowInvalid as e:
                raise InputError(f"{self.reader.path}, column '{self.time_col}': {e}") from None
            ok = ~np.asarray(pc.is_null(ts).to_numpy(zero_copy_only=False))
            if not ok.all():
                i = _first_bad(ok)
                self._fail(batch, i, self.time_col, f"cannot parse {arr[i].as_py()!r} with "
                                                    f"--time-format {self.time_format!r}")
            return self._check_range(batch, ts.to_numpy().view(np.int64))
        if self.time_mode is None:     # decided by the first value of the stream
            first = arr[0].as_py().strip() if len(arr) else ""
            self.time_mode = "int" if _is_int(first) else ("float" if _is_float(first) else "datetime")
        if self.time_mode == "int":
            ints, ok = _parse_ints(arr)
            if not ok.all():
                i = _first_bad(ok)
                self._fail(batch, i, self.time_col,
                           f"cannot parse {arr[i].as_py()!r} as an integer time "
                           f"({self.unit_name} since the epoch, like the rows before it)")
            return self._scale_ints(batch, ints)
        if self.time_mode == "float":
            floats, ok = _parse_floats(arr)
            ok &= np.isfinite(floats)
            if not ok.all():
                i = _first_bad(ok)
                self._fail(batch, i, self.time_col, f"cannot parse {arr[i].as_py()!r} as a number "
                                                    f"({self.unit_name} since the epoch)")
            return self._scale_floats(batch, floats)
        self._detect_iso_form(arr)
        return self._check_range(batch, self._parse_datetimes(batch, arr))

    def _set_datetime_form(self, unit: str, tz, sep: str, zone: str):
        if self.text_format is not None:      # decided by the first batch
            return
        # the input's unit, or a finer one when window bounds fall between its ticks
        names = [u for u in TIME_UNITS if TIME_UNITS[u] <= TIME_UNITS[unit]]
        self.out_unit = next(u for u in names if all(span % TIME_UNITS[u] == 0 for span in self.spans))
        self.out_tz = tz
        self.text_format = f"%Y-%m-%d{sep}%H:%M:%S{zone}"

    def _detect_iso_form(self, arr):
        """The form of ISO 8601 input times: separator and zone of the first, and the most
        fraction digits in the first batch (rounded up to 3, 6 or 9)."""
        if self.text_format is not None or len(arr) == 0:
            return
        sample = [v for v in arr.slice(0, 10_000).to_pylist() if v]
        match = _ISO_FORM.match(sample[0]) if sample else None
        if match is None:       # not ISO 8601 (the parser reports it): the default layout
            self._set_datetime_form("ns", None, " ", "")
            return
        digits = max((len(m.group(1)) for m in map(_FRACTION.search, sample) if m), default=0)
        unit = "s" if digits == 0 else "ms" if digits <= 3 else "us" if digits <= 6 else "ns"
        zone = match.group("zone")
        if zone is None:
            tz, style = None, ""
        elif zone == "Z":
            tz, style = "UTC", "Z"
        else:   # a fixed offset: +02, +0200 or +02:00 (the first form is written as +02:00)
            digits_only = zone[1:].replace(":", "")
            tz = f"{zone[0]}{digits_only[:2]}:{digits_only[2:4] or '00'}"
            style = "%z" if len(zone) == 5 else "%Ez"
        self._set_datetime_form(unit, tz, match.group("sep") or " ", style)
    def _parse_datetimes(self, batch, arr) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        try:    # fast path: ISO 8601 without a zone offset
            return pc.cast(arr, pa.timestamp("ns")).to_numpy().view(np.int64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        import pandas as pd

        strings = arr.to_numpy(zero_copy_only=False)
        with _quiet_warnings():
            parsed = pd.to_datetime(pd.Series(strings), format="ISO8601", utc=True, errors="coerce")
        ok = ~parsed.isna().to_numpy()
        if not ok.all():
            i = _first_bad(ok)
            self._fail(batch, i, self.time_col,
                       f"cannot parse {strings[i]!r} as a time (expected ISO 8601 like "
                       f"'2026-01-01 12:00:00', an integer with --time-unit, or --time-format)")
        return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").view(np.int64)

    def _scale_ints(self, batch, ints: np.ndarray) -> np.ndarray:
        limit = _MAX_TIMESTAMP // self.unit
        bad = (ints > limit) | (ints < -limit)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail(batch, i, self.time_col, f"time {int(ints[i])} {self.unit_name} is outside "
                                                f"the supported range (about years 1824..2116)")
        return ints * self.unit

    def _scale_floats(self, batch, floats: np.ndarray) -> np.ndarray:
        floats = np.asarray(floats, dtype=np.float64)
        bad = ~np.isfinite(floats) | (np.abs(floats) * self.unit > _MAX_TIMESTAMP)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail(batch, i, self.time_col, f"time {floats[i]!r} is not a finite time in range")
        return np.round(floats * self.unit).astype(np.int64)

    def _check_range(self, batch, ns: np.ndarray) -> np.ndarray:
        bad = (ns > _MAX_TIMESTAMP) | (ns < -_MAX_TIMESTAMP)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self._fail(batch, i, self.time_col, "time outside the supported range (about years 1824..2116)")
        return ns

    def time_output(self, ns: np.ndarray):
        """Times as the input had them (``out_times="input"``): timestamps for datetimes, else
        integers in --time-unit (floats when the input had fractional numbers). ``"iso"``:
        ISO 8601 in UTC (text ending in Z in CSV, timestamp[unit, UTC] in Parquet), in the
        input's unit or a finer one when window bounds need it; ``"s"`` ... ``"ns"``: int64
        since the epoch in that unit. "No time" (argmin_ts of a window without values) is
        null."""
        import pyarrow as pa

        import pyarrow.compute as pc

        ns = np.asarray(ns, dtype=np.int64)
        none = ns == _NO_TIME
        mask = none if none.any() else None
        if self.out_times in TIME_UNITS:
            return pa.array(ns // TIME_UNITS[self.out_times], type=pa.int64(), mask=mask)
        if self.out_times == "iso":
            unit = self._iso_unit()
            times = pa.array(ns, type=pa.int64(), mask=mask).cast(pa.timestamp("ns", tz="UTC"))
            times = times.cast(pa.timestamp(unit, tz="UTC"), safe=False)
            if self.out_format == "csv":
                return pc.strftime(times, format="%Y-%m-%dT%H:%M:%SZ")
            return times
        if self.time_mode == "datetime":
            utc = pa.array(ns, type=pa.int64(), mask=mask).cast(pa.timestamp("ns", tz=self.out_tz))
            times = utc.cast(pa.timestamp(self.out_unit, tz=self.out_tz), safe=False)
            if self.out_format == "csv" and self.text_format:
                return pc.strftime(times, format=self.text_format)
            return times
        if self.time_mode == "float":
            return pa.array(ns / self.unit, type=pa.float64(), mask=mask)
        return pa.array(ns // self.unit, type=pa.int64(), mask=mask)

    def _iso_unit(self) -> str:
        """The unit of ISO output: the input's datetime unit, else the coarsest unit no finer
        than --time-unit that holds every window bound (ns for fractional numbers)."""
        if self.time_mode == "datetime":
            return self.out_unit
        if self.time_mode == "float":
            return "ns"
        names = [u for u in TIME_UNITS if TIME_UNITS[u] <= self.unit]
        return next(u for u in names if all(span % TIME_UNITS[u] == 0 for span in self.spans))

    # values
    def values(self, batch: Batch) -> np.ndarray:
        cols = [self._value_column(batch, name) for name in self.value_cols]
        return cols[0] if len(cols) == 1 else np.column_stack(cols)

    def _value_column(self, batch, name) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = _decoded(batch.data.column(batch.data.schema.get_field_index(name)))
        t = arr.type
        numeric = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
        self.value_types.setdefault(name, t if numeric else pa.float64())
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
            return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            floats, ok = _parse_floats(arr)
            if not ok.all():
                i = _first_bad(ok)
                self._fail(batch, i, name, f"value {arr[i].as_py()!r} is not a number")
            return floats
        self._fail(batch, 0, name, f"values must be numbers, the column has type {t}")

    # results
    def result_table(self, res):
        """A pyarrow Table of a pipeline Result: keys and times converted back, channel
        matrices split into columns."""
        import pyarrow as pa

        cols, names = [], []
        for name in res.columns:
            col = res[name]
            if name == "key":
                arr = self.key_output(col)
            elif name in ("window_start", "window_end", "timestamp") or (
                    name.startswith(("argmin_ts", "argmax_ts")) and col.ndim == 1):
                arr = self.time_output(col)
            elif col.ndim == 2:
                is_time = name.startswith(("argmin_ts", "argmax_ts"))
                for j, ch in enumerate(self.value_cols):
                    cols.append(self.time_output(col[:, j]) if is_time else pa.array(col[:, j]))
                    names.append(f"{name}_{ch}")
                continue
            else:
                arr = pa.array(col)
            cols.append(arr)
            names.append(name)
        return pa.Table.from_arrays(cols, names=names)

    def late_table(self, res, names: list[str]):
        """Late records as the input had them: its column names and value types (float32 stays
        float32, integers integers)."""
        import pyarrow as pa

        cols = list(self.result_table(res).columns)   # key, timestamp, one column per value
        for j, name in enumerate(self.value_cols):
            target = self.value_types.get(name, pa.float64())
            col = cols[2 + j]
            if not pa.types.is_floating(target):      # NaN stands for a missing int or bool
                col = pa.array(col.to_numpy(), from_pandas=True)
            cols[2 + j] = col.cast(target, safe=False)
        return pa.Table.from_arrays(cols, names=names)


def _decoded(arr):
    """Plain arrays for dictionary-encoded and string-view columns."""
    import pyarrow as pa

    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if getattr(pa.types, "is_string_view", None) and pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _is_int(text: str) -> bool:
    text = text.strip()
    if text[:1] in "+-":
        text = text[1:]
    return text.isdigit()


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _parse_ints(arr):
    """(int64 values, ok mask) of a string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return pc.cast(pc.utf8_trim_whitespace(arr), pa.int64()).to_numpy(), np.ones(len(arr), bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    strings = arr.to_numpy(zero_copy_only=False)
    out = np.zeros(len(strings), dtype=np.int64)
    ok = np.zeros(len(strings), dtype=bool)
    for i, s in enumerate(strings):
        try:
            out[i] = int(s)
            ok[i] = True
        except (TypeError, ValueError, OverflowError):
            pass
    return out, ok


def _parse_floats(arr):
    """(float64 values, ok mask) of a string array; missing (null, empty) values are NaN."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return (pc.cast(pc.utf8_trim_whitespace(arr), pa.float64()).to_numpy(zero_copy_only=False)
                .astype(np.float64), np.ones(len(arr), bool))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    import pandas as pd

    strings = pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object)
    missing = strings.isna().to_numpy() | (strings.astype(str).str.strip() == "").to_numpy()
    parsed = pd.to_numeric(strings.where(~missing, None), errors="coerce").to_numpy(dtype=np.float64)
    ok = missing | ~np.isnan(parsed) | strings.astype(str).str.strip().str.lower().isin(["nan", "-nan", "+nan"]).to_numpy()
    return parsed, ok


class _quiet_warnings:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)


# --- writing ----------------------------------------------------------------------------------

class Writer:
    """Appends pyarrow Tables to a CSV or Parquet file (the format from the extension).

    The rows go to ``PATH.partial`` in the same directory, renamed to ``PATH`` by
    :meth:`commit`: a run that fails midway never leaves a truncated file that looks complete,
    and an earlier ``PATH`` stays as it was."""

    def __init__(self, path: str, fmt: str | None = None):
        require_pyarrow()
        self.path = path
        self.temp_path = path + ".partial"
        self.format = file_format(path, fmt)
        self.rows = 0
        self._writer: Any = None     # pyarrow.csv.CSVWriter | pyarrow.parquet.ParquetWriter
        self._schema = None
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise InputError(f"{path}: the output directory {parent} does not exist")

    def write(self, table):
        if self._writer is None:
            self._schema = table.schema
            if self.format == "csv":
                import pyarrow.csv as pacsv
                self._writer = pacsv.CSVWriter(self.temp_path, table.schema)
            else:
                import pyarrow.parquet as pq
                self._writer = pq.ParquetWriter(self.temp_path, table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        if table.num_rows or self.rows == 0:
            self._writer.write_table(table)
        self.rows += table.num_rows

    def _close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self):
        """Closes the output and gives it its final name (replacing an earlier file)."""
        self._close()
        if os.path.exists(self.temp_path):
            os.replace(self.temp_path, self.path)

    def discard(self, keep: bool = False) -> str | None:
        """Closes an incomplete output and removes it, or with ``keep`` leaves it under its
        temporary name and returns that name."""
        self._close()
        if not os.path.exists(self.temp_path):
            return None
        if keep:
            return self.temp_path
        os.remove(self.temp_path)
        return None


# --- progress ---------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr: fraction of the input, records, records/s."""

    def __init__(self, enabled: bool, label: str = "cusense run", stream=None):
        self.enabled, self.label = enabled, label
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, total: int, records: int, final: bool = False):
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self._last < 0.1:
            return
        self._last = now
        frac = 1.0 if final or total <= 0 else min(1.0, done / total)
        rate = records / max(now - self.start, 1e-9)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r{self.label} [{bar:<30}] {100 * frac:5.1f}%  {records:,} records  "
                          f"{rate / 1e6:6.2f} M rec/s")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def duration_ns(text: str, what: str) -> int:
    try:
        return to_nanoseconds(int(text) if str(text).lstrip("-").isdigit() else text, what)
    except (TypeError, ValueError) as e:
        raise InputError(str(e)) from None
