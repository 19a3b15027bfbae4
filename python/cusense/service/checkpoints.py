"""Durable epoch checkpoints: pipeline state, service state and the epoch's outputs, in one
directory per epoch, made visible by an atomic rename.

Why the outputs are in the checkpoint: a sink is written only from a durable checkpoint, so
after a crash the service re-sends exactly the rows of the last checkpointed epoch to any sink
that had not committed it, and nothing computed after that checkpoint has reached any sink.
Each epoch's rows therefore reach every sink once (sinks commit them atomically with the
epoch id), whatever the moment of the crash.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import pandas as pd

from .._durable import fsync_directory, fsync_file
from ..sinks.base import EpochOutput

_EPOCH_DIR = re.compile(r"^epoch-(\d{12})$")
OUTPUT_TABLES = ("windows", "alarms", "silence", "late", "dead_letters", "raw", "status")


class CheckpointStore:
    """``directory/epoch-NNNNNNNNNNNN/`` holding ``pipeline.ckpt``, ``state.json`` and one
    Arrow IPC file per output table. Only complete directories carry that name: a checkpoint
    is written under ``.tmp-epoch-N`` and renamed when every file is fsync'ed."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):   # leftovers of a crash while writing
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)

    def epochs(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(_EPOCH_DIR.match, os.listdir(self.directory)) if m)

    def latest(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def path(self, epoch: int) -> str:
        return os.path.join(self.directory, f"epoch-{epoch:012d}")

    def write(self, out: EpochOutput, pipeline, state: dict, before_rename=None) -> None:
        """Writes the checkpoint of ``out.epoch``; durable when this returns. ``before_rename``
        is called once every file is written, before the directory is renamed into place (the
        crash tests kill the process there)."""
        final = self.path(out.epoch)
        tmp = os.path.join(self.directory, f".tmp-epoch-{out.epoch:012d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        pipeline.checkpoint(os.path.join(tmp, "pipeline.ckpt"))   # fsync'ed by the pipeline
        meta = {**state, "epoch": out.epoch, "watermark": out.watermark,
                "closed_before": out.closed_before, "source_positions": out.source_positions}
        with open(os.path.join(tmp, "state.json"), "w") as f:
            # dumps, not dump: dump streams through the pure-Python encoder (one write per
            # token), several times slower for the tens of thousands of MQTT acks it holds.
            f.write(json.dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        for name in OUTPUT_TABLES:
            file = os.path.join(tmp, f"{name}.arrow")
            getattr(out, name).reset_index(drop=True).to_feather(file)
            fsync_file(file)
        fsync_directory(tmp)
        if before_rename:
            before_rename()
        os.rename(tmp, final)
        fsync_directory(self.directory)

    def read(self, epoch: int) -> tuple[str, dict, EpochOutput]:
        """(pipeline checkpoint path, service state, the epoch's outputs)."""
        path = self.path(epoch)
        with open(os.path.join(path, "state.json")) as f:
            state = json.load(f)
        tables = {name: pd.read_feather(os.path.join(path, f"{name}.arrow")) for name in OUTPUT_TABLES}
        out = EpochOutput(epoch=epoch, watermark=state["watermark"],
                          closed_before=state["closed_before"],
                          source_positions=state["source_positions"], **tables)
        return os.path.join(path, "pipeline.ckpt"), state, out

    def prune(self, keep_from: int) -> None:
        """Deletes checkpoints older than ``keep_from`` (once every sink committed it)."""
        for epoch in self.epochs():
            if epoch < keep_from:
                shutil.rmtree(self.path(epoch), ignore_errors=True)
