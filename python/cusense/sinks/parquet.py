"""Parquet archive of raw readings and window aggregates, hive-partitioned by event hour, with
downsample-then-purge retention.

Layout under ``root``::

    raw/date=YYYY-MM-DD/hour=HH/epoch-<epoch, 12 digits>.parquet      device, channel, timestamp, value
    windows/date=YYYY-MM-DD/hour=HH/epoch-<epoch>.parquet             EpochOutput.windows
    _committed.json                                                   {"epoch", "closed_before", "watermark"}

A row's partition is its event time in UTC (``timestamp`` for raw readings, ``window_start`` for
windows). Each epoch adds new files and never rewrites older ones.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .._durable import fsync_directory
from .base import EpochOutput, SinkUnavailableError

log = logging.getLogger(__name__)

NS_PER_HOUR = 3600 * 10**9
NS_PER_DAY = 24 * NS_PER_HOUR
MARKER = "_committed.json"
# Temporary names start with "." so that pyarrow, pandas and polars (with a *.parquet glob)
# never read a half-written file as part of the dataset.
TMP_SUFFIX = ".tmp"
_EPOCH_FILE = re.compile(r"epoch-(\d+)\.parquet")
_HOUR_DIR = re.compile(r"hour=(\d\d)")
_DATE_DIR = re.compile(r"date=(\d{4}-\d\d-\d\d)")


@dataclass
class _PendingEpoch:
    """An epoch written under temporary names, waiting for ``commit``."""
    epoch: int
    watermark: int | None
    closed_before: int | None
    files: list[tuple[Path, Path]] = field(default_factory=list)   # (temporary, final)


class ParquetArchive:
    """Archive sink: raw readings for ``raw_retention_days``, window aggregates for
    ``aggregate_retention_days`` (``None`` keeps forever), as Parquet files readable with
    ``pyarrow.dataset.dataset(root / "raw", partitioning="hive")``.

    Atomic and idempotent per epoch: ``write`` puts the epoch's files under temporary names
    (fsynced), ``commit`` renames them into place and then atomically replaces the marker
    ``_committed.json``. File names depend only on the epoch and the partition, so an epoch sent
    again overwrites its own files; ``open`` deletes temporary files and the files of epochs newer
    than the marker (renamed before a crash, never marked), which the service sends again.

    Purge rule (run by ``commit``, after the marker is written; reference time is event time,
    the committed epoch's ``watermark``, so replaying history behaves as live). An hour directory
    ``[h, h + 1h)`` is deleted when its end ``h + 1h``

    - raw: ``<= watermark - raw_retention`` **and** ``<= closed_before``;
    - windows: ``<= watermark - aggregate_retention`` **and** ``<= closed_before``.

    ``closed_before`` (event time before which every window has been emitted for good) keeps raw
    readings whose windows are not yet written, e.g. those of a long session still open, however
    old they are; for windows it keeps hours into which a window update could still be written.
    Nothing is purged while the watermark or ``closed_before`` is unknown (``None``).
    """

    def __init__(self, root, raw_retention_days: float | None = 7,
                 aggregate_retention_days: float | None = 90):
        for name, days in (("raw_retention_days", raw_retention_days),
                           ("aggregate_retention_days", aggregate_retention_days)):
            if days is not None and not days > 0:
                raise ValueError(f"{name} must be positive or None, got {days!r}")
        self.root = Path(root)
        self.raw_retention_days = raw_retention_days
        self.aggregate_retention_days = aggregate_retention_days
        self._pending: _PendingEpoch | None = None

    # --- Sink protocol -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the root and clear what an interrupted epoch left behind."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            committed = self.committed_epoch()
            for path in self._archive_files():
                if path.name.endswith(TMP_SUFFIX) or _epoch_of(path) > committed:
                    path.unlink()
            (self.root / (MARKER + TMP_SUFFIX)).unlink(missing_ok=True)
        except OSError as err:
            raise SinkUnavailableError(f"parquet archive {self.root}: {err}") from err

    def committed_epoch(self) -> int:
        """The last epoch committed, -1 when none."""
        marker = self._read_marker()
        return -1 if marker is None else int(marker["epoch"])

    def write(self, out: EpochOutput) -> None:
        """Write the epoch's raw readings and windows under temporary names."""
        self._discard_pending()   # a retried epoch starts over
        try:
            if out.epoch <= self.committed_epoch():
                return   # already archived: sending it again changes nothing
            self._pending = _PendingEpoch(out.epoch, out.watermark, out.closed_before)
            for kind, frame, time_column in (("raw", out.raw, "timestamp"),
                                             ("windows", out.windows, "window_start")):
                self._write_partitions(kind, frame, time_column)
        except OSError as err:
            self._discard_pending()
            raise SinkUnavailableError(f"parquet archive {self.root}: {err}") from err

    def commit(self, epoch: int) -> None:
        """Rename the epoch's files into place, mark it committed, then purge."""
        try:
            if epoch <= self.committed_epoch():
                return
        except OSError as err:
            raise SinkUnavailableError(f"parquet archive {self.root}: {err}") from err
        pending = self._pending
        if pending is None or pending.epoch != epoch:
            raise ValueError(f"commit({epoch}) without write() of epoch {epoch}")
        try:
            self._publish(pending)
            self._write_marker(pending)
        except OSError as err:
            self._discard_pending(including_published=True)
            raise SinkUnavailableError(f"parquet archive {self.root}: {err}") from err
        self._pending = None
        try:
            self.purge()
        except OSError as err:
            # The epoch is committed; what was not purged now is purged by a later commit.
            log.warning("parquet archive %s: purge failed: %s", self.root, err)

    def close(self) -> None:
        self._discard_pending()

    # --- retention -----------------------------------------------------------------------------

    def purge(self) -> list[Path]:
        """Delete the hour directories the purge rule allows (see the class docstring), using the
        committed marker's watermark and closed_before; returns the deleted directories."""
        marker = self._read_marker()
        if marker is None or marker["watermark"] is None or marker["closed_before"] is None:
            return []
        deleted = []
        for kind, days in (("raw", self.raw_retention_days),
                           ("windows", self.aggregate_retention_days)):
            if days is None:
                continue
            cutoff = min(marker["watermark"] - int(days * NS_PER_DAY), marker["closed_before"])
            deleted += self._delete_hours_ending_by(self.root / kind, cutoff)
        return deleted

    # --- internals -----------------------------------------------------------------------------

    def _write_partitions(self, kind: str, frame: pd.DataFrame, time_column: str) -> None:
        if frame is None or frame.empty:
            return
        hour = frame[time_column].dt.floor("h")
        for hour_start, rows in frame.groupby(hour, sort=True):
            directory = self.root / kind / f"date={hour_start:%Y-%m-%d}" / f"hour={hour_start:%H}"
            directory.mkdir(parents=True, exist_ok=True)
            assert self._pending is not None   # written between begin and commit
            final = directory / f"epoch-{self._pending.epoch:012d}.parquet"
            temporary = directory / f".{final.name}{TMP_SUFFIX}"
            self._pending.files.append((temporary, final))   # before writing: a failure cleans it up
            with open(temporary, "wb") as f:
                pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), f)
                f.flush()
                os.fsync(f.fileno())

    def _publish(self, pending: _PendingEpoch) -> None:
        for temporary, final in pending.files:
            os.replace(temporary, final)
        # The renames must be durable before the marker says the epoch is there.
        for directory in {final.parent for _, final in pending.files}:
            fsync_directory(directory)

    def _write_marker(self, pending: _PendingEpoch) -> None:
        marker = self.root / MARKER
        temporary = self.root / (MARKER + TMP_SUFFIX)
        with open(temporary, "w") as f:
            json.dump({"epoch": pending.epoch, "closed_before": pending.closed_before,
                       "watermark": pending.watermark}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, marker)
        fsync_directory(self.root)

    def _read_marker(self) -> dict | None:
        try:
            with open(self.root / MARKER) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _discard_pending(self, including_published: bool = False) -> None:
        """Best-effort removal of an uncommitted epoch's files (a retry or ``open`` after a crash
        would replace or remove them anyway)."""
        if self._pending is None:
            return
        for temporary, final in self._pending.files:
            paths = (temporary, final) if including_published else (temporary,)
            for path in paths:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
        self._pending = None

    def _archive_files(self):
        for kind in ("raw", "windows"):
            for directory, _, names in os.walk(self.root / kind):
                for name in names:
                    yield Path(directory) / name

    @staticmethod
    def _delete_hours_ending_by(kind_root: Path, cutoff: int) -> list[Path]:
        deleted: list[Path] = []
        if not kind_root.is_dir():
            return deleted
        for date_dir in sorted(kind_root.iterdir()):
            date = _DATE_DIR.fullmatch(date_dir.name)
            if not date_dir.is_dir() or not date:
                continue
            day_start = pd.Timestamp(date.group(1), tz="UTC").value
            if day_start + NS_PER_DAY <= cutoff:
                shutil.rmtree(date_dir)   # the whole day has expired
                deleted.append(date_dir)
                continue
            for hour_dir in sorted(date_dir.iterdir()):
                hour = _HOUR_DIR.fullmatch(hour_dir.name)
                if hour_dir.is_dir() and hour and \
                        day_start + (int(hour.group(1)) + 1) * NS_PER_HOUR <= cutoff:
                    shutil.rmtree(hour_dir)
                    deleted.append(hour_dir)
        return deleted


def _epoch_of(path: Path) -> int:
    match = _EPOCH_FILE.fullmatch(path.name)
    return int(match.group(1)) if match else -1
