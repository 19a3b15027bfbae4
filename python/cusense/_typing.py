"""Type aliases of the public API (for annotations; nothing here exists at run time beyond
the names)."""
from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Union

import numpy as np

#: A duration: int nanoseconds, a string such as ``"500ms"`` or ``"1h30min"``, a
#: ``datetime.timedelta`` (``pandas.Timedelta`` is one) or an ``np.timedelta64`` of a fixed unit.
Duration = Union[int, np.integer, str, _dt.timedelta, np.timedelta64]

#: A column of a batch: a numpy array, a list, a pandas or polars Series, a pyarrow array.
#: pandas, pyarrow and polars ship without type information, hence ``Any``.
Column = Any

#: A file path.
PathLike = Union[str, "os.PathLike[str]"]

#: A result table of an optional dependency (pandas.DataFrame, pyarrow.Table, polars.DataFrame).
Frame = Any
