"""Broker payloads to readings: topic templates, JSON, InfluxDB line protocol and binary batches.

``Decoder.decode`` turns a list of ``Message`` into ``Readings`` (uint32 keys from a
``KeyDictionary``, int64 ns event times, float64 values) and dead letters. It never raises on bad
input and never drops a reading silently: everything that cannot become a reading becomes a
``DeadLetter`` whose reason says why. See docs/payloads.md for the formats.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re

import numpy as np
import pandas as pd
from typing import Any

from .base import DeadLetter, Message, Readings
from .keydict import KeyDictionary

BINARY_MAGIC = b"CSB1"
_BINARY_HEADER_BYTES = 8
#: One binary record: event time (int64 ns) then value (float64), both little-endian, no padding.
_BINARY_RECORD = np.dtype([("ts", "<i8"), ("value", "<f8")])

_UNIT_NS = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
_FORMATS = ("auto", "json", "influx", "binary")
_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
# Python ints above this do not fit a float64 (float() raises OverflowError).
_FLOAT64_MAX_INT = int(np.finfo(np.float64).max)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_MISSING = object()


# --------------------------------------------------------------------------------------------
# Topic templates


class TopicTemplate:
    """An MQTT-style topic template: ``plant/+/sensor/{key}/{channel}``, ``fleet/{key}/#``.

    Levels are separated by ``/``. ``+`` matches any one level, ``#`` (last level only) matches
    the remaining levels (zero or more, as in MQTT), ``{key}`` (required) captures the device id
    and ``{channel}`` (optional) the channel, one non-empty level each; other levels must match
    literally. Topics starting with ``$`` match only a template whose first level is literal
    (MQTT keeps ``$SYS/...`` away from wildcards)."""

    _CACHE_LIMIT = 100_000  # topics repeat; bound the cache in case a client invents them

    def __init__(self, template: str):
        if not isinstance(template, str) or not template:
            raise ValueError(f"topic template must be a non-empty string, got {template!r}")
        levels = template.split("/")
        self.template = template
        self._ends_with_hash = levels[-1] == "#"
        self._fixed_levels = len(levels) - self._ends_with_hash
        self._literals: list[tuple[int, str]] = []
        key_level: int | None = None
        self._channel_level: int | None = None
        for i, level in enumerate(levels):
            if level == "#":
                if i != len(levels) - 1:
                    raise ValueError(f"topic template {template!r}: '#' must be the last level")
            elif level == "{key}":
                if key_level is not None:
                    raise ValueError(f"topic template {template!r}: '{{key}}' appears twice")
                key_level = i
            elif level == "{channel}":
                if self._channel_level is not None:
                    raise ValueError(f"topic template {template!r}: '{{channel}}' appears twice")
                self._channel_level = i
            elif level != "+":
                if any(c in level for c in "+#{}"):
                    raise ValueError(
                        f"topic template {template!r}: level {level!r} mixes text with a wildcard "
                        "or placeholder; '+', '#', '{key}' and '{channel}' must fill a whole level")
                self._literals.append((i, level))
        if key_level is None:
            raise ValueError(f"topic template {template!r} has no '{{key}}' level (the device id)")
        self._key_level: int = key_level
        self._first_level_literal = self._literals[:1] == [(0, levels[0])]
        self._levels = levels
        self._cache: dict[str, tuple[str, str | None] | None] = {}

    def __repr__(self) -> str:
        return f"TopicTemplate({self.template!r})"

    def __str__(self) -> str:
        return self.template

    def subscription(self) -> str:
        """The MQTT subscription filter: the template with ``{key}``/``{channel}`` as ``+``."""
        return "/".join("+" if level in ("{key}", "{channel}") else level for level in self._levels)

    def match(self, topic: str) -> tuple[str, str | None] | None:
        """``(device, channel)`` captured from ``topic`` (channel None without ``{channel}``), or
        None when the topic does not match."""
        result: Any = self._cache.get(topic, _MISSING)
        if result is _MISSING:
            result = self._match_uncached(topic)
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[topic] = result
        return result

    def _match_uncached(self, topic: str) -> tuple[str, str | None] | None:
        if not isinstance(topic, str):
            return None
        levels = topic.split("/")
        if len(levels) < self._fixed_levels or (len(levels) > self._fixed_levels
                                                and not self._ends_with_hash):
            return None
        if topic.startswith("$") and not self._first_level_literal:
            return None
        for i, literal in self._literals:
            if levels[i] != literal:
                return None
        device = levels[self._key_level]
        channel = None if self._channel_level is None else levels[self._channel_level]
        if not device or channel == "":
            return None
        return device, channel


# --------------------------------------------------------------------------------------------
# Binary batches


def encode_binary_batch(timestamps, values) -> bytes:
    """A binary batch payload: ``b"CSB1"``, uint32 LE record count, then per record int64 LE event
    time (ns since the epoch) and float64 LE value. ``timestamps`` are int64 ns or datetime64."""
    ts = np.asarray(timestamps)
    if ts.dtype.kind == "M":
        ts = ts.astype("datetime64[ns]").view(np.int64)
    elif ts.dtype.kind not in "iu" and ts.size:  # np.asarray([]) is float64
        raise TypeError(f"timestamps must be int64 nanoseconds or datetime64, got dtype {ts.dtype}")
    vals = np.asarray(values, dtype=np.float64)
    if ts.ndim != 1 or vals.ndim != 1 or len(ts) != len(vals):
        raise ValueError(f"timestamps and values must be 1-d of equal length, got shapes "
                         f"{ts.shape} and {vals.shape}")
    if len(ts) > 0xFFFF_FFFF:
        raise ValueError(f"a binary batch holds at most {0xFFFF_FFFF} records, got {len(ts)}")
    records = np.empty(len(ts), dtype=_BINARY_RECORD)
    records["ts"] = ts
    records["value"] = vals
    return BINARY_MAGIC + len(ts).to_bytes(4, "little") + records.tobytes()


# --------------------------------------------------------------------------------------------
# Timestamps


_ISO_FRACTION = re.compile(r"[.,](\d+)")


def _iso_to_ns(text: str) -> int:
    """ISO-8601 date/time to ns since the epoch; naive times are UTC. Fractions keep up to 9
    digits (datetime alone stops at microseconds). Raises ValueError."""
    fraction_ns = 0
    fraction = _ISO_FRACTION.search(text)
    if fraction:
        fraction_ns = int(fraction.group(1)[:9].ljust(9, "0"))
        text = text[:fraction.start()] + text[fraction.end():]
    if text.endswith(("Z", "z")):  # Python 3.10's fromisoformat does not know "Z"
        text = text[:-1] + "+00:00"
    moment = _dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + fraction_ns


def _float_to_ns(seconds_like: float, unit_ns: int) -> int:
    """A finite float in the given unit as int ns, exact for the float's own digits (splitting
    off the integer part keeps ``1700000000.123`` s from losing ns to float64 rounding)."""
    whole = math.floor(seconds_like)
    return whole * unit_ns + round((seconds_like - whole) * unit_ns)


def _time_bound(bound, what: str) -> tuple[int, str]:
    if isinstance(bound, str):
        try:
            return _iso_to_ns(bound), bound
        except ValueError:
            raise ValueError(f"valid_time {what} bound {bound!r} is not an ISO-8601 date/time") from None
    if isinstance(bound, (int, np.integer)) and not isinstance(bound, bool):
        return int(bound), str(int(bound))
    stamp = pd.Timestamp(bound)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.value), stamp.isoformat()


# --------------------------------------------------------------------------------------------
# Influx line protocol

_INFLUX_BOOLEANS = frozenset(["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"])
# The escape-aware grammar, used only for lines holding a backslash or a double quote.
_INFLUX_NAME = r'(?:[^\\,= ]|\\.)+'                         # tag key/value, field key
_INFLUX_FIELD_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^,"\\ ]+)'
_INFLUX_LINE = re.compile(
    rf'((?:[^\\, ]|\\.)+)((?:,{_INFLUX_NAME}={_INFLUX_NAME})*)'
    rf' +({_INFLUX_NAME}={_INFLUX_FIELD_VALUE}(?:,{_INFLUX_NAME}={_INFLUX_FIELD_VALUE})*)'
    r'(?: +(\S+))? *')
_INFLUX_TAG = re.compile(rf',({_INFLUX_NAME})=({_INFLUX_NAME})')
_INFLUX_FIELD = re.compile(rf'({_INFLUX_NAME})=({_INFLUX_FIELD_VALUE})')
_INFLUX_ESCAPE = re.compile(r'\\([\\,= "])')


class _LineError(ValueError):
    """A line protocol line that cannot be read."""


def _influx_unescape(text: str) -> str:
    return _INFLUX_ESCAPE.sub(r"\1", text) if "\\" in text else text


def _split_influx_line(line: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str | None]:
    """``(tags, fields, timestamp text)`` of one line, names unescaped; field values raw."""
    if "\\" not in line and '"' not in line:
        parts = line.split()
        if len(parts) not in (2, 3):
            raise _LineError("expected 'measurement[,tag=value...] field=value[,...] [timestamp]'")
        tags = []
        for tag in parts[0].split(",")[1:]:
            name, _, value = tag.partition("=")
            if not name or not value:
                raise _LineError(f"tag {tag!r} is not name=value")
            tags.append((name, value))
        fields = []
        for field in parts[1].split(","):
            name, _, value = field.partition("=")
            if not name or not value:
                raise _LineError(f"field {field!r} is not name=value")
            fields.append((name, value))
        return tags, fields, parts[2] if len(parts) == 3 else None
    match = _INFLUX_LINE.fullmatch(line)
    if match is None:
        raise _LineError("expected 'measurement[,tag=value...] field=value[,...] [timestamp]' "
                         "(with quotes and backslash escapes per the line protocol)")
    tags = [(_influx_unescape(k), _influx_unescape(v)) for k, v in _INFLUX_TAG.findall(match.group(2))]
    fields = [(_influx_unescape(k), v) for k, v in _INFLUX_FIELD.findall(match.group(3))]
    return tags, fields, match.group(4)


def _influx_number(name: str, text: str) -> float | None:
    """A numeric field value as a Python number; None for string and boolean fields (skipped)."""
    if text[0] == '"' or text in _INFLUX_BOOLEANS:
        return None
    try:
        if text[-1] in "iu":
            number = int(text[:-1])
            if abs(number) > _FLOAT64_MAX_INT:
                raise ValueError
            return number
        return float(text)
    except ValueError:
        raise _LineError(f"field {name!r}: {text!r} is not a number, boolean or quoted string") from None


# --------------------------------------------------------------------------------------------
# The decoder


def _is_float_text(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _is_number(value) -> bool:
    kind = type(value)
    return kind is float or (kind is int and -_FLOAT64_MAX_INT <= value <= _FLOAT64_MAX_INT)


def _name_field(obj: dict, field: str, default: str) -> str:
    """``obj[field]`` as a device/channel name: strings as they are, integers as decimal text."""
    value = obj.get(field, default)
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise _LineError(f"{field!r} must be a string, got {_json_type(value)}")


class _Batch:
    """What one ``decode`` call collects before the arrays are built: per reading (from JSON and
    line protocol) parallel lists, whole binary batches as arrays, and dead letters."""

    def __init__(self):
        self.ts_raw: list[int] = []        # in the decoder's timestamp unit; 0 where overridden
        self.ts_override: list[tuple[int, int | None, object]] = []  # (reading, ns or None, as sent)
        self.values: list[float] = []
        # Readings carry a small per-call code of their (device, channel) pair; pairs become
        # dictionary keys only at the end, for readings that survive the checks.
        self.pair_codes: list[int] = []
        self.pairs: list[tuple[str, str]] = []
        self.code_of_pair: dict[tuple[str, str], int] = {}
        self.message: list[int] = []       # index of the reading's message in the decode call
        self.item: list[int] = []          # JSON array element / line index, -1 for the whole payload
        self.binary: list[tuple[int, int, np.ndarray]] = []  # (message, pair code, records)
        self.dead: list[tuple[int, int, DeadLetter]] = []          # (message, item, dead letter)

    def produced(self) -> int:
        return len(self.values) + len(self.dead)

    def code(self, pair: tuple[str, str]) -> int:
        code = self.code_of_pair.get(pair)
        if code is None:
            code = self.code_of_pair[pair] = len(self.pairs)
            self.pairs.append(pair)
        return code


class Decoder:
    """Turns broker messages into readings; see the module and docs/payloads.md.

    ``topic_template``: a ``TopicTemplate`` or its text. ``payload_format``: "auto" (sniffed per
    message), "json", "influx" or "binary". ``timestamp_unit`` ("ns", "us", "ms", "s"): unit of
    numeric timestamps in JSON and line protocol (binary batches are always ns). ``keys``: the
    ``KeyDictionary`` to use (a new one by default; restore it from the checkpoint). Payloads
    over ``max_payload_bytes`` are dead-lettered unread. ``device_tag``: the line protocol tag
    holding the device id. ``default_channel``: the channel when neither the topic nor the
    payload names one. ``valid_time``: ``(start, end)`` half-open range of plausible event times
    (ISO strings, int ns or datetimes); readings outside are dead-lettered."""

    def __init__(self, topic_template, payload_format: str = "auto", timestamp_unit: str = "ns",
                 keys: KeyDictionary | None = None, max_payload_bytes: int = 1 << 20,
                 device_tag: str = "device", default_channel: str = "value",
                 valid_time=("1990-01-01", "2100-01-01")):
        self.template = (topic_template if isinstance(topic_template, TopicTemplate)
                         else TopicTemplate(topic_template))
        if payload_format not in _FORMATS:
            raise ValueError(f"payload_format must be one of {_FORMATS}, got {payload_format!r}")
        if timestamp_unit not in _UNIT_NS:
            raise ValueError(f"timestamp_unit must be one of {tuple(_UNIT_NS)}, got {timestamp_unit!r}")
        if keys is not None and not isinstance(keys, KeyDictionary):
            raise TypeError(f"keys must be a KeyDictionary, got {type(keys).__name__}")
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) \
                or max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}")
        for name, value in (("device_tag", device_tag), ("default_channel", default_channel)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(valid_time, (tuple, list)) or len(valid_time) != 2:
            raise ValueError(f"valid_time must be a (start, end) pair, got {valid_time!r}")
        (self._time_lo, lo_text), (self._time_hi, hi_text) = (_time_bound(valid_time[0], "start"),
                                                              _time_bound(valid_time[1], "end"))
        if self._time_lo >= self._time_hi:
            raise ValueError(f"valid_time start {lo_text} is not before end {hi_text}")
        self._time_range_text = f"{lo_text}..{hi_text}"
        self.payload_format = payload_format
        self.timestamp_unit = timestamp_unit
        self._unit_ns = _UNIT_NS[timestamp_unit]
        self.keys = keys if keys is not None else KeyDictionary()
        self.max_payload_bytes = max_payload_bytes
        self.device_tag = device_tag
        self.default_channel = default_channel
        self._scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner
        self._topic_pairs: dict[str, tuple[str, str] | None] = {}

    # -- the hot loop -------------------------------------------------------------------------

    def decode(self, messages: list[Message]) -> Readings:
        """Readings of ``messages`` (in message order) plus dead letters (ordered by message)."""
        if not isinstance(messages, list):
            messages = list(messages)
        batch = _Batch()
        # Locals: this loop runs once per message on the service's hot path.
        topic_pairs_get, max_bytes = self._topic_pairs.get, self.max_payload_bytes
        forced_format, scan_json, unit_ns = self.payload_format, self._scan_json, self._unit_ns
        ts_raw, ts_override, values = batch.ts_raw, batch.ts_override, batch.values
        pair_codes, code_of_pair_get = batch.pair_codes, batch.code_of_pair.get
        message_of, item_of = batch.message, batch.item
        for m, message in enumerate(messages):
            pair: Any = topic_pairs_get(message.topic, _MISSING)
            if pair is _MISSING:
                pair = self._topic_pair(message.topic)
            if pair is None:
                self._dead(batch, m, -1, message, message.payload,
                           f"topic {message.topic!r} does not match template {self.template.template!r}")
                continue
            payload = message.payload
            if not isinstance(payload, (bytes, bytearray)):
                self._dead(batch, m, -1, message, b"", f"payload is {type(payload).__name__}, not bytes")
                continue
            if len(payload) > max_bytes:
                self._dead(batch, m, -1, message, payload, f"payload of {len(payload)} bytes exceeds "
                           f"max_payload_bytes={max_bytes}")
                continue
            if not payload:
                self._dead(batch, m, -1, message, payload, "empty payload")
                continue
            if forced_format != "auto":
                payload_format = forced_format
            elif payload[0] == 123:  # "{": the common case, no need to look further
                payload_format = "json"
            else:
                payload_format = _sniff(payload)
            if payload_format == "binary":
                self._decode_binary(batch, m, message, pair)
                continue
            try:
                text = payload.decode()
            except UnicodeDecodeError as error:
                self._dead(batch, m, -1, message, payload, f"payload is not valid UTF-8 "
                           f"({error.reason} at byte {error.start})")
                continue
            if payload_format == "influx":
                self._decode_influx(batch, m, message, text, pair)
                continue
            # JSON. Fast path: one object {"ts": int|float, "value": number}, parsed by the C
            # scanner directly (json.loads adds layers and is twice as slow per message).
            obj: Any
            try:
                obj, end = scan_json(text, 0)
            except (StopIteration, ValueError, RecursionError):
                obj, end = None, -1
            if end != len(text):
                self._decode_json_text(batch, m, message, text, pair)
                continue
            if type(obj) is dict and len(obj) == 2:
                ts: Any = obj.get("ts")
                value: Any = obj.get("value")
                ts_type, value_type = type(ts), type(value)
                if (value_type is float or value_type is int and -_FLOAT64_MAX_INT <= value <= _FLOAT64_MAX_INT) \
                        and (ts_type is int or ts_type is float and math.isfinite(ts)):
                    if ts_type is int:
                        ts_raw.append(ts)
                    else:
                        ts_raw.append(0)
                        ts_override.append((len(values), _float_to_ns(ts, unit_ns), ts))
                    values.append(value)
                    code = code_of_pair_get(pair)
                    pair_codes.append(code if code is not None else batch.code(pair))
                    message_of.append(m)
                    item_of.append(-1)
                    continue
            self._decode_json_value(batch, m, message, obj, pair)
        return self._finish(batch, messages)

    def _topic_pair(self, topic: str) -> tuple[str, str] | None:
        """(device, channel) of a topic, the default channel filled in; cached."""
        where = self.template._match_uncached(topic)
        pair = None if where is None else (where[0], where[1] if where[1] is not None
                                           else self.default_channel)
        if len(self._topic_pairs) >= TopicTemplate._CACHE_LIMIT:
            self._topic_pairs.clear()
        self._topic_pairs[topic] = pair
        return pair

    # -- formats ------------------------------------------------------------------------------

    def _decode_json_text(self, batch, m, message, text, pair):
        try:
            obj = json.loads(text)  # also the precise error message for malformed payloads
        except ValueError as error:
            self._dead(batch, m, -1, message, message.payload, f"malformed JSON: {error}")
            return
        except RecursionError:
            self._dead(batch, m, -1, message, message.payload, "malformed JSON: nested too deeply")
            return
        self._decode_json_value(batch, m, message, obj, pair)

    def _decode_json_value(self, batch, m, message, obj, pair):
        if type(obj) is list and obj and self._plain_readings(batch, m, obj, pair):
            return
        before = batch.produced()
        if type(obj) is list:
            for i, element in enumerate(obj):
                reason = self._decode_json_object(batch, m, i, element, pair)
                if reason:
                    self._dead(batch, m, i, message, _json_bytes(element, message.payload),
                               f"element {i}: {reason}")
        else:
            reason = self._decode_json_object(batch, m, -1, obj, pair)
            if reason:
                self._dead(batch, m, -1, message, message.payload, reason)
        if batch.produced() == before:
            self._dead(batch, m, -1, message, message.payload, "no readings in payload")

    def _plain_readings(self, batch, m, elements: list, pair) -> bool:
        """Fast path for the common batched payload, an array of ``{"ts": int, "value": number}``
        objects: the readings are added with list operations instead of one call per element.
        Returns False (nothing added) when any element is anything else; the caller then takes
        the general path, which finds and explains the odd ones."""
        # set(map(type, ...)) runs in C: a fraction of a generator's cost per element.
        if set(map(type, elements)) != {dict} or set(map(len, elements)) != {2}:
            return False
        try:
            stamps = [e["ts"] for e in elements]
            readings = [e["value"] for e in elements]
        except KeyError:
            return False
        if set(map(type, stamps)) != {int}:
            return False
        value_types = set(map(type, readings))
        if not value_types <= {float, int}:
            return False
        if int in value_types and not all(-_FLOAT64_MAX_INT <= v <= _FLOAT64_MAX_INT
                                          for v in readings if type(v) is int):
            return False
        n = len(elements)
        batch.ts_raw.extend(stamps)
        batch.values.extend(readings)
        batch.pair_codes.extend([batch.code(pair)] * n)
        batch.message.extend([m] * n)
        batch.item.extend(range(n))
        return True

    def _decode_json_object(self, batch, m, item, obj, pair) -> str | None:
        """Adds the readings of one JSON object, or returns why it has none (nothing added)."""
        if type(obj) is not dict:
            return f"expected an object with 'ts' and 'value', got {_json_type(obj)}"
        if "ts" not in obj:
            return "missing 'ts'"
        ts = obj["ts"]
        ts_ns = None  # for non-integers: ns now; integers are scaled with the whole batch
        if type(ts) is int:
            pass
        elif type(ts) is float:
            if not math.isfinite(ts):
                return f"timestamp {ts} is not finite"
            ts_ns = _float_to_ns(ts, self._unit_ns)
        elif type(ts) is str:
            try:
                ts_ns = _iso_to_ns(ts)
            except ValueError:
                quoted_number = _is_float_text(ts)
                return (f"timestamp {ts!r} is not an ISO-8601 date/time"
                        + (" (numbers must not be quoted)" if quoted_number else ""))
        else:
            return f"'ts' must be a number or an ISO-8601 string, got {_json_type(ts)}"
        device, channel = pair
        try:
            device = _name_field(obj, "device", device)
            if "values" in obj:
                if "value" in obj:
                    return "has both 'value' and 'values'"
                if "channel" in obj:
                    return "has both 'channel' and 'values' (the keys of 'values' are the channels)"
                readings = obj["values"]
                if type(readings) is not dict or not readings:
                    return "'values' must be a non-empty object of channel: number"
                readings = list(readings.items())
            elif "value" in obj:
                readings = [(_name_field(obj, "channel", channel), obj["value"])]
            else:
                return "missing 'value' (or 'values')"
        except _LineError as error:
            return str(error)
        for name, value in readings:
            if not _is_number(value):
                where = "'value'" if "value" in obj else f"values[{name!r}]"
                shown = repr(value) if type(value) in (int, str) else _json_type(value)
                return f"{where} is not a number: {shown}"
        for name, value in readings:
            batch.ts_raw.append(ts if ts_ns is None else 0)
            if ts_ns is not None:
                batch.ts_override.append((len(batch.values), ts_ns, ts))
            batch.values.append(value)
            batch.pair_codes.append(batch.code((device, name)))
            batch.message.append(m)
            batch.item.append(item)
        return None

    def _decode_influx(self, batch, m, message, text, pair):
        # The field name is the channel: the topic's {channel} does not apply to line protocol.
        before = batch.produced()
        device_tag, code_of_pair_get = self.device_tag, batch.code_of_pair.get
        for i, line in enumerate(text.split("\n")):
            line = line.strip()
            if not line or line[0] == "#":
                continue
            try:
                tags, fields, ts_text = _split_influx_line(line)
                line_device = pair[0]
                for name, value in tags:
                    if name == device_tag:
                        line_device = value
                numbers = []
                for name, raw in fields:
                    try:
                        numbers.append((name, float(raw)))  # most fields: plain floats
                    except ValueError:
                        number = _influx_number(name, raw)  # 40i, 7u, booleans, strings, errors
                        if number is not None:
                            numbers.append((name, number))
                if ts_text is None:
                    raise _LineError("no timestamp (event time is required)")
                try:
                    ts = int(ts_text)
                except ValueError:
                    raise _LineError(f"timestamp {ts_text!r} is not an integer") from None
            except _LineError as error:
                self._dead(batch, m, i, message, line.encode(), f"line {i + 1}: {error}")
                continue
            for name, number in numbers:
                batch.ts_raw.append(ts)
                batch.values.append(number)
                line_pair = (line_device, name)
                code = code_of_pair_get(line_pair)
                batch.pair_codes.append(code if code is not None else batch.code(line_pair))
                batch.message.append(m)
                batch.item.append(i)
        if batch.produced() == before:
            self._dead(batch, m, -1, message, message.payload, "no readings in payload "
                       "(line protocol string and boolean fields are skipped)")

    def _decode_binary(self, batch, m, message, pair):
        payload = message.payload
        if len(payload) < _BINARY_HEADER_BYTES or not payload.startswith(BINARY_MAGIC):
            self._dead(batch, m, -1, message, payload,
                       f"not a binary batch: needs magic {BINARY_MAGIC!r} and a 4-byte count")
            return
        count = int.from_bytes(payload[4:8], "little")
        expected = _BINARY_HEADER_BYTES + count * _BINARY_RECORD.itemsize
        if len(payload) != expected:
            what = "truncated" if len(payload) < expected else "trailing bytes after the records"
            self._dead(batch, m, -1, message, payload, f"binary batch {what}: header says {count} "
                       f"records ({expected} bytes), payload has {len(payload)} bytes")
            return
        if count == 0:
            self._dead(batch, m, -1, message, payload, "no readings in payload (binary batch of 0 records)")
            return
        records = np.frombuffer(payload, dtype=_BINARY_RECORD, count=count, offset=_BINARY_HEADER_BYTES)
        batch.binary.append((m, batch.code(pair), records))

    # -- after the loop: arrays, time range, keys ---------------------------------------------

    def _finish(self, batch: _Batch, messages: list[Message]) -> Readings:
        ts_ns, in_range = self._list_timestamps(batch)
        values: np.ndarray = np.array(batch.values, dtype=np.float64)
        codes: np.ndarray = np.array(batch.pair_codes, dtype=np.int64)
        message: np.ndarray = np.array(batch.message, dtype=np.int64)
        item: np.ndarray = np.array(batch.item, dtype=np.int64)
        ok = in_range
        if batch.binary:
            # All binary records in one go; per batch only their message, pair and record index.
            records = np.concatenate([r for _, _, r in batch.binary])
            lengths = np.array([len(r) for _, _, r in batch.binary])
            binary_ts = records["ts"]
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            ts_ns = np.concatenate([ts_ns, binary_ts])
            ok = np.concatenate([ok, (binary_ts >= self._time_lo) & (binary_ts < self._time_hi)])
            values = np.concatenate([values, records["value"]])
            codes = np.concatenate([codes, np.repeat([c for _, c, _ in batch.binary], lengths)])
            message = np.concatenate([message, np.repeat([m for m, _, _ in batch.binary], lengths)])
            item = np.concatenate([item, np.arange(len(records)) - starts])
        # Readings in message order (the pipeline decides lateness in arrival order). JSON and line
        # protocol readings already are; binary batches were set aside.
        if batch.binary and batch.values and (message[1:] < message[:-1]).any():
            order = np.argsort(message, kind="stable")
            ts_ns, ok, values, message, codes, item = (
                a[order] for a in (ts_ns, ok, values, message, codes, item))
        binary_messages = {m: len(records) for m, _, records in batch.binary}
        if not ok.all():
            raw_of = self._raw_timestamps(batch)
            self._dead_readings(batch, messages, binary_messages, message, item, ~ok,
                                lambda i: self._time_reason(raw_of(i, message[i], item[i])),
                                "timestamps outside the valid time")
            keep = np.flatnonzero(ok)
            ts_ns, values, message, codes, item = (
                a[keep] for a in (ts_ns, values, message, codes, item))
        # Keys for the pairs of the decoded readings, new pairs in order of first appearance.
        # Pair codes were handed out in message order, so unless readings were dropped above,
        # ascending codes are that order already (cheaper than factorize).
        if len(codes) == len(batch.values) + sum(len(r) for _, _, r in batch.binary):
            used = np.zeros(len(batch.pairs), dtype=bool)
            used[codes] = True
            used_codes = np.flatnonzero(used)
        else:
            used_codes = pd.unique(codes)
        key_of_code = np.full(len(batch.pairs), KeyDictionary.FULL, dtype=np.uint32)
        key_of_code[used_codes] = self.keys.ids([batch.pairs[c][0] for c in used_codes.tolist()],
                                                [batch.pairs[c][1] for c in used_codes.tolist()])
        keys = key_of_code[codes]
        no_key = keys == KeyDictionary.FULL
        if no_key.any():
            self._dead_readings(batch, messages, binary_messages, message, item, no_key,
                                lambda i: f"key dictionary is full (max_keys={self.keys.max_keys}): "
                                          f"no key for device {batch.pairs[codes[i]][0]!r} "
                                          f"channel {batch.pairs[codes[i]][1]!r}",
                                "readings without a key")
            keep = np.flatnonzero(~no_key)
            keys, ts_ns, values = keys[keep], ts_ns[keep], values[keep]
        batch.dead.sort(key=lambda entry: entry[:2])
        return Readings(keys=np.ascontiguousarray(keys, dtype=np.uint32),
                        timestamps=np.ascontiguousarray(ts_ns, dtype=np.int64),
                        values=np.ascontiguousarray(values, dtype=np.float64),
                        dead_letters=[dead for _, _, dead in batch.dead])

    def _list_timestamps(self, batch: _Batch) -> tuple[np.ndarray, np.ndarray]:
        """int64 ns and in-range mask of the JSON/line protocol readings."""
        overrides = batch.ts_override
        try:
            raw = np.array(batch.ts_raw, dtype=np.int64)
        except OverflowError:  # an integer beyond int64: out of range whatever the unit
            raw = np.array([t if _INT64_MIN <= t <= _INT64_MAX else 0 for t in batch.ts_raw], np.int64)
            overrides = overrides + [(i, None, t) for i, t in enumerate(batch.ts_raw)
                                     if not _INT64_MIN <= t <= _INT64_MAX]
        unit = self._unit_ns
        # Compare in the sent unit (ceil of the bounds) so that the multiplication cannot overflow.
        in_range = (raw >= -(-self._time_lo // unit)) & (raw < -(-self._time_hi // unit))
        ts_ns = np.where(in_range, raw, 0) * unit if unit != 1 else raw
        for i, ns, _ in overrides:
            if ns is not None and self._time_lo <= ns < self._time_hi:
                in_range[i] = True
                ts_ns[i] = ns
            else:
                in_range[i] = False
        return ts_ns, in_range

    def _raw_timestamps(self, batch: _Batch):
        """For reasons: reading -> (timestamp as sent, its unit)."""
        sent = {i: value for i, _, value in batch.ts_override}
        binary_records = {m: records for m, _, records in batch.binary}
        first_list_reading: dict[tuple[int, int], int] = {}  # (message, item) -> its first reading in the lists
        for j, key in enumerate(zip(batch.message, batch.item)):
            first_list_reading.setdefault(key, j)

        def raw_of_reading(i, m, item):
            m, item = int(m), int(item)
            if m in binary_records:
                return int(binary_records[m]["ts"][item]), "ns"
            j = first_list_reading[(m, item)]
            return sent.get(j, batch.ts_raw[j]), self.timestamp_unit
        return raw_of_reading

    def _time_reason(self, sent_and_unit) -> str:
        sent, unit = sent_and_unit
        if isinstance(sent, str):
            return f"timestamp {sent!r} is outside {self._time_range_text}"
        reason = f"timestamp {sent} is outside {self._time_range_text} in unit {unit!r}"
        for guess in _UNIT_NS:
            if guess != unit and self._time_lo <= sent * _UNIT_NS[guess] < self._time_hi:
                return f"{reason} ({_UNIT_NAMES[guess]} sent where {_UNIT_NAMES[unit]} expected?)"
        return reason

    def _dead_readings(self, batch, messages, binary_messages, message, item, bad, reason_of, what):
        """One dead letter per JSON element / line / single-object payload holding bad readings;
        one per binary batch, naming how many of its records and the first."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in np.flatnonzero(bad).tolist():
            m = int(message[i])
            groups.setdefault((m, -1 if m in binary_messages else int(item[i])), []).append(i)
        for (m, group_item), readings in groups.items():
            msg = messages[m]
            first = readings[0]
            if m in binary_messages:
                reason = (f"{len(readings)} of {binary_messages[m]} records ({what}), first record "
                          f"{int(item[first])}: {reason_of(first)}")
                self._dead(batch, m, -1, msg, msg.payload, reason)
            elif group_item < 0:
                self._dead(batch, m, -1, msg, msg.payload, reason_of(first))
            else:
                payload, location = self._item_payload(msg, group_item)
                self._dead(batch, m, group_item, msg, payload, f"{location}: {reason_of(first)}")

    def _item_payload(self, message: Message, item: int) -> tuple[bytes, str]:
        """The bytes and name of a JSON array element or a line (re-read: this is the rare path)."""
        text = message.payload.decode()
        payload_format = self.payload_format if self.payload_format != "auto" else _sniff(message.payload)
        if payload_format == "json":
            return _json_bytes(json.loads(text)[item], message.payload), f"element {item}"
        return text.split("\n")[item].strip().encode(), f"line {item + 1}"

    @staticmethod
    def _dead(batch, m, item, message, payload, reason):
        batch.dead.append((m, item, DeadLetter(message.topic, message.partition, message.offset,
                                               bytes(payload), reason)))


def _sniff(payload) -> str:
    if payload[:4] == BINARY_MAGIC:
        return "binary"
    first = payload[0]
    if first in b" \t\r\n":
        stripped = bytes(payload).lstrip()
        first = stripped[0] if stripped else 0
    return "json" if first in b"{[" else "influx"


def _json_bytes(value, fallback: bytes) -> bytes:
    """A JSON array element as compact JSON; the whole payload should it not serialise."""
    try:
        return json.dumps(value, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        return bytes(fallback)
