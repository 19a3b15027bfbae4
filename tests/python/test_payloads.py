"""Payload decoding for the service: topic templates, the key dictionary, JSON / line protocol /
binary batches, dead letters, and a plain-Python oracle on random mixed messages."""
import json
import math
import time
from fractions import Fraction

import numpy as np
import pytest

from cusense.sources import (DeadLetter, Decoder, KeyDictionary, Message, Readings, TopicTemplate,
                             encode_binary_batch)

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z in ns
UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


def decoded(decoder, readings):
    """Decoded readings as (device, channel, ts, value) tuples, NaN as the string 'nan'."""
    devices, channels = decoder.keys.lookup(readings.keys)
    return [(d, c, int(t), "nan" if math.isnan(v) else float(v))
            for d, c, t, v in zip(devices, channels, readings.timestamps, readings.values)]


def one(decoder, topic, payload):
    return decoder.decode([Message(topic, payload)])


# --- topic templates -------------------------------------------------------------------------

@pytest.mark.parametrize("template, topic, expected", [
    ("plant/+/sensor/{key}/{channel}", "plant/a/sensor/d1/temp", ("d1", "temp")),
    ("plant/+/sensor/{key}/{channel}", "plant//sensor/d1/temp", ("d1", "temp")),   # + matches ""
    ("plant/+/sensor/{key}/{channel}", "plant/a/sensor/d1", None),
    ("plant/+/sensor/{key}/{channel}", "plant/a/sensor/d1/temp/x", None),
    ("plant/+/sensor/{key}/{channel}", "plant/a/actuator/d1/temp", None),
    ("plant/+/sensor/{key}/{channel}", "plant/a/sensor//temp", None),              # empty device
    ("plant/+/sensor/{key}/{channel}", "plant/a/sensor/d1/", None),                # empty channel
    ("fleet/{key}", "fleet/truck 7", ("truck 7", None)),
    ("fleet/{key}", "fleet/Ωmeter", ("Ωmeter", None)),
    ("fleet/{key}", "Fleet/x", None),
    ("fleet/{key}/#", "fleet/x", ("x", None)),                                     # # matches zero levels
    ("fleet/{key}/#", "fleet/x/a/b/c", ("x", None)),
    ("{key}/{channel}", "$SYS/load", None),                                        # $ topics skip wildcards
    ("$SYS/{key}", "$SYS/broker", ("broker", None)),
    ("{channel}/{key}", "temp/d9", ("d9", "temp")),
])
def test_topic_template_matches(template, topic, expected):
    tt = TopicTemplate(template)
    assert tt.match(topic) == expected
    assert tt.match(topic) == expected  # cached


def test_topic_template_subscription_and_errors():
    assert TopicTemplate("plant/+/sensor/{key}/{channel}").subscription() == "plant/+/sensor/+/+"
    assert TopicTemplate("fleet/{key}/#").subscription() == "fleet/+/#"
    for bad, message in [("", "non-empty"), ("fleet/+", "no '{key}'"), ("a/#/{key}", "last level"),
                         ("a/{key}/{key}", "twice"), ("a/{key}/{channel}/{channel}", "twice"),
                         ("a/dev{key}", "whole level"), ("a/x+/{key}", "whole level"),
                         ("a/{device}/{key}", "whole level")]:
        with pytest.raises(ValueError, match=message):
            TopicTemplate(bad)


# --- key dictionary --------------------------------------------------------------------------

def test_key_dictionary_first_seen_order_and_lookup():
    keys = KeyDictionary()
    ids = keys.ids(["b", "a", "b", "a", "c"], ["x", "x", "x", "y", "x"])
    assert ids.dtype == np.uint32 and ids.tolist() == [0, 1, 0, 2, 3]
    assert keys.ids(np.array(["c", "b", "z"], dtype=object), ["x", "x", "x"]).tolist() == [3, 0, 4]
    assert len(keys) == 5
    devices, channels = keys.lookup(np.array([4, 0, 2], dtype=np.uint32))
    assert devices.tolist() == ["z", "b", "a"] and channels.tolist() == ["x", "x", "y"]
    assert keys.ids([], []).tolist() == []
    with pytest.raises(KeyError):
        keys.lookup([5])
    with pytest.raises(ValueError, match="length"):
        keys.ids(["a"], [])
    with pytest.raises(TypeError, match="strings"):
        keys.ids([None], ["x"])


def test_key_dictionary_pairs_are_not_confused_by_separators(rng):
    # Pairs that would collide if device and channel were joined with a separator.
    keys = KeyDictionary()
    ids = keys.ids(["a/b", "a", "a\x00b", "a"], ["c", "b/c", "", "b\x00"])
    assert len(set(ids.tolist())) == 4


