"""The partition worker: one ``cusense.Pipeline`` owning the keys of one hash partition, driven
by the router (``cusense.distributed.Pipeline``). Runs as a Ray actor; written as a plain class
so that it imports and runs without Ray (the router wraps it with ``ray.remote``).

The pipeline runs with ``watermark="external"``: the router supplies each record's stream
position and the global watermark steps, so the partition's state, lateness decisions and
emitted rows equal those of a single pipeline restricted to its keys. Window and late rows
carry their ``position``; detector rows (scores, silence events) are drained after every push
and tagged with the number of the event that released them (``_event``), their ``seq`` mapped
from the partition's arrival index to the global one."""
from __future__ import annotations

import inspect
import os
import tempfile
from typing import Any

import numpy as np

from .. import _pipeline
from ..detectors import Silence

Columns = dict[str, np.ndarray]

#: Whether the library takes externally supplied watermarks (push with positions and watermark
#: steps, polls with positions). Without it the workers derive their own watermark from their
#: records, which equals the single pipeline only for streams where that makes no difference.
EXTERNAL_WATERMARK = "watermark" in inspect.signature(_pipeline.Pipeline.__init__).parameters


def _concat(parts: list[Columns]) -> Columns:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


class PartitionWorker:
    """One partition. ``kwargs``: the ``cusense.Pipeline`` constructor arguments; a checkpoint
    (bytes of a ``Pipeline.checkpoint`` file) and its ``sidecar`` restore an earlier state."""

    def __init__(self, kwargs: dict[str, Any], index: int, checkpoint: bytes | None = None,
                 sidecar: dict[str, Any] | None = None) -> None:
        self.index = index
        backend = kwargs.get("backend", "auto")
        if checkpoint is None:
            extra: dict[str, Any] = {"watermark": "external"} if EXTERNAL_WATERMARK else {}
            self.pipe = _pipeline.Pipeline(**kwargs, **extra)
        else:
            with tempfile.TemporaryDirectory(prefix="cusense-restore-") as tmp:
                path = os.path.join(tmp, "partition.ckpt")
                with open(path, "wb") as f:
                    f.write(checkpoint)
                self.pipe = _pipeline.Pipeline.restore(path, backend=backend)
        self.windowed = self.pipe.window is not None
        self.scoring = any(not isinstance(d, Silence) for d in self.pipe.detectors)
        self.silence = any(isinstance(d, Silence) for d in self.pipe.detectors)
        # Detector rows drained after each event, tagged with it; window rows of flushes.
        self.out: dict[str, list[Columns]] = {"windows": [], "late": [], "scores": [],
                                              "silence": []}
        # Global arrival index of the partition's records from local seq `seq_base` on (the
        # ones that may still be scored), and which of them have been.
        side = sidecar or {}
        self.seq_next = int(side.get("seq_next", 0))
        self.seq_base = int(side.get("seq_base", self.seq_next))
        self.seq_glob: list[np.ndarray] = [np.asarray(side.get("seq_glob", np.zeros(0, np.int64)))]
        self.seq_done: list[np.ndarray] = [np.asarray(side.get("seq_done", np.zeros(0, bool)))]

    # -- events ------------------------------------------------------------------------------

    def push(self, event: int, keys: np.ndarray, ts: np.ndarray, values: np.ndarray,
             positions: np.ndarray, at: np.ndarray, watermark: np.ndarray,
             step_position: np.ndarray) -> None:
        if EXTERNAL_WATERMARK:
            # The router checked the batch as cusense.Pipeline.push does and made every array
            # contiguous with the engine's dtype: straight to the engine.
            if values.dtype == np.float32:
                self.pipe._core.push_external_f32(keys, ts, values, positions, at, watermark,
                                                  step_position)
            else:
                self.pipe._core.push_external_f64(keys, ts, values, positions, at, watermark,
                                                  step_position)
        elif len(keys):
            self.pipe.push(keys, ts, values, time_unit="ns")
            self._drain_windows_tagged(event)
        if self.scoring and len(keys):
            self.seq_glob.append(positions // 2)
            self.seq_done.append(np.zeros(len(keys), dtype=bool))
            self.seq_next += len(keys)
        self._drain_detectors(event)

    def push_part(self, event: int, part: tuple[np.ndarray, ...]) -> None:
        self.push(event, *part)

    def flush(self, event: int) -> None:
        if self.windowed:
            if EXTERNAL_WATERMARK:
                # Rows emitted before the flush keep their positions, the flush's own come last.
                self.out["windows"].append(self.pipe.flush(positions=True).to_dict())
            else:
                self._drain_windows_tagged(event)
                rows = self.pipe.flush().to_dict()
                if rows:
                    n = len(next(iter(rows.values())))
                    rows["_event"] = np.full(n, event, dtype=np.int64)
                self.out["windows"].append(rows)
        else:
            self.pipe.flush()
        self._drain_detectors(event)

    def _drain_windows_tagged(self, event: int) -> None:
        # Without external watermarks rows have no positions: tag them with the event.
        for kind, rows in (("windows", self.pipe.poll().to_dict()),
                           ("late", self.pipe.poll_late().to_dict())):
            if rows:
                n = len(next(iter(rows.values())))
                rows["_event"] = np.full(n, event, dtype=np.int64)
            self.out[kind].append(rows)

    def _drain_detectors(self, event: int) -> None:
        if self.scoring:
            rows = self.pipe.poll_scores().to_dict()
            n = len(rows["seq"])
            if n:
                rows["seq"] = self._global_seq(rows["seq"])
            rows["_event"] = np.full(n, event, dtype=np.int64)
            self.out["scores"].append(rows)
        if self.silence:
            rows = self.pipe.poll_silence().to_dict()
            rows["_event"] = np.full(len(rows["key"]), event, dtype=np.int64)
            self.out["silence"].append(rows)

    def _global_seq(self, local: np.ndarray) -> np.ndarray:
        glob = np.concatenate(self.seq_glob) if len(self.seq_glob) > 1 else self.seq_glob[0]
        done = np.concatenate(self.seq_done) if len(self.seq_done) > 1 else self.seq_done[0]
        j = local.astype(np.int64) - self.seq_base
        result = glob[j].astype(local.dtype)
        done[j] = True
        # Forget the prefix of records all scored.
        first_open = int(np.argmin(done)) if not done.all() else done.size
        self.seq_base += first_open
        self.seq_glob = [glob[first_open:].copy()]
        self.seq_done = [done[first_open:].copy()]
        return result

    # -- outputs, state ----------------------------------------------------------------------

    def drain(self) -> dict[str, Columns]:
        """Every output since the last drain: windows and late records (with ``position`` or,
        without external watermarks, ``_event``), scores and silence events (``_event``)."""
        if self.windowed:
            if EXTERNAL_WATERMARK:
                self.out["windows"].append(self.pipe.poll(positions=True).to_dict())
                self.out["late"].append(self.pipe.poll_late(positions=True).to_dict())
            else:
                self._drain_windows_tagged(-1)
        result = {kind: _concat(parts) for kind, parts in self.out.items()}
        for parts in self.out.values():
            parts.clear()
        return result

    def checkpoint(self) -> tuple[bytes, dict[str, Any]]:
        """The pipeline's checkpoint file as bytes, and the worker's own state (the global
        arrival indices of records the detectors may still score). Called right after a
        drain, so no output is pending in the worker."""
        with tempfile.TemporaryDirectory(prefix="cusense-ckpt-") as tmp:
            path = os.path.join(tmp, "partition.ckpt")
            self.pipe.checkpoint(path)
            with open(path, "rb") as f:
                data = f.read()
        glob = np.concatenate(self.seq_glob)
        done = np.concatenate(self.seq_done)
        sidecar = {"seq_next": self.seq_next, "seq_base": self.seq_base, "seq_glob": glob,
                   "seq_done": done}
        return data, sidecar

    def stats(self) -> dict[str, Any]:
        return self.pipe.stats

    def backend(self) -> str:
        return self.pipe.backend

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        import socket
        return socket.gethostname()

    def ping(self) -> bool:
        return True
