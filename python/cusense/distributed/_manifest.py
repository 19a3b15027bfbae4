"""The files of a distributed checkpoint: one directory holding a manifest and, per cut, one
checkpoint file per partition (plain ``cusense.Pipeline`` checkpoints) and the outputs not yet
polled. A cut's files are written first under names of their own; the
manifest, replaced atomically last, is what makes a cut the directory's checkpoint."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import uuid
from typing import Any

import numpy as np

from .. import _core, detectors as _detectors
from .._pipeline import Rolling, Session, Sliding, Tumbling, Window

FORMAT = "cusense-distributed-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
_CUT_FILE = re.compile(r"^cut-([0-9a-f]{16})-")


def new_cut_id() -> str:
    return uuid.uuid4().hex[:16]


def partition_file(cut: str, p: int, n: int) -> str:
    return f"cut-{cut}-part-{p:05d}-of-{n:05d}.ckpt"


def outputs_file(cut: str) -> str:
    return f"cut-{cut}-outputs.npz"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(directory: str, name: str, data: bytes) -> dict[str, Any]:
    """Writes ``data`` to ``directory/name`` (fsync'ed); its entry for the manifest."""
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"file": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_arrays(directory: str, name: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    return {"file": name, "bytes": os.path.getsize(path), "sha256": sha256_of(path)}


def read_checked(directory: str, entry: dict[str, Any]) -> bytes:
    """The bytes of a manifest entry's file, checked against its size and checksum."""
    path = os.path.join(directory, entry["file"])
    if not os.path.isfile(path):
        raise _core.CheckpointError(f"distributed checkpoint {directory!r}: missing file {entry['file']!r}")
    with open(path, "rb") as f:
        data = f.read()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _core.CheckpointError(f"distributed checkpoint {directory!r}: file {entry['file']!r} "
                                    "is corrupted (size or checksum mismatch)")
    return data


def read_arrays(directory: str, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    import io
    with np.load(io.BytesIO(read_checked(directory, entry)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    """Replaces the manifest atomically (temporary file, fsync, rename, fsync of the directory),
    then removes the files of other cuts."""
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, MANIFEST))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    remove_other_cuts(directory, manifest["cut"])


def remove_other_cuts(directory: str, keep: str) -> None:
    for name in os.listdir(directory):
        m = _CUT_FILE.match(name)
        if m and m.group(1) != keep:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(os.fspath(directory), MANIFEST)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no distributed checkpoint at {directory!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no distributed checkpoint at {directory!r} (no {MANIFEST})")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise _core.CheckpointError(f"distributed checkpoint {directory!r}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _core.CheckpointError(f"{path!r} is not a cusense distributed checkpoint manifest")
    if manifest.get("version") != VERSION:
        raise _core.CheckpointError(f"{path!r}: unsupported distributed checkpoint version "
                                    f"{manifest.get('version')!r} (this cusense reads {VERSION})")
    return manifest


# -- options as JSON ---------------------------------------------------------------------------

_WINDOW_CLASSES: dict[str, type] = {"tumbling": Tumbling, "sliding": Sliding, "session": Session,
                                    "rolling": Rolling}


def window_to_json(window: Window | None) -> dict[str, Any] | None:
    if window is None:
        return None
    kind = {Tumbling: "tumbling", Sliding: "sliding", Session: "session", Rolling: "rolling"}[type(window)]
    return {"kind": kind, **dataclasses.asdict(window)}


def window_from_json(data: dict[str, Any] | None) -> Window | None:
    if data is None:
        return None
    fields = dict(data)
    cls = _WINDOW_CLASSES[fields.pop("kind")]
    window: Window = cls(**fields)
    return window


def detector_to_json(d: _detectors.Detector) -> dict[str, Any]:
    assert dataclasses.is_dataclass(d)
    return {"class": type(d).__name__, **dataclasses.asdict(d)}


def detector_from_json(data: dict[str, Any]) -> _detectors.Detector:
    fields = dict(data)
    cls = getattr(_detectors, fields.pop("class"))
    detector: _detectors.Detector = cls(**fields)
    return detector
