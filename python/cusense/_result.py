"""Result tables returned by pipelines: named numpy columns."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._typing import Frame

# int64 ns columns holding event times; INT64_MIN in them means "none" (NaT).
_NONE_TIME = np.iinfo(np.int64).min


class Result:
    """A column table (emitted windows, late records, scores, silence events). Columns are numpy
    arrays; times are int64 ns since the epoch (UTC), INT64_MIN meaning none.

    ``res["mean"]`` gives a column, ``res.columns`` their names in order, ``len(res)`` the rows.
    Conversions (time columns: ``window_start``, ``window_end``, ``timestamp``, ``argmin_ts*``,
    ``argmax_ts*``, ``last_seen``, ``silent_since``, ``back_at``; ``datetimes=False`` keeps them
    int64 ns):

    * ``res.to_pandas()``: a DataFrame, time columns as naive datetime64[ns] holding UTC, NaT
      for none;
    * ``res.to_arrow()``: a pyarrow Table, time columns as ``timestamp[ns, tz=UTC]`` with nulls
      for none; numeric and time columns share the numpy memory (no copy), bool columns are
      copied (Arrow packs bits);
    * ``res.to_polars()``: a polars DataFrame built from ``to_arrow()`` (time columns
      ``Datetime("ns", "UTC")``).
    """

    _TIME_COLUMNS = ("window_start", "window_end", "timestamp", "last_seen", "silent_since", "back_at")

    def __init__(self, columns: dict[str, np.ndarray]):
        self._columns = dict(columns)

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns are {self.columns}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._columns

    def __len__(self) -> int:
        return 0 if not self._columns else len(next(iter(self._columns.values())))

    def __repr__(self) -> str:
        return f"Result({len(self)} rows, columns={self.columns})"

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self._columns)

    def _is_time(self, name: str) -> bool:
        is_time_name = name in self._TIME_COLUMNS or name.startswith(("argmin_ts", "argmax_ts"))
        return is_time_name and self._columns[name].dtype == np.int64

    def to_pandas(self, datetimes: bool = True) -> Frame:
        import pandas as pd

        data = {}
        for name, col in self._columns.items():
            # INT64_MIN viewed as datetime64 is NaT, so "none" needs no conversion.
            data[name] = col.view("datetime64[ns]") if datetimes and self._is_time(name) else col
        return pd.DataFrame(data)

    def to_arrow(self, datetimes: bool = True) -> Frame:
        import pyarrow as pa

        arrays = {}
        for name, col in self._columns.items():
            if datetimes and self._is_time(name):
                arrays[name] = _arrow_times(pa, col)
            else:
                arrays[name] = pa.array(col)
        return pa.table(arrays)

    def to_polars(self, datetimes: bool = True) -> Frame:
        import polars as pl

        return pl.from_arrow(self.to_arrow(datetimes=datetimes))

    @staticmethod
    def concat(parts: list["Result"]) -> "Result":
        parts = [p for p in parts if p.columns]
        if not parts:
            return Result({})
        return Result({c: np.concatenate([p[c] for p in parts]) for c in parts[0].columns})


def _arrow_times(pa: Any, col: np.ndarray) -> Any:
    """int64 ns as a timestamp[ns, UTC] array over the same memory; INT64_MIN becomes null
    (only the validity bitmap is new)."""
    col = np.ascontiguousarray(col)
    none = col == _NONE_TIME
    validity = pa.py_buffer(np.packbits(~none, bitorder="little")) if none.any() else None
    return pa.Array.from_buffers(pa.timestamp("ns", tz="UTC"), len(col), [validity, pa.py_buffer(col)],
                                 null_count=int(none.sum()))
