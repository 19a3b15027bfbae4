"""Line-protocol sink: windows and alarms as InfluxDB line protocol, to a file or over TCP.

Also the example of a user-written sink: the Sink protocol is ``open``, ``committed_epoch``,
``write`` (stage the epoch), ``commit`` (make it visible) and ``close``.

    cusense_windows,device=pump\\ 7,channel=temp count=12i,mean=1.5,... <window_start ns>
    cusense_alarms,device=pump\\ 7,channel=temp,detector=ewma value=9.1,score=0.93 <timestamp ns>
"""
from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pandas as pd

from .base import EpochOutput, SinkUnavailableError


def escape_measurement(name: str) -> str:
    return str(name).replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def escape_key(text: str) -> str:
    """Tag keys, tag values and field keys: escape backslash, comma, equals sign and space."""
    text = str(text)
    if "\n" in text:
        raise ValueError(f"line protocol cannot carry a newline in a tag or key: {text!r}")
    for char in ("\\", ",", "=", " "):
        text = text.replace(char, "\\" + char)
    return text


def format_field(value) -> str | None:
    """A field value in line protocol, or None for a value to omit (NaN, NaT, infinity)."""
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return f"{value.value}i"   # event times (window_end, argmax_ts) as integer nanoseconds
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    return repr(float(value)) if math.isfinite(value) else None


def to_lines(frame: pd.DataFrame, measurement: str, tags: list[str], time_column: str) -> list[str]:
    """One line per row: ``tags`` as the tag set, every other column but ``time_column`` a field.
    Empty tag values are left out (line protocol has no empty tags)."""
    fields = [c for c in frame.columns if c not in tags and c != time_column]
    lines = []
    for row in frame.to_dict("records"):   # Python scalars: int, float, bool, Timestamp
        tag_set = "".join(f",{escape_key(t)}={escape_key(row[t])}" for t in tags
                      if pd.notna(row[t]) and row[t] != "")
        field_set = ",".join(f"{escape_key(f)}={value}" for f in fields
                             if (value := format_field(row[f])) is not None)
        if field_set:   # a point needs at least one field
            lines.append(f"{escape_measurement(measurement)}{tag_set} {field_set} "
                         f"{row[time_column].value}\n")
    return lines


class LineProtocolSink:
    """Windows (measurement ``measurement``, timestamp ``window_start``) and alarms (measurement
    ``alarm_measurement``, timestamp of the flagged record) as line protocol.

    ``target``: a file path (lines appended) or ``tcp://host:port`` (QuestDB's ILP/TCP port,
    Telegraf's ``socket_listener``).

    Idempotency: a line-protocol store (InfluxDB; QuestDB with deduplication on the tags and
    timestamp) overwrites a point with the same measurement, tag set and timestamp, so an epoch
    sent again, or a window update (``update_seq`` > 0), replaces the earlier point. For a file,
    the sidecar ``<target>.committed`` holds the committed epoch and the file size after it:
    epochs up to it are skipped, and ``open`` cuts off what an interrupted commit appended.
    """

    def __init__(self, target, measurement: str = "cusense_windows",
                 alarm_measurement: str = "cusense_alarms"):
        self.target = str(target)
        self.measurement = measurement
        self.alarm_measurement = alarm_measurement
        self._lines: list[str] = []
        self._epoch: int | None = None
        self._socket: socket.socket | None = None
        self._tcp_committed = -1   # a TCP server cannot be asked; the store deduplicates instead
        self._address: tuple[str, int] | None = None
        self._path: Path | None = None
        if self.target.startswith("tcp://"):
            host, _, port = self.target[len("tcp://"):].rpartition(":")
            self._address = (host.strip("[]"), int(port))
            self._path = None
        else:
            self._path = Path(self.target)
            self._sidecar = Path(self.target + ".committed")

    def open(self) -> None:
        if self._path is not None:
            committed = self._read_sidecar()
            if self._path.exists() and self._path.stat().st_size > committed["size"]:
                with open(self._path, "r+b") as f:   # drop lines of an uncommitted epoch
                    f.truncate(committed["size"])

    def committed_epoch(self) -> int:
        return self._read_sidecar()["epoch"] if self._path is not None else self._tcp_committed

    def write(self, out: EpochOutput) -> None:
        # Nothing leaves before commit: the epoch is staged in memory.
        self._epoch, self._lines = out.epoch, []
        if out.epoch <= self.committed_epoch():
            return
        self._lines += to_lines(out.windows, self.measurement, ["device", "channel"],
                                "window_start")
        self._lines += to_lines(out.alarms, self.alarm_measurement,
                                ["device", "channel", "detector"], "timestamp")

    def commit(self, epoch: int) -> None:
        if epoch <= self.committed_epoch():
            return
        if epoch != self._epoch:
            raise ValueError(f"commit({epoch}) without write() of epoch {epoch}")
        payload = "".join(self._lines).encode()
        if self._path is not None:
            try:
                self._append(payload, epoch)
            except OSError as err:   # disk full, lost mount: undo the append, let the service retry
                try:
                    self.open()
                except OSError:
                    pass   # the next open() cuts it off
                raise SinkUnavailableError(f"line protocol {self.target}: {err}") from err
        else:
            self._send(payload)
            self._tcp_committed = epoch
        self._lines = []

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # --- file target -----------------------------------------------------------------------------

    def _read_sidecar(self) -> dict:
        try:
            return json.loads(self._sidecar.read_text())
        except FileNotFoundError:
            return {"epoch": -1, "size": 0}

    def _append(self, payload: bytes, epoch: int) -> None:
        assert self._path is not None   # a file target
        with open(self._path, "ab") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        temporary = Path(str(self._sidecar) + ".tmp")   # replaced atomically: never half-written
        with open(temporary, "w") as f:
            json.dump({"epoch": epoch, "size": size}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self._sidecar)

    # --- TCP target ------------------------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        try:
            if self._socket is None:
                assert self._address is not None   # a tcp:// target
                self._socket = socket.create_connection(self._address, timeout=10)
            self._socket.sendall(payload)
        except OSError as err:
            self.close()   # reconnect on the service's retry
            raise SinkUnavailableError(f"line protocol {self.target}: {err}") from err