def test_key_dictionary_json_round_trip(rng):
    keys = KeyDictionary(max_keys=10_000)
    names = ["d", "Ωmeter", "with space", 'q"uote', "\\back", "emoji 🌡", "", "a,b=c"]
    for _ in range(5):
        n = int(rng.integers(0, 500))
        keys.ids([names[i] + str(j) for i, j in zip(rng.integers(0, len(names), n), rng.integers(0, 30, n))],
                 [names[i] for i in rng.integers(0, len(names), n)])
    restored = KeyDictionary.from_json(json.loads(json.dumps(keys.to_json())))
    assert restored.to_json() == keys.to_json() and len(restored) == len(keys)
    everything = np.arange(len(keys))
    for a, b in zip(keys.lookup(everything), restored.lookup(everything)):
        assert a.tolist() == b.tolist()
    devices, channels = keys.lookup(everything)
    assert restored.ids(devices, channels).tolist() == everything.tolist()  # nothing new
    assert restored.max_keys == 10_000
    for bad in [{}, {"version": 2, "max_keys": 5, "pairs": []},
                {"version": 1, "max_keys": 1, "pairs": [["a", "b"], ["c", "d"]]},
                {"version": 1, "max_keys": 5, "pairs": [["a", "b"], ["a", "b"]]},
                {"version": 1, "max_keys": 5, "pairs": [["a", 1]]}]:
        with pytest.raises(ValueError):
            KeyDictionary.from_json(bad)


def test_key_dictionary_cap_reports_what_does_not_fit():
    keys = KeyDictionary(max_keys=3)
    keys.ids(["a"], ["x"])
    ids = keys.ids(["b", "a", "c", "d", "b", "e"], ["x"] * 6)
    full = int(KeyDictionary.FULL)
    assert ids.tolist() == [1, 0, 2, full, 1, full]
    assert len(keys) == 3 and keys.to_json()["pairs"] == [["a", "x"], ["b", "x"], ["c", "x"]]
    assert keys.ids(["d"], ["x"]).tolist() == [full]      # still full, still unchanged
    with pytest.raises(ValueError):
        KeyDictionary(max_keys=0)
    with pytest.raises(ValueError):
        KeyDictionary(max_keys=2**32)


# --- JSON ------------------------------------------------------------------------------------

def test_json_single_array_overrides_and_values():
    dec = Decoder("plant/{key}/{channel}")
    payload = json.dumps([
        {"ts": T0, "value": 1.5},
        {"ts": T0 + 1, "value": 2, "device": "other", "unit": "C"},
        {"ts": T0 + 2, "value": -3.25, "channel": "hum"},
        {"ts": T0 + 3, "values": {"a": 1, "b": 2.5}, "device": 17},
    ]).encode()
    r = one(dec, "plant/d1/temp", payload)
    assert isinstance(r, Readings) and r.dead_letters == []
    assert r.keys.dtype == np.uint32 and r.timestamps.dtype == np.int64 and r.values.dtype == np.float64
    assert decoded(dec, r) == [("d1", "temp", T0, 1.5), ("other", "temp", T0 + 1, 2.0),
                               ("d1", "hum", T0 + 2, -3.25), ("17", "a", T0 + 3, 1.0),
                               ("17", "b", T0 + 3, 2.5)]
    r = one(Decoder("fleet/{key}"), "fleet/d2", b'  {"ts": 1.7e18, "value": NaN}\n')
    assert len(r) == 1 and math.isnan(r.values[0]) and r.timestamps[0] == 17 * 10**17


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_json_timestamp_units(unit):
    dec = Decoder("fleet/{key}", timestamp_unit=unit)
    scale = UNIT_NS[unit]
    sent = T0 // scale + 7
    r = one(dec, "fleet/d", json.dumps({"ts": sent, "value": 1}).encode())
    assert r.timestamps.tolist() == [sent * scale]
    # Floats: exact for the float's own digits (no float64 rounding of the product).
    float_ts = T0 / scale + 0.75
    r = one(dec, "fleet/d", json.dumps({"ts": float_ts, "value": 1}).encode())
    assert r.timestamps.tolist() == [round(Fraction(float_ts) * scale)]
    # ISO strings are absolute whatever the unit.
    r = one(dec, "fleet/d", b'{"ts": "2023-11-14T22:13:20.123456789Z", "value": 1}')
    assert r.timestamps.tolist() == [T0 + 123456789]


@pytest.mark.parametrize("text, ns", [
    ("2023-11-14T22:13:20Z", T0),
    ("2023-11-14T22:13:20", T0),                          # naive: UTC
    ("2023-11-14T23:13:20+01:00", T0),
    ("2023-11-14T22:13:20.5Z", T0 + 500_000_000),
    ("2023-11-14T22:13:20,000000001Z", T0 + 1),
    ("2023-11-14T22:13:20.1234567891Z", T0 + 123_456_789),  # beyond ns: truncated
    ("2023-11-14", T0 - (22 * 3600 + 13 * 60 + 20) * 10**9),
    ("1999-12-31T23:59:59.999999999-00:30", 946686599_999999999),
])
def test_json_iso_timestamps(text, ns):
    r = one(Decoder("fleet/{key}"), "fleet/d", json.dumps({"ts": text, "value": 0}).encode())
    assert r.dead_letters == [] and r.timestamps.tolist() == [ns]


