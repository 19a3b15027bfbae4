"""Durable epoch checkpoints: pipeline state, service state and the epoch's outputs, in one
directory per epoch, made visible by an atomic rename.

With ``[pipeline] workers >= 2`` the pipeline is a ``cusense.distributed.Pipeline``, whose
checkpoint is itself a directory (one file per partition, the outputs not yet polled and a
manifest written last). It is written next to the epoch directories as
``pipeline-epoch-N/``, complete before ``epoch-N`` is renamed into place: the epoch directory
stays the one commit point (a ``pipeline-epoch-N`` without its ``epoch-N`` is a leftover of a
crash and is removed), and the distributed pipeline, which restores a lost partition from the
files of its last cut, finds them where it wrote them until the next epoch's checkpoint.

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

from typing import NamedTuple

import pandas as pd

from .._durable import fsync_directory, fsync_file
from ..distributed import Pipeline as DistributedPipeline
from ..sinks.base import EpochOutput

_EPOCH_DIR = re.compile(r"^epoch-(\d{12})$")
_PIPELINE_DIR = re.compile(r"^pipeline-epoch-(\d{12})$")
OUTPUT_TABLES = ("windows", "alarms", "silence", "late", "dead_letters", "raw", "status")


class PipelineCheckpoint(NamedTuple):
    """The pipeline state of an epoch checkpoint."""
    path: str          # a cusense.Pipeline file, or a distributed pipeline's directory
    workers: int       # 1: the in-process pipeline; N >= 2: N partitions
    detectors: bool    # a distributed checkpoint holding detector state (not rescalable yet)


class CheckpointStore:
    """``directory/epoch-NNNNNNNNNNNN/`` holding ``pipeline.ckpt``, ``state.json`` and one
    Arrow IPC file per output table. Only complete directories carry that name: a checkpoint
    is written under ``.tmp-epoch-N`` and renamed when every file is fsync'ed. A distributed
    pipeline's checkpoint is ``directory/pipeline-epoch-NNNNNNNNNNNN/`` instead of
    ``pipeline.ckpt`` (see the module's docstring)."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        epochs = set(self.epochs())
        for name in os.listdir(directory):   # leftovers of a crash while writing
            cut = _PIPELINE_DIR.match(name)
            if name.startswith(".tmp-") or (cut and int(cut.group(1)) not in epochs):
                shutil.rmtree(os.path.join(directory, name), ignore_errors=True)

    def epochs(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(_EPOCH_DIR.match, os.listdir(self.directory)) if m)

    def latest(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def path(self, epoch: int) -> str:
        return os.path.join(self.directory, f"epoch-{epoch:012d}")

    def pipeline_path(self, epoch: int) -> str:
        """Where a distributed pipeline's checkpoint of ``epoch`` lives."""
        return os.path.join(self.directory, f"pipeline-epoch-{epoch:012d}")

    def write(self, out: EpochOutput, pipeline, state: dict, before_rename=None) -> None:
        """Writes the checkpoint of ``out.epoch``; durable when this returns. ``before_rename``
        is called once every file is written, before the directory is renamed into place (the
        crash tests kill the process there)."""
        final = self.path(out.epoch)
        tmp = os.path.join(self.directory, f".tmp-epoch-{out.epoch:012d}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if isinstance(pipeline, DistributedPipeline):
            cut = self.pipeline_path(out.epoch)
            shutil.rmtree(cut, ignore_errors=True)   # never the pipeline's current base (an older epoch)
            pipeline.checkpoint(cut)                 # files fsync'ed, manifest last and atomic
            fsync_directory(self.directory)
            described = {"directory": os.path.basename(cut), "workers": pipeline.partitions}
        else:
            pipeline.checkpoint(os.path.join(tmp, "pipeline.ckpt"))   # fsync'ed by the pipeline
            described = {"file": "pipeline.ckpt", "workers": 1}
        meta = {**state, "epoch": out.epoch, "watermark": out.watermark,
                "closed_before": out.closed_before, "source_positions": out.source_positions,
                "pipeline": described}
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

    def _state(self, epoch: int) -> dict:
        with open(os.path.join(self.path(epoch), "state.json")) as f:
            return json.load(f)

    def pipeline_of(self, epoch: int) -> PipelineCheckpoint:
        """Which pipeline wrote the checkpoint of ``epoch``: its path and number of workers
        (1: a ``cusense.Pipeline`` file; checkpoints written before ``workers`` existed are
        of that kind), and for a distributed one whether it holds detector state."""
        described = self._state(epoch).get("pipeline", {"file": "pipeline.ckpt", "workers": 1})
        if "directory" not in described:
            return PipelineCheckpoint(os.path.join(self.path(epoch), described["file"]), 1, False)
        from ..distributed import _manifest

        path = os.path.join(self.directory, described["directory"])
        manifest = _manifest.read_manifest(path)
        return PipelineCheckpoint(path, int(manifest["partitions"]),
                                  bool(manifest["options"]["detectors"]))

    def read(self, epoch: int) -> tuple[str, dict, EpochOutput]:
        """(pipeline checkpoint path: a file, or a distributed pipeline's directory; service
        state; the epoch's outputs)."""
        path = self.path(epoch)
        state = self._state(epoch)
        tables = {name: pd.read_feather(os.path.join(path, f"{name}.arrow")) for name in OUTPUT_TABLES}
        out = EpochOutput(epoch=epoch, watermark=state["watermark"],
                          closed_before=state["closed_before"],
                          source_positions=state["source_positions"], **tables)
        return self.pipeline_of(epoch).path, state, out

    def prune(self, keep_from: int) -> None:
        """Deletes checkpoints older than ``keep_from`` (once every sink committed it): the
        epoch directory first, so that a crash in between leaves a leftover, never an epoch
        without its pipeline state."""
        for epoch in self.epochs():
            if epoch < keep_from:
                shutil.rmtree(self.path(epoch), ignore_errors=True)
                shutil.rmtree(self.pipeline_path(epoch), ignore_errors=True)
