"""Making file-system changes durable: a renamed or written file survives a crash only once the
file and its directory are fsync'ed."""
from __future__ import annotations

import os


def fsync_directory(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