# --- line protocol ---------------------------------------------------------------------------

def test_influx_lines_fields_tags_and_skips():
    dec = Decoder("fleet/{key}/{channel}")
    payload = (f"# a comment\n"
               f"weather,device=d17,site=a temp=21.5,hum=40i,ok=true,note=\"x y\" {T0}\n"
               f"\n"
               f"weather,site=b temp=-1,count=7u {T0 + 1}\r\n"
               f"weather,site=b note=\"only a string\" {T0 + 2}\n").encode()
    r = one(dec, "fleet/topicdev/ignored", payload)
    assert r.dead_letters == []
    assert decoded(dec, r) == [("d17", "temp", T0, 21.5), ("d17", "hum", T0, 40.0),
                               ("topicdev", "temp", T0 + 1, -1.0), ("topicdev", "count", T0 + 1, 7.0)]


def test_influx_escapes():
    dec = Decoder("fleet/{key}", device_tag="dev id")
    payload = (r'my\ meas,dev\ id=pump\,7\=a,x=y f\ 1=1.5,f\,2=2i,s="a \"q\" b, c=d" ' + str(T0)).encode()
    r = one(dec, "fleet/t", payload)
    assert r.dead_letters == []
    assert decoded(dec, r) == [("pump,7=a", "f 1", T0, 1.5), ("pump,7=a", "f,2", T0, 2.0)]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_influx_timestamp_units(unit):
    sent = T0 // UNIT_NS[unit]
    r = one(Decoder("fleet/{key}", timestamp_unit=unit), "fleet/d", f"m v=1 {sent}".encode())
    assert r.timestamps.tolist() == [sent * UNIT_NS[unit]]


def test_influx_bad_lines_are_dead_lettered_alone():
    dec = Decoder("fleet/{key}")
    lines = [f"m v=1 {T0}", "m v=1", f"m v=abc {T0}", f"m v {T0}", f"m v=2 notanumber",
             f"m,tag v=1 {T0}", f"m v=1 {T0} extra", f"m v=3 {T0 + 1}", f'm s="unclosed {T0}']
    r = one(dec, "fleet/d", "\n".join(lines).encode())
    assert decoded(dec, r) == [("d", "v", T0, 1.0), ("d", "v", T0 + 1, 3.0)]
    reasons = [d.reason for d in r.dead_letters]
    assert [d.payload for d in r.dead_letters] == [lines[i].encode() for i in (1, 2, 3, 4, 5, 6, 8)]
    assert reasons[0] == "line 2: no timestamp (event time is required)"
    assert reasons[1].startswith("line 3: field 'v': 'abc' is not a number")
    assert "line 4:" in reasons[2] and "line 6:" in reasons[4] and "line 7:" in reasons[5]
    assert reasons[3] == "line 5: timestamp 'notanumber' is not an integer"
    r = one(dec, "fleet/d", f'm s="text",b=t {T0}'.encode())
    assert len(r) == 0 and "no readings" in r.dead_letters[0].reason


# --- binary ----------------------------------------------------------------------------------

def test_binary_round_trip_and_layout(rng):
    n = int(rng.integers(1, 5000))
    ts = T0 + np.sort(rng.integers(0, 10**12, n))
    values = rng.normal(size=n)
    values[rng.random(n) < 0.1] = np.nan
    payload = encode_binary_batch(ts, values)
    assert payload[:4] == b"CSB1" and int.from_bytes(payload[4:8], "little") == n
    assert len(payload) == 8 + 16 * n
    assert int.from_bytes(payload[8:16], "little", signed=True) == ts[0]
    assert np.frombuffer(payload[16:24], "<f8")[0] == values[0] or np.isnan(values[0])
    for fmt in ("auto", "binary"):
        dec = Decoder("plant/{key}/{channel}", payload_format=fmt, timestamp_unit="s")
        r = one(dec, "plant/d/c", payload)
        assert r.dead_letters == [] and r.timestamps.tolist() == ts.tolist()  # always ns
        np.testing.assert_array_equal(r.values, values)
        assert set(dec.keys.lookup(r.keys)[0]) == {"d"}
    assert encode_binary_batch(ts.astype("datetime64[ns]"), values) == payload
    assert encode_binary_batch([], []) == b"CSB1\0\0\0\0"
    with pytest.raises(ValueError):
        encode_binary_batch([1, 2], [1.0])
    with pytest.raises(TypeError):
        encode_binary_batch([1.5], [1.0])


