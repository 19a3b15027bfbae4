"""The ``cusense serve`` configuration: a TOML file (or the same structure as a dict).

Every section and option is described in docs/service.md; :func:`load_config` checks them all
up front and names the offending option, so a typo fails at start-up rather than mid-run.
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass

from .._time import to_nanoseconds

if sys.version_info >= (3, 11):
    import tomllib
else:                         # Python 3.10: the same parser, from PyPI
    import tomli as tomllib


class ConfigError(ValueError):
    """The configuration is invalid; the message names the option."""


_SOURCE_TYPES = ("mqtt", "kafka")
_SINK_TYPES = ("postgres", "parquet", "lineprotocol")
_WINDOWS = ("tumbling", "sliding", "session", "rolling", "none")
#: The options of the ``[pipeline]`` table; anything else is refused (a misspelt ``workers``
#: would otherwise run the in-process pipeline without a word).
PIPELINE_KEYS = ("window", "size", "slide", "offset", "gap", "n", "min_periods", "aggs",
                 "max_out_of_orderness", "allowed_lateness", "backend", "max_open_windows",
                 "max_detector_keys", "memory_budget_bytes", "detectors", "workers", "ray_address")


@dataclass
class ServiceConfig:
    """The parsed configuration."""
    source: dict
    pipeline: dict
    sinks: list[dict]
    checkpoint_dir: str
    checkpoint_interval_ns: int
    max_messages: int = 10_000
    max_wait_ns: int = 50_000_000
    max_epoch_records: int = 2_000_000
    status_topic: str | None = None
    alarm_hold_ns: int = 300_000_000_000
    metrics_port: int | None = None
    progress: bool | None = None
    #: ``[pipeline] workers``: 1 runs the pipeline in the service process; N >= 2 runs it as a
    #: ``cusense.distributed.Pipeline`` with N partitions (Ray actors).
    workers: int = 1
    #: ``[pipeline] ray_address``: the Ray cluster of the workers (None: a local Ray instance
    #: started inside the service process).
    ray_address: str | None = None


def _section(cfg: dict, name: str, required: bool = False) -> dict:
    value = cfg.get(name)
    if value is None:
        if required:
            raise ConfigError(f"[{name}] section is missing")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"[{name}] must be a table, got {type(value).__name__}")
    return value


def _duration(section: str, table: dict, key: str, default, positive: bool = False) -> int:
    try:
        ns = to_nanoseconds(table.get(key, default), f"{section}.{key}")
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if ns < 0 or (positive and ns == 0):
        raise ConfigError(f"{section}.{key} must be {'positive' if positive else '>= 0'}, "
                          f"got {table.get(key)!r}")
    return ns


def _positive_int(section: str, table: dict, key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{section}.{key} must be a positive integer, got {value!r}")
    return value


def load_config(config) -> ServiceConfig:
    """A :class:`ServiceConfig` from a TOML path or a dict. Relative paths in the file (the
    checkpoint directory, a Parquet root) are taken relative to the file's directory."""
    base = os.getcwd()
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        cfg = _read_toml(path)
        base = os.path.dirname(os.path.abspath(path))
    elif isinstance(config, dict):
        cfg = copy.deepcopy(config)
    else:
        raise ConfigError(f"config must be a TOML path or a dict, got {type(config).__name__}")

    known = {"source", "batch", "pipeline", "sinks", "checkpoint", "status", "metrics", "service"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(known)}")

    source = dict(_section(cfg, "source", required=True))
    if source.get("type") not in _SOURCE_TYPES:
        raise ConfigError(f"source.type must be one of {_SOURCE_TYPES}, got {source.get('type')!r}")
    if "topic_template" not in source:
        raise ConfigError("source.topic_template is missing (e.g. 'fleet/{key}/{channel}')")

    pipeline = dict(_section(cfg, "pipeline", required=True))
    window = pipeline.get("window", "tumbling")
    if window not in _WINDOWS:
        raise ConfigError(f"pipeline.window must be one of {_WINDOWS}, got {window!r}")
    unknown = sorted(set(pipeline) - set(PIPELINE_KEYS))
    if unknown:
        raise ConfigError(f"pipeline.{unknown[0]} is not an option of [pipeline]; known: "
                          f"{', '.join(PIPELINE_KEYS)}")
    workers = _positive_int("pipeline", pipeline, "workers", 1)
    ray_address = pipeline.get("ray_address")
    if ray_address is not None:
        if not isinstance(ray_address, str) or not ray_address:
            raise ConfigError(f"pipeline.ray_address must be a Ray address (a string such as "
                              f"'auto' or 'head-node:6379'), got {ray_address!r}")
        if workers < 2:
            raise ConfigError("pipeline.ray_address needs pipeline.workers >= 2 (with workers = 1 "
                              "the pipeline runs in the service process, without Ray)")
    for cap in ("max_open_windows", "max_detector_keys", "memory_budget_bytes"):
        if workers >= 2 and pipeline.get(cap, 0):
            raise ConfigError(f"pipeline.{cap} is not supported with pipeline.workers >= 2 "
                              "(a cap per worker would refuse a batch in some workers only)")
    pipeline.pop("workers", None)
    pipeline.pop("ray_address", None)

    sinks = cfg.get("sinks", [])
    if not isinstance(sinks, list) or not all(isinstance(s, dict) for s in sinks):
        raise ConfigError("sinks must be an array of tables ([[sinks]])")
    sinks = [dict(s) for s in sinks]
    for i, sink in enumerate(sinks):
        if sink.get("type") not in _SINK_TYPES:
            raise ConfigError(f"sinks[{i}].type must be one of {_SINK_TYPES}, got {sink.get('type')!r}")
        for key in ("root", "target"):
            if key in sink and isinstance(sink[key], str) and "://" not in sink[key]:
                sink[key] = os.path.join(base, sink[key])

    checkpoint = _section(cfg, "checkpoint", required=True)
    if "directory" not in checkpoint:
        raise ConfigError("checkpoint.directory is missing")
    batch = _section(cfg, "batch")
    status = _section(cfg, "status")
    metrics = _section(cfg, "metrics")
    service = _section(cfg, "service")
    port = metrics.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536):
        raise ConfigError(f"metrics.port must be a port number, got {port!r}")
    return ServiceConfig(
        source=source, pipeline=pipeline, sinks=sinks,
        checkpoint_dir=os.path.join(base, checkpoint["directory"]),
        checkpoint_interval_ns=_duration("checkpoint", checkpoint, "interval", "1s", positive=True),
        max_messages=_positive_int("batch", batch, "max_messages", 10_000),
        max_wait_ns=_duration("batch", batch, "max_wait", "50ms"),
        max_epoch_records=_positive_int("checkpoint", checkpoint, "max_epoch_records", 2_000_000),
        status_topic=status.get("topic"),
        alarm_hold_ns=_duration("status", status, "alarm_hold", "5min"),
        metrics_port=port,
        progress=service.get("progress"),
        workers=workers,
        ray_address=ray_address,
    )


def _read_toml(path) -> dict:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no configuration file at {path!r}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_pipeline_table(path) -> dict:
    """The ``[pipeline]`` table of a ``cusense serve`` configuration file (``cusense run
    --config`` reads the same table)."""
    return dict(_section(_read_toml(path), "pipeline", required=True))
