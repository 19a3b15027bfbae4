"""The partition worker: one ``cusense.Pipeline`` owning the keys of one hash partition, driven
by the router (``cusense.distributed.Pipeline``). Runs as a Ray actor; written as a plain class
so that it imports and runs without Ray (the router wraps it with ``ray.remote``).

The pipeline runs with ``watermark="external"``: the router supplies each record's stream
position and the global watermark steps, so the partition's state, lateness decisions and
emitted rows equal those of a single pipeline restricted to its keys. Window and late rows
carry their ``position``. Detector rows (scores, silence events) are released at the end of
each push, as in the single pipeline: the worker drains them after every event and tags them
with its number (``_event``); a score row's ``seq`` is the record's position (2 x its global
arrival index), turned back into the arrival index here."""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from .. import _pipeline
from ..detectors import Silence

Columns = dict[str, np.ndarray]


def _concat(parts: list[Columns]) -> Columns:
    parts = [p for p in parts if p]
    if not parts:
        return {}
    if len(parts) == 1:
        return parts[0]
    return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}


class PartitionWorker:
    """One partition. ``kwargs``: the ``cusense.Pipeline`` constructor arguments; a checkpoint
    (the bytes of a ``Pipeline.checkpoint`` file) restores an earlier state instead."""

    def __init__(self, kwargs: dict[str, Any], index: int, checkpoint: bytes | None = None) -> None:
        self.index = index
        if checkpoint is None:
            self.pipe = _pipeline.Pipeline(**kwargs, watermark="external")
        else:
            with tempfile.TemporaryDirectory(prefix="cusense-restore-") as tmp:
                path = os.path.join(tmp, "partition.ckpt")
                with open(path, "wb") as f:
                    f.write(checkpoint)
                self.pipe = _pipeline.Pipeline.restore(path, backend=kwargs.get("backend", "auto"))
        self.windowed = self.pipe.window is not None
        self.scoring = any(not isinstance(d, Silence) for d in self.pipe.detectors)
        self.silence = any(isinstance(d, Silence) for d in self.pipe.detectors)
        # Rows taken out of the pipeline before a drain: flushes' windows, detector rows.
        self.out: dict[str, list[Columns]] = {"windows": [], "late": [], "scores": [],
                                              "silence": []}

    # -- events ------------------------------------------------------------------------------

    def push_part(self, event: int, part: tuple[np.ndarray, ...]) -> None:
        """One batch's part: keys, timestamps, values, positions and the watermark steps
        (at, watermark, position). The router checked the batch as ``cusense.Pipeline.push``
        does and gives contiguous arrays of the engine's types, so they go to the engine
        directly."""
        keys, ts, values, positions, at, watermark, step_position = part
        push = (self.pipe._core.push_external_f32 if values.dtype == np.float32
                else self.pipe._core.push_external_f64)
        push(keys, ts, values, positions, at, watermark, step_position)
        self._drain_detectors(event)

    def flush(self, event: int) -> None:
        if self.windowed:
            # Rows emitted before the flush keep their positions, the flush's own come last.
            self.out["windows"].append(self.pipe.flush(positions=True).to_dict())
        else:
            self.pipe.flush()
        self._drain_detectors(event)

    def _drain_detectors(self, event: int) -> None:
        if self.scoring:
            rows = self.pipe.poll_scores().to_dict()
            rows["seq"] = rows["seq"] // 2
            rows["_event"] = np.full(len(rows["seq"]), event, dtype=np.int64)
            self.out["scores"].append(rows)
        if self.silence:
            rows = self.pipe.poll_silence().to_dict()
            rows["_event"] = np.full(len(rows["key"]), event, dtype=np.int64)
            self.out["silence"].append(rows)

    # -- outputs, state ----------------------------------------------------------------------

    def drain(self) -> dict[str, Columns]:
        """Every output since the last drain: windows and late records with their
        ``position``, scores and silence events with their ``_event``."""
        if self.windowed:
            self.out["windows"].append(self.pipe.poll(positions=True).to_dict())
            self.out["late"].append(self.pipe.poll_late(positions=True).to_dict())
        result = {kind: _concat(parts) for kind, parts in self.out.items()}
        for parts in self.out.values():
            parts.clear()
        return result

    def checkpoint(self) -> bytes:
        """The pipeline's checkpoint file as bytes (called right after a drain: no output is
        pending in the worker)."""
        with tempfile.TemporaryDirectory(prefix="cusense-ckpt-") as tmp:
            path = os.path.join(tmp, "partition.ckpt")
            self.pipe.checkpoint(path)
            with open(path, "rb") as f:
                return f.read()

    def stats(self) -> dict[str, Any]:
        return self.pipe.stats

    def backend(self) -> str:
        return self.pipe.backend

    def pid(self) -> int:
        return os.getpid()