def test_binary_errors():
    dec = Decoder("fleet/{key}", payload_format="binary")
    good = encode_binary_batch([T0, T0 + 1], [1.0, 2.0])
    cases = [(good[:-1], "binary batch truncated: header says 2 records (40 bytes), payload has 39 bytes"),
             (good + b"\0", "binary batch trailing bytes"),
             (b"CSB2" + good[4:], "not a binary batch"),
             (b"CSB1\0", "not a binary batch"),
             (b"CSB1\0\0\0\0", "no readings in payload")]
    for payload, reason in cases:
        r = one(dec, "fleet/d", payload)
        assert len(r) == 0 and len(r.dead_letters) == 1 and r.dead_letters[0].payload == payload
        assert r.dead_letters[0].reason.startswith(reason), r.dead_letters[0].reason
    r = one(dec, "fleet/d", encode_binary_batch([T0, 1_700_000_000, T0 + 1, 5], [1.0, 2.0, 3.0, 4.0]))
    assert r.timestamps.tolist() == [T0, T0 + 1]
    (dead,) = r.dead_letters
    assert dead.reason.startswith("2 of 4 records (timestamps outside the valid time), first record 1: "
                                  "timestamp 1700000000 is outside 1990-01-01..2100-01-01 in unit 'ns' "
                                  "(seconds sent where nanoseconds expected?)")


# --- sniffing and whole-message dead letters --------------------------------------------------

def test_auto_format_sniffing_keeps_message_order():
    dec = Decoder("fleet/{key}")
    msgs = [Message("fleet/a", encode_binary_batch([T0], [1.0])),
            Message("fleet/b", json.dumps({"ts": T0 + 1, "value": 2}).encode()),
            Message("fleet/c", f"m value=3 {T0 + 2}".encode()),
            Message("fleet/d", b" \n[" + json.dumps({"ts": T0 + 3, "value": 4}).encode() + b"]"),
            Message("fleet/e", encode_binary_batch([T0 + 4, T0 + 5], [5.0, 6.0]))]
    r = dec.decode(msgs)
    assert r.dead_letters == []
    assert decoded(dec, r) == [("a", "value", T0, 1.0), ("b", "value", T0 + 1, 2.0),
                               ("c", "value", T0 + 2, 3.0), ("d", "value", T0 + 3, 4.0),
                               ("e", "value", T0 + 4, 5.0), ("e", "value", T0 + 5, 6.0)]
    assert r.keys.tolist() == [0, 1, 2, 3, 4, 4]   # first-seen order across formats


@pytest.mark.parametrize("topic, payload, fmt, reason", [
    ("other/d", b'{"ts": 1, "value": 1}', "auto", "topic 'other/d' does not match template 'fleet/{key}'"),
    ("fleet/d", b"x" * 101, "auto", "payload of 101 bytes exceeds max_payload_bytes=100"),
    ("fleet/d", b"", "auto", "empty payload"),
    ("fleet/d", b'{"ts": 1, "value": \xff}', "auto", "payload is not valid UTF-8 (invalid start byte at byte 19)"),
    ("fleet/d", b'{"ts": 1, "value": 1', "auto", "malformed JSON: Expecting ',' delimiter"),
    ("fleet/d", b'{"ts": 1, "value": 1} {}', "auto", "malformed JSON: Extra data"),
    ("fleet/d", b"[" * 50_000, "json", "malformed JSON"),
    ("fleet/d", b"m v=1 1", "json", "malformed JSON"),
    ("fleet/d", b'{"ts": 1, "value": 1}', "influx", "line 1: "),
    ("fleet/d", b"[]", "auto", "no readings in payload"),
    ("fleet/d", b"17", "json", "expected an object with 'ts' and 'value', got number"),
    ("fleet/d", b'{"ts": 1700000000, "value": 1}', "auto",
     "timestamp 1700000000 is outside 1990-01-01..2100-01-01 in unit 'ns' (seconds sent where nanoseconds expected?)"),
    ("fleet/d", b'{"ts": 1700000000000, "value": 1}', "auto",
     "timestamp 1700000000000 is outside 1990-01-01..2100-01-01 in unit 'ns' (milliseconds sent where nanoseconds expected?)"),
    ("fleet/d", b'{"ts": 99999999999999999999999, "value": 1}', "auto", "timestamp 99999999999999999999999 is outside"),
    ("fleet/d", b'{"ts": "1970-01-01T00:00:00Z", "value": 1}', "auto",
     "timestamp '1970-01-01T00:00:00Z' is outside 1990-01-01..2100-01-01"),
    ("fleet/d", b'{"ts": "yesterday", "value": 1}', "auto", "timestamp 'yesterday' is not an ISO-8601 date/time"),
    ("fleet/d", b'{"ts": "1700000000", "value": 1}', "auto", "(numbers must not be quoted)"),
    ("fleet/d", b'{"ts": Infinity, "value": 1}', "auto", "timestamp inf is not finite"),
    ("fleet/d", b'{"ts": true, "value": 1}', "auto", "'ts' must be a number or an ISO-8601 string, got boolean"),
    ("fleet/d", b'{"value": 1}', "auto", "missing 'ts'"),
    ("fleet/d", b'{"ts": 1700000000000000000}', "auto", "missing 'value' (or 'values')"),
    ("fleet/d", b'{"ts": 1700000000000000000, "value": "21.5"}', "auto", "'value' is not a number: '21.5'"),
    ("fleet/d", b'{"ts": 1700000000000000000, "value": null}', "auto", "'value' is not a number: null"),
    ("fleet/d", b'{"ts": 1700000000000000000, "value": false}', "auto", "'value' is not a number: boolean"),
    ("fleet/d", b'{"ts": 1700000000000000000, "value": 1e999999}', "auto", None),  # inf: kept
    ("fleet/d", b'{"ts": 1700000000000000000, "value": ' + b"9" * 400 + b"}", "auto", "'value' is not a number"),
    ("fleet/d", b'{"ts": 1700000000000000000, "values": {"a": 1, "b": "x"}}', "auto", "values['b'] is not a number: 'x'"),
    ("fleet/d", b'{"ts": 1700000000000000000, "values": {}}', "auto", "'values' must be a non-empty object"),
    ("fleet/d", b'{"ts": 1700000000000000000, "values": {"a": 1}, "value": 2}', "auto", "has both 'value' and 'values'"),
    ("fleet/d", b'{"ts": 1700000000000000000, "values": {"a": 1}, "channel": "c"}', "auto", "has both 'channel' and 'values'"),
    ("fleet/d", b'{"ts": 1700000000000000000, "value": 1, "device": [1]}', "auto", "'device' must be a string, got array"),
])
def test_whole_message_dead_letters(topic, payload, fmt, reason):
    msg = Message(topic, payload, partition=3, offset=42)
    r = Decoder("fleet/{key}", payload_format=fmt, max_payload_bytes=100 if b"x" * 101 == payload else 1 << 20
                ).decode([msg])
    if reason is None:
        assert len(r) == 1 and r.dead_letters == []
        return
    assert len(r) == 0 and len(r.dead_letters) == 1
    dead = r.dead_letters[0]
    assert isinstance(dead, DeadLetter) and reason in dead.reason, dead.reason
    assert (dead.topic, dead.partition, dead.offset) == (topic, 3, 42)
    if not reason.startswith("line"):
        assert dead.payload == payload


