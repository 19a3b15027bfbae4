"""How a run is measured: wall and process CPU time of repeated runs, the peak host and device
memory they add, and the host memory left (runs that would not fit are skipped)."""
from __future__ import annotations

import gc
import resource
import sys
import time
from typing import Callable


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class HostPeak:
    """Peak resident memory added while a block runs: resets the kernel's high-water mark
    (/proc/self/clear_refs, Linux) and reads VmHWM; elsewhere falls back to the ru_maxrss
    growth, which only sees new process-wide peaks."""

    def __enter__(self):
        gc.collect()
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        self.base_kb = _proc_status_kb("VmRSS") or 0
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        hwm = _proc_status_kb("VmHWM") if self.reset else None
        if hwm is not None:
            self.peak_mb = max(0, hwm - self.base_kb) / 1024
        else:
            self.peak_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.ru0) / 1024
        return False


def _device_used_bytes() -> int | None:
    """Bytes in use on the current CUDA device (cudaMemGetInfo through CuPy or PyTorch)."""
    try:
        import cupy as cp

        free, total = cp.cuda.runtime.memGetInfo()
        return int(total - free)
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return int(total - free)
    except Exception:  # noqa: BLE001
        pass
    return None


def free_gpu_pools():
    for mod in ("cupy", "torch"):
        if mod in sys.modules:
            try:
                if mod == "cupy":
                    sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
                else:
                    sys.modules["torch"].cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass


def timed(fn: Callable, repeats: int, budget_s: float, gpu: bool):
    """Runs fn up to `repeats` times (stopping once `budget_s` is spent after the first run);
    returns (last result, list of (wall, process CPU) seconds, host peak MB, device peak MB or
    None). CPU seconds cover every thread of the process (spinning worker threads included)."""
    times, result = [], None
    dev0 = _device_used_bytes() if gpu else None
    dev_peak = 0
    with HostPeak() as hp:
        for i in range(repeats):
            result = None
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            result = fn()
            times.append((time.perf_counter() - t, time.process_time() - c))
            if dev0 is not None:
                used = _device_used_bytes()
                if used is not None:
                    dev_peak = max(dev_peak, used - dev0)
            if sum(w for w, _ in times) > budget_s:
                break
    return result, times, hp.peak_mb, (dev_peak / 2**20 if dev0 is not None else None)


def mem_available_mb() -> float | None:
    v = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    v = int(line.split()[1]) / 1024
    except OSError:
        pass
    return v


# Rough peak bytes per record, used to skip runs that would not fit in host memory.
BYTES_PER_RECORD = {"cusense": 40, "numpy": 120, "pandas": 200, "polars": 120, "cupy": 60, "torch": 80}
