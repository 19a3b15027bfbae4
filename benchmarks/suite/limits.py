"""Hardware limits (GPU only): host-to-device and device-to-device copy bandwidth, the ceiling for
a pipeline fed from host memory."""
from __future__ import annotations

import math
import time

import numpy as np


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> dict | None:
    """Pinned and pageable host->device and device->device copy bandwidth (bytes/s), measured
    with PyTorch (CuPy as fallback). None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return _copy_bandwidth_torch(torch, nbytes, repeats)
    except ImportError:
        pass
    try:
        import cupy as cp

        if cp.cuda.runtime.getDeviceCount() > 0:
            return _copy_bandwidth_cupy(cp, nbytes, repeats)
    except Exception:  # noqa: BLE001
        pass
    return None


def _best_rate(copy, sync, nbytes, repeats, traffic=1):
    copy()
    sync()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        copy()
        sync()
        best = min(best, time.perf_counter() - t)
    return traffic * nbytes / best


def _copy_bandwidth_torch(torch, nbytes, repeats):
    sync = torch.cuda.synchronize
    pinned = torch.ones(nbytes, dtype=torch.uint8).pin_memory()
    pageable = torch.ones(nbytes, dtype=torch.uint8)
    d1 = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    d2 = torch.empty_like(d1)
    out = {"tool": f"torch {torch.__version__}", "bytes": nbytes,
           "h2d_pinned": _best_rate(lambda: d1.copy_(pinned, non_blocking=True), sync, nbytes, repeats),
           "h2d_pageable": _best_rate(lambda: d1.copy_(pageable), sync, nbytes, repeats),
           # a device copy reads and writes every byte: count both
           "d2d": _best_rate(lambda: d2.copy_(d1), sync, nbytes, repeats, traffic=2)}
    del pinned, pageable, d1, d2
    torch.cuda.empty_cache()
    return out


def _copy_bandwidth_cupy(cp, nbytes, repeats):
    sync = cp.cuda.get_current_stream().synchronize
    mem = cp.cuda.alloc_pinned_memory(nbytes)
    pinned = np.frombuffer(mem, np.uint8, nbytes)
    pinned[:] = 1
    pageable = np.ones(nbytes, np.uint8)
    d1 = cp.empty(nbytes, cp.uint8)
    d2 = cp.empty_like(d1)
    out = {"tool": f"cupy {cp.__version__}", "bytes": nbytes,
           "h2d_pinned": _best_rate(lambda: d1.set(pinned), sync, nbytes, repeats),
           "h2d_pageable": _best_rate(lambda: d1.set(pageable), sync, nbytes, repeats),
           "d2d": _best_rate(lambda: d2.__setitem__(slice(None), d1), sync, nbytes, repeats, traffic=2)}
    del d1, d2
    cp.get_default_memory_pool().free_all_blocks()
    return out