def test_json_array_keeps_good_elements():
    dec = Decoder("fleet/{key}")
    elements = [{"ts": T0, "value": 1}, {"ts": T0, "value": "bad"}, [1], {"ts": 5, "value": 3},
                {"ts": T0 + 1, "value": 4}]
    r = one(dec, "fleet/d", json.dumps(elements).encode())
    assert decoded(dec, r) == [("d", "value", T0, 1.0), ("d", "value", T0 + 1, 4.0)]
    assert [(d.payload, d.reason.split(":")[0]) for d in r.dead_letters] == [
        (json.dumps(e, separators=(",", ":")).encode(), f"element {i}") for i, e in
        [(1, elements[1]), (2, elements[2]), (3, elements[3])]]
    assert "outside" in r.dead_letters[2].reason


def test_key_cap_dead_letters_the_readings_without_a_key():
    dec = Decoder("fleet/{key}", keys=KeyDictionary(max_keys=2))
    msgs = [Message("fleet/a", json.dumps({"ts": T0, "values": {"x": 1, "y": 2, "z": 3}}).encode()),
            Message("fleet/b", encode_binary_batch([T0, T0 + 1], [1.0, 2.0])),
            Message("fleet/a", f"m x=4,z=5 {T0}".encode())]
    r = dec.decode(msgs)
    assert decoded(dec, r) == [("a", "x", T0, 1.0), ("a", "y", T0, 2.0), ("a", "x", T0, 4.0)]
    assert [(d.topic, d.reason) for d in r.dead_letters] == [
        ("fleet/a", "key dictionary is full (max_keys=2): no key for device 'a' channel 'z'"),
        ("fleet/b", "2 of 2 records (readings without a key), first record 0: key dictionary is full "
                    "(max_keys=2): no key for device 'b' channel 'value'"),
        ("fleet/a", "line 1: key dictionary is full (max_keys=2): no key for device 'a' channel 'z'")]
    assert len(dec.keys) == 2


def test_decoder_rejects_bad_configuration():
    for kwargs in [dict(payload_format="xml"), dict(timestamp_unit="min"), dict(max_payload_bytes=0),
                   dict(valid_time=("2100-01-01", "1990-01-01")), dict(valid_time=("soon", "2100")),
                   dict(default_channel="")]:
        with pytest.raises(ValueError):
            Decoder("fleet/{key}", **kwargs)
    with pytest.raises(TypeError):
        Decoder("fleet/{key}", keys={})
    dec = Decoder("fleet/{key}", valid_time=(0, T0))
    assert len(one(dec, "fleet/d", b'{"ts": 0, "value": 1}')) == 1
    assert "outside 0..1700000000000000000" in one(dec, "fleet/d", f'm v=1 {T0}'.encode()).dead_letters[0].reason


