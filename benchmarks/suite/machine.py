"""Where a report was measured: CPU, memory, GPU, library versions and the git commit."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from .peers import peer_available


def _run(cmd, cwd=None) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "gpu": None}
    versions = {}
    for mod in ("numpy", "pandas", "polars", "cupy", "torch"):
        m = sys.modules.get(mod)
        if m is None and peer_available(mod) is None:
            m = sys.modules.get(mod)
        if m is not None:
            versions[mod] = getattr(m, "__version__", "?")
    try:
        import cusense

        versions["cusense"] = cusense.__version__
        devs = cusense.devices()
        info["cusense_cuda_built"] = bool(cusense._core.cuda_built())
    except ImportError:
        devs = []
    info["versions"] = versions
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    if smi:
        name, driver, mem = [x.strip() for x in smi.splitlines()[0].split(",")]
        info["gpu"] = {"name": name, "driver": driver, "memory": mem, "count": len(smi.splitlines())}
    elif devs:
        d = devs[0]
        info["gpu"] = {"name": d.name, "driver": None, "memory": f"{d.total_memory >> 20} MiB",
                       "count": len(devs)}
    return info


def git_commit() -> str | None:
    if os.environ.get("CUSENSE_COMMIT"):  # a copy of the sources without its git history
        return os.environ["CUSENSE_COMMIT"]
    here = Path(__file__).resolve().parent
    for cwd in (Path.cwd(), here):
        sha = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=cwd)
        if sha:
            dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd)
            return sha + ("-dirty" if dirty else "")
    return None


def machine_slug(info: dict) -> str:
    if info.get("gpu"):
        name = info["gpu"]["name"]
    else:
        name = f"{info['cpu']}-{info['cores']}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
