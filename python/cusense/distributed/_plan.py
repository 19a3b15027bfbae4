"""Routing: the stable partition hash, and how one batch is split into per-partition parts with
the global watermark steps that reproduce a single pipeline. Pure numpy (no Ray), vectorised:
no Python work per record."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._typing import Column

_INT64_MIN = np.iinfo(np.int64).min


def fmix32(keys: Column) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer of every key (uint32 in, uint32 out, wrapping arithmetic):
    ``h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16``."""
    h = np.array(keys, dtype=np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def partition_of(keys: Column, n: int) -> np.ndarray:
    """The partition (0 to ``n - 1``) that owns each key: ``fmix32(key) % n``.

    ``keys`` are uint32 sensor ids (any integer array within the uint32 range); the result is a
    uint32 array of the same length. The hash is stable across processes, machines, Python and
    numpy versions (it depends only on the key and ``n``), and the C++ checkpoint rekeying uses
    the same function, so a key's partition after a rescale is known in advance."""
    n = int(n)
    if not 1 <= n <= 2**31:
        raise ValueError(f"the number of partitions must lie in [1, 2**31], got {n}")
    k = np.asarray(keys)
    if k.dtype != np.uint32:
        if k.dtype.kind not in "iu":
            raise TypeError(f"keys must be an integer array (uint32 sensor ids), got dtype {k.dtype}")
        if k.size and (k.min() < 0 or k.max() > np.iinfo(np.uint32).max):
            raise ValueError("keys must lie in the uint32 range")
    return fmix32(k.astype(np.uint32, copy=False)) % np.uint32(n)


@dataclass
class Part:
    """The records of one partition in one batch (indices into the batch, ascending) and the
    watermark steps it receives: ``at[s]`` of its records come before step ``s``."""

    index: np.ndarray        # int64 batch indices of the partition's records
    positions: np.ndarray    # int64 stream positions of those records (2 * global index)
    at: np.ndarray           # int64, per step: records of this part processed before it
    watermark: np.ndarray    # int64, per step
    step_position: np.ndarray  # int64, per step: 2 * global index of the raising record + 1


@dataclass
class Plan:
    parts: list[Part | None]  # None: nothing for that partition in this batch
    new_max: int              # running maximum event time after the batch
    steps: int                # watermark steps of the batch (before filtering)


def crossing(prev_wm: int | None, wm: np.ndarray, grids: list[tuple[int, int]]) -> np.ndarray:
    """Mask of the steps whose watermark crosses a boundary ``k * period + phase`` of any grid
    since the step before (the first step is compared with ``prev_wm``; None: always kept)."""
    if wm.size == 0:
        return np.zeros(0, dtype=bool)
    keep = np.zeros(wm.size, dtype=bool)
    for period, phase in grids:
        # The number of boundaries <= wm: floor((wm - phase) / period), in exact integers.
        cell = np.floor_divide(wm - np.int64(phase), np.int64(period))
        before = np.empty_like(cell)
        before[1:] = cell[:-1]
        before[0] = cell[0] - 1 if prev_wm is None else (int(prev_wm) - phase) // period
        keep |= cell != before
    return keep


def plan_batch(part_of: np.ndarray, ts: np.ndarray, first_index: int, prev_max: int | None,
               max_out_of_orderness: int, partitions: int, grids: list[tuple[int, int]] | None,
               prev_wm: int | None) -> Plan:
    """Splits a batch (its records' partitions ``part_of`` and timestamps ``ts``, global indices
    from ``first_index``) into parts with the global watermark steps.

    Record ``g`` gets position ``2 g``; a record raising the running maximum ``M`` is followed by
    a step at position ``2 g + 1`` with watermark ``M - max_out_of_orderness``. Every partition
    gets every step (``grids`` given: only the steps crossing a window boundary), with ``at`` =
    how many of its records come before it."""
    n = ts.size
    ts = ts.astype(np.int64, copy=False)
    if n:
        run = np.maximum.accumulate(ts)
        before = np.empty(n, dtype=np.int64)
        before[0] = _INT64_MIN if prev_max is None else prev_max
        if n > 1:
            np.maximum(run[:-1], before[0], out=before[1:])
        # Timestamps lie within +-2**62, so the first record always raises an unset maximum.
        step_i = np.flatnonzero(ts > before).astype(np.int64)
        new_max = int(max(run[-1], before[0]))
    else:
        step_i = np.zeros(0, dtype=np.int64)
        new_max = prev_max if prev_max is not None else _INT64_MIN
    total_steps = int(step_i.size)
    step_wm = ts[step_i] - np.int64(max_out_of_orderness)
    if grids:
        keep = crossing(prev_wm, step_wm, grids)
        step_i, step_wm = step_i[keep], step_wm[keep]
    step_pos = 2 * (np.int64(first_index) + step_i) + 1

    if partitions == 1:
        index_of = [np.arange(n, dtype=np.int64)]
    else:
        # A stable sort by partition (a radix sort for the small integer types) keeps each
        # part's records in arrival order.
        small = part_of.astype(np.uint8 if partitions <= 256 else
                               np.uint16 if partitions <= 65536 else np.uint32, copy=False)
        order = np.argsort(small, kind="stable").astype(np.int64, copy=False)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(small, minlength=partitions))))
        index_of = [order[bounds[p]:bounds[p + 1]] for p in range(partitions)]
    parts: list[Part | None] = []
    for idx in index_of:
        if idx.size == 0 and step_i.size == 0:
            parts.append(None)
            continue
        at = np.searchsorted(idx, step_i, side="right").astype(np.int64, copy=False)
        parts.append(Part(index=idx, positions=2 * (np.int64(first_index) + idx), at=at,
                          watermark=step_wm, step_position=step_pos))
    return Plan(parts=parts, new_max=new_max, steps=total_steps)