def test_garbage_never_raises(rng):
    dec = Decoder("fleet/{key}", max_payload_bytes=4096)
    seeds = [b'{"ts": 1700000000000000000, "value": 1.5}', f"m,device=x v=1,w=2i {T0}".encode(),
             encode_binary_batch([T0, T0 + 1], [1.0, 2.0]), b'[{"ts": "2023-11-14T22:13:20Z", "values": {"a": 1}}]']
    msgs = []
    for _ in range(3000):
        payload = bytearray(seeds[int(rng.integers(len(seeds)))])
        for _ in range(int(rng.integers(0, 4))):
            what, pos = rng.integers(3), int(rng.integers(0, len(payload) + 1))
            if what == 0:
                payload[pos:pos + 1] = b""
            elif what == 1:
                payload[pos:pos] = bytes([int(rng.integers(256))])
            else:
                payload[pos:pos] = bytes(rng.choice(list(b'{}[]",:\\ =\n0123456789eE.-+tfnaNI'), 3))
        msgs.append(Message("fleet/d" + str(int(rng.integers(3))), bytes(payload)))
    r = dec.decode(msgs)
    assert len(r.keys) == len(r.timestamps) == len(r.values)
    assert all(isinstance(d, DeadLetter) and d.reason for d in r.dead_letters)
    # Decoding message by message gives the same readings: batching changes nothing.
    single = Decoder("fleet/{key}", max_payload_bytes=4096, keys=KeyDictionary())
    parts = [single.decode([m]) for m in msgs]
    assert np.concatenate([p.timestamps for p in parts]).tolist() == r.timestamps.tolist()
    assert [d.reason for p in parts for d in p.dead_letters] == [d.reason for d in r.dead_letters]


# --- the oracle ------------------------------------------------------------------------------

DEVICES = ["d1", "pump-7", "Ωmeter", "with space", "c,omma", "eq=ual", "näsa"]
CHANNELS = ["temp", "hum", "p 1", "x,y"]
LO, HI = 631152000 * 10**9, 4102444800 * 10**9   # 1990-01-01, 2100-01-01


