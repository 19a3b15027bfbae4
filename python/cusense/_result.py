"""Result tables returned by pipelines: named numpy columns."""
from __future__ import annotations

import numpy as np


class Result:
    """A column table (emitted windows, late records, ...). Columns are numpy arrays.

    ``res["mean"]`` gives a column, ``res.columns`` their names in order, ``len(res)`` the rows,
    ``res.to_pandas()`` a DataFrame (``window_start``/``window_end``/``timestamp`` as
    datetime64[ns] unless ``datetimes=False``).
    """

    _TIME_COLUMNS = ("window_start", "window_end", "timestamp")

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

    def to_pandas(self, datetimes: bool = True):
        import pandas as pd

        data = {}
        for name, col in self._columns.items():
            is_time = name in self._TIME_COLUMNS or name.startswith(("argmin_ts", "argmax_ts"))
            data[name] = col.view("datetime64[ns]") if datetimes and is_time and col.dtype == np.int64 else col
        return pd.DataFrame(data)

    @staticmethod
    def concat(parts: list["Result"]) -> "Result":
        parts = [p for p in parts if p.columns]
        if not parts:
            return Result({})
        return Result({c: np.concatenate([p[c] for p in parts]) for c in parts[0].columns})
