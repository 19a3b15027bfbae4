"""Sinks for ``cusense serve``: PostgreSQL, the Parquet archive, line protocol."""
from .base import EpochOutput, Sink, SinkUnavailableError

_LAZY = {"PostgresSink": ".postgres", "ParquetArchive": ".parquet",
         "LineProtocolSink": ".lineprotocol"}


def __getattr__(name):
    # Database and file-format clients are optional dependencies: import them only when asked for.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EpochOutput", "Sink", "SinkUnavailableError", *_LAZY]