class Oracle:
    """Generates random messages and, independently of the decoder, what they must decode to:
    readings (device, channel, ts ns, value, message, item) before the key cap, and dead letters
    (message, item, phase, reason fragment, payload or None, readings lost)."""

    def __init__(self, rng, unit):
        self.rng, self.unit, self.scale = rng, unit, UNIT_NS[unit]
        self.messages, self.readings, self.dead = [], [], []

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def value(self):
        return self.pick([float(self.rng.normal()), int(self.rng.integers(-1000, 1000)), 0.1, 1e300])

    def timestamp(self):
        """(as sent in JSON, ns) for a valid time."""
        ns = int(self.rng.integers(LO, HI))
        kind = self.pick(["int", "int", "float", "iso"] if self.unit in ("s", "ms") else ["int", "int", "iso"])
        if kind == "int":
            return ns // self.scale, ns // self.scale * self.scale
        if kind == "float":
            sent = ns // self.scale + int(self.rng.integers(0, 256)) / 256
            return sent, round(Fraction(sent) * self.scale)
        return str(np.datetime64(ns, "ns")) + self.pick(["", "Z"]), ns

    def bad_timestamp(self):
        """(as sent, reason fragment) for a number outside the valid time."""
        sent = self.pick([int(self.rng.integers(1, 10**6)), -(LO // self.scale), HI // self.scale + 1])
        return sent, f"timestamp {sent} is outside 1990-01-01..2100-01-01 in unit '{self.unit}'"

    def add(self, topic, payload):
        self.messages.append(Message(topic, payload, partition=0, offset=len(self.messages)))
        return len(self.messages) - 1

    def json_object(self, m, item, topic_device, topic_channel):
        """A JSON element: (object, lost readings or None, reason fragment)."""
        obj, device, channel = {}, topic_device, topic_channel
        ts_sent, ns = self.timestamp()
        obj["ts"] = ts_sent
        if self.rng.random() < 0.3:
            device = obj["device"] = self.pick(DEVICES + ["a/b"])
        flavour = self.rng.random()
        if flavour < 0.3:
            obj["values"] = {str(c): self.value() for c in self.rng.choice(CHANNELS, int(self.rng.integers(1, 4)), replace=False)}
            readings = [(device, c, v) for c, v in obj["values"].items()]
        else:
            if self.rng.random() < 0.3:
                channel = obj["channel"] = self.pick(CHANNELS)
            obj["value"] = self.value()
            readings = [(device, channel, obj["value"])]
        problem = self.rng.random()
        if problem < 0.06:
            obj["value" if "value" in obj else "values"] = "21.5"
            return obj, len(readings), ("'value' is not a number: '21.5'" if "value" in obj
                                         else "'values' must be a non-empty object")
        if problem < 0.1:
            del obj["ts"]
            return obj, len(readings), "missing 'ts'"
        if problem < 0.16:
            obj["ts"], reason = self.bad_timestamp()
            self.dead.append((m, item, 1, reason, None, len(readings)))
            return obj, None, None
        for d, c, v in readings:
            self.readings.append((d, c, ns, float(v), m, item))
        return obj, None, None

    def json_message(self):
        device, channel = self.pick(DEVICES), self.pick(CHANNELS)
        m = len(self.messages)
        if self.rng.random() < 0.5:
            obj, lost, reason = self.json_object(m, -1, device, channel)
            payload = json.dumps(obj).encode()
            if lost:
                self.dead.append((m, -1, 0, reason, payload, lost))
        else:
            elements = []
            for i in range(int(self.rng.integers(1, 6))):
                if self.rng.random() < 0.05:
                    elements.append([1, 2])
                    self.dead.append((m, i, 0, f"element {i}: expected an object", b"[1,2]", 0))
                    continue
                obj, lost, reason = self.json_object(m, i, device, channel)
                elements.append(obj)
                if lost:
                    self.dead.append((m, i, 0, f"element {i}: {reason}",
                                      json.dumps(obj, separators=(",", ":")).encode(), lost))
            payload = json.dumps(elements).encode()
        self.add(f"site/x/dev/{device}/{channel}", payload)

    def influx_message(self):
        topic_device = self.pick(DEVICES)
        m, lines = len(self.messages), []
        for i in range(int(self.rng.integers(1, 5))):
            ns = int(self.rng.integers(LO, HI)) // self.scale * self.scale
            if self.rng.random() < 0.1:
                lines.append("# comment")
                continue
            device = topic_device
            tags = ",site=a"
            if self.rng.random() < 0.5:
                device = self.pick(DEVICES)
                tags = ",device=" + device.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") + tags
            fields, readings = [], []
            for c in self.rng.choice(CHANNELS, int(self.rng.integers(1, 4)), replace=False).tolist():
                escaped = c.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
                if self.rng.random() < 0.5:
                    v = int(self.rng.integers(-10**6, 10**6))
                    fields.append(f"{escaped}={v}i")
                else:
                    v = float(self.rng.normal())
                    fields.append(f"{escaped}={v!r}")
                readings.append((device, c, float(v)))
            fields.append(self.pick(['note="a, b"', "ok=t", "flag=FALSE"]))
            problem = self.rng.random()
            if problem < 0.08:
                line = f"meas{tags} {','.join(fields)}"
                self.dead.append((m, i, 0, f"line {i + 1}: no timestamp", line.encode(), len(readings)))
            elif problem < 0.14:
                sent, reason = self.bad_timestamp()
                line = f"meas{tags} {','.join(fields)} {sent}"
                self.dead.append((m, i, 1, f"line {i + 1}: {reason}", line.encode(), len(readings)))
            else:
                line = f"meas{tags} {','.join(fields)} {ns // self.scale}"
                self.readings.extend((d, c, ns, v, m, i) for d, c, v in readings)
            lines.append(line)
        if all(line.startswith("#") for line in lines):
            self.dead.append((m, -1, 0, "no readings in payload", None, 0))
        self.add(f"site/y/dev/{topic_device}/ignored", "\n".join(lines).encode())

    def binary_message(self):
        device, channel = self.pick(DEVICES), self.pick(CHANNELS)
        m, n = len(self.messages), int(self.rng.integers(1, 128))  # fits max_payload_bytes
        ts = self.rng.integers(LO, HI, n)
        bad = self.rng.random(n) < (0.05 if self.rng.random() < 0.3 else 0)
        ts[bad] //= 10**9
        values = self.rng.normal(size=n)
        payload = encode_binary_batch(ts, values)
        if self.rng.random() < 0.1:
            payload = payload[:-int(self.rng.integers(1, 16))]
            self.dead.append((m, -1, 0, f"binary batch truncated: header says {n} records", payload, n))
        else:
            if bad.any():
                self.dead.append((m, -1, 1, f"{int(bad.sum())} of {n} records (timestamps outside the "
                                  f"valid time), first record {int(np.flatnonzero(bad)[0])}: timestamp",
                                  payload, int(bad.sum())))
            self.readings.extend((device, channel, int(t), float(v), m, i)
                                 for i, (t, v, b) in enumerate(zip(ts, values, bad)) if not b)
        self.add(f"site/z/dev/{device}/{channel}", payload)

    def broken_message(self):
        m = len(self.messages)
        kind = self.pick(["topic", "size", "utf8", "json", "empty"])
        topic, payload, reason = "site/x/dev/d1/temp", b'{"ts": 1, "value": 1}', None
        if kind == "topic":
            topic, reason = "elsewhere/d1", "does not match template"
        elif kind == "size":
            payload, reason = b'{"ts": 1, "value": "' + b"x" * 3000 + b'"}', "exceeds max_payload_bytes=2048"
        elif kind == "utf8":
            payload, reason = b'{"ts": 1, "value": "\xc3\x28"}', "not valid UTF-8"
        elif kind == "json":
            payload, reason = b'{"ts": 1, "value": 1,}', "malformed JSON"
        else:
            payload, reason = b"", "empty payload"
        self.dead.append((m, -1, 0, reason, payload, 1))
        self.add(topic, payload)


def test_oracle_random_mixed_messages(rng):
    unit = ["s", "ms", "us", "ns"][int(rng.integers(4))]
    oracle = Oracle(rng, unit)
    for _ in range(int(rng.integers(50, 400))):
        oracle.pick([oracle.json_message, oracle.json_message, oracle.influx_message,
                     oracle.binary_message, oracle.broken_message])()
    # The key cap: pairs in order of first appearance among decoded readings; a random cap.
    first_seen = list(dict.fromkeys((d, c) for d, c, *_ in oracle.readings))
    max_keys = int(rng.integers(1, len(first_seen) + 2)) if rng.random() < 0.5 else 1_000_000
    key_of = {pair: k for k, pair in enumerate(first_seen[:max_keys])}
    expected = [r for r in oracle.readings if (r[0], r[1]) in key_of]
    without_key = {}
    for d, c, t, v, m, item in oracle.readings:
        if (d, c) not in key_of:
            binary = oracle.messages[m].payload.startswith(b"CSB1")
            without_key.setdefault((m, -1 if binary else item), []).append((d, c, item))
    for (m, item), lost in without_key.items():
        fragment = f"key dictionary is full (max_keys={max_keys}): no key for device {lost[0][0]!r}"
        oracle.dead.append((m, item, 2, fragment, None, len(lost)))

    dec = Decoder("site/+/dev/{key}/{channel}", timestamp_unit=unit, max_payload_bytes=2048,
                  keys=KeyDictionary(max_keys=max_keys))
    r = dec.decode(oracle.messages)

    got = decoded(dec, r)
    assert got == [(d, c, t, "nan" if math.isnan(v) else v) for d, c, t, v, *_ in expected]
    assert r.keys.tolist() == [key_of[(d, c)] for d, c, *_ in expected]
    assert len(dec.keys) == len(key_of)
    want_dead = sorted(oracle.dead, key=lambda d: d[:3])
    assert len(r.dead_letters) == len(want_dead), [d.reason for d in r.dead_letters]
    for dead, (m, item, _, fragment, payload, _) in zip(r.dead_letters, want_dead):
        message = oracle.messages[m]
        assert (dead.topic, dead.offset) == (message.topic, message.offset)
        assert fragment in dead.reason, (fragment, dead.reason)
        if payload is not None:
            assert dead.payload == payload
    # Counts add up: every generated reading was decoded or is covered by a dead letter.
    generated = len(oracle.readings) + sum(d[5] for d in oracle.dead if d[2] != 2)
    assert len(r) + sum(d[5] for d in oracle.dead) == generated


# --- decode rate (printed, not asserted) -----------------------------------------------------

def test_decode_rate_report(capsys):
    n = 100_000
    json_msgs = [Message(f"fleet/d{i % 1000}", json.dumps({"ts": T0 + i, "value": i * 0.5}).encode())
                 for i in range(n)]
    binary_msgs = [Message(f"fleet/d{i}", encode_binary_batch(T0 + np.arange(1000), np.arange(1000.0)))
                   for i in range(1000)]
    dec = Decoder("fleet/{key}")
    dec.decode(json_msgs[:1000])
    rates = {}
    for name, msgs, readings in (("json", json_msgs, n), ("binary", binary_msgs, 1000 * 1000)):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            r = dec.decode(msgs)
            best = min(best, time.perf_counter() - start)
        assert len(r) == readings
        rates[name] = (len(msgs) / best, readings / best)
    with capsys.disabled():
        print(f"\ndecode: {n} single-reading JSON messages: {rates['json'][0] / 1e3:.0f}k msg/s; "
              f"1000 binary batches of 1000: {rates['binary'][1] / 1e6:.1f}M readings/s")


def test_plain_arrays_take_the_fast_path_with_the_same_readings(rng):
    """Arrays of plain {"ts", "value"} objects (the fast path) decode exactly like the same
    readings sent one per message (the general path), ints and floats, any unit."""
    n = 300
    ts = (1_764_547_200 + np.sort(rng.integers(0, 10**6, n))).tolist()
    values = [float(v) if i % 3 else int(v) for i, v in enumerate(rng.integers(-10**6, 10**6, n))]
    elements = [{"ts": t, "value": v} for t, v in zip(ts, values)]
    batched = Decoder("f/{key}/{channel}", timestamp_unit="s").decode(
        [Message("f/d1/temp", json.dumps(elements).encode())])
    single = Decoder("f/{key}/{channel}", timestamp_unit="s").decode(
        [Message("f/d1/temp", json.dumps(e).encode()) for e in elements])
    assert not batched.dead_letters and not single.dead_letters
    np.testing.assert_array_equal(batched.timestamps, single.timestamps)
    np.testing.assert_array_equal(batched.values, single.values)
    np.testing.assert_array_equal(batched.keys, single.keys)
    np.testing.assert_array_equal(batched.timestamps, np.array(ts, dtype=np.int64) * 10**9)
