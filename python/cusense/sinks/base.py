"""What the service hands its sinks: one epoch's outputs, committed together with the epoch id."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd


@dataclass
class EpochOutput:
    """Everything one epoch (the records between two checkpoints) produced. Time columns are
    ``datetime64[ns, UTC]``; ``device`` and ``channel`` are the original string ids.

    - ``windows``: device, channel, window_start, window_end, update_seq (0 for a window's first
      emission, 1, 2, ... for its updates under allowed lateness), one column per aggregation
      (``count``, ``mean``, ...), nan_count. Identity: (device, channel, window_start, update_seq).
    - ``alarms``: device, channel, timestamp, value, detector, score (records a detector flagged).
    - ``silence``: device, channel, last_seen, silent_since, back_at (NaT while silent), back.
    - ``late``: device, channel, timestamp, value (records too late for their window).
    - ``dead_letters``: topic, partition (nullable Int64), offset (nullable Int64), payload
      (bytes), reason.
    - ``raw``: device, channel, timestamp, value (every reading pushed, for the archive).
    - ``status``: device, status ("ok" | "silent" | "anomalous"), since, last_seen: the current
      state of every device that sent readings or changed status in this epoch.
    - ``watermark``: the pipeline watermark (ns) after the epoch, None before any record;
      ``closed_before``: event time (ns) before which every window has been emitted for good
      (watermark minus allowed lateness and the window span), None before any record: raw
      readings older than it are safe to purge once this epoch is committed.
    - ``source_positions``: the source positions after the epoch (what the checkpoint holds).
    """
    epoch: int
    windows: pd.DataFrame
    alarms: pd.DataFrame
    silence: pd.DataFrame
    late: pd.DataFrame
    dead_letters: pd.DataFrame
    raw: pd.DataFrame
    status: pd.DataFrame
    watermark: int | None
    closed_before: int | None
    source_positions: dict


class SinkUnavailableError(ConnectionError):
    """The sink's server or storage cannot be reached. The epoch being written was rolled back;
    the service retries ``write`` + ``commit`` of it with back-off, and the sink reconnects on
    its own on the next call."""


class Sink(Protocol):
    """A destination for epoch outputs. The service calls ``open()``, then per epoch
    ``write(out)`` followed by ``commit(out.epoch)``, and ``close()``. After a crash the service
    calls ``committed_epoch()`` and re-sends the last checkpointed epoch when the sink is behind,
    so ``write`` + ``commit`` of an epoch must be atomic (all or nothing) and idempotent (a
    committed epoch sent again changes nothing)."""

    def open(self) -> None: ...

    def committed_epoch(self) -> int:
        """The last epoch committed, -1 when none."""

    def write(self, out: EpochOutput) -> None: ...

    def commit(self, epoch: int) -> None: ...

    def close(self) -> None: ...
