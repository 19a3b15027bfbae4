"""A fleet simulator: devices that report readings over MQTT or Kafka, as a real fleet does.

Each device has channels (``temp``, ``hum``, ...) sampled every ``period`` with jitter; a
device sends its readings in messages of ``per_message`` readings each (1 = one JSON reading
per message), and each message reaches the broker after a random network delay, so messages
arrive out of order. Some devices fall silent for a while, some readings are spikes, and a few
messages are stragglers delayed far beyond the usual disorder (they arrive late).

``FleetSimulator(...).messages()`` gives ``(topic, payload)`` pairs in delivery order and
``readings()`` the same readings as a DataFrame in delivery order (device, channel, timestamp
ns, value): the ground truth for an independent check of what cusense stored.

    python -m cusense.simulator --mqtt 127.0.0.1:1883 --devices 200 --duration 10min
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._time import to_nanoseconds

FORMATS = ("json", "json-array", "influx", "binary", "mixed")


@dataclass
class FleetSimulator:
    devices: int = 50
    channels: tuple = ("temp", "hum")
    period: str = "1s"
    duration: str = "5min"
    start: str = "2026-12-01T00:00:00"
    jitter: str = "100ms"          # event-time jitter around the sampling grid
    max_delay: str = "2s"          # network delay of a message: uniform in [0, max_delay]
    straggler_fraction: float = 0.002   # messages delayed by a minute or more (arrive late)
    silent_fraction: float = 0.1   # devices that stop reporting for ``silent_for``
    silent_for: str = "90s"
    spike_fraction: float = 0.002
    per_message: int = 1           # readings per message (json-array, influx and binary)
    format: str = "json"           # json | json-array | influx | binary | mixed
    topic_prefix: str = "fleet"
    seed: int = 1

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.format == "json" and self.per_message != 1:
            self.format = "json-array"
        self._built = None

    # --- generation ------------------------------------------------------------------------------
    def _build(self):
        if self._built is not None:
            return self._built
        rng = np.random.default_rng(self.seed)
        period = to_nanoseconds(self.period)
        steps = max(1, to_nanoseconds(self.duration) // period)
        t0 = np.datetime64(self.start, "ns").astype(np.int64)
        jitter = to_nanoseconds(self.jitter)
        silent = rng.random(self.devices) < self.silent_fraction
        silent_from = rng.integers(0, steps, self.devices)
        silent_steps = to_nanoseconds(self.silent_for) // period
        messages = []   # (arrival ns, device, channel, timestamps, values)
        for d in range(self.devices):
            grid = np.arange(steps)
            if silent[d]:
                grid = grid[(grid < silent_from[d]) | (grid >= silent_from[d] + silent_steps)]
            phase = rng.uniform(0, 2 * np.pi)
            for c, channel in enumerate(self.channels):
                ts = t0 + grid * period + rng.integers(-jitter, jitter + 1, len(grid)) if jitter else t0 + grid * period
                ts = np.sort(ts)
                base = 20.0 + 10.0 * c
                values = base + 3 * np.sin(2 * np.pi * (ts - t0) / 3.6e12 + phase) + rng.normal(0, 0.3, len(ts))
                spikes = rng.random(len(ts)) < self.spike_fraction
                values[spikes] += rng.choice([-1, 1], spikes.sum()) * rng.uniform(15, 30, spikes.sum())
                values = np.round(values, 3)
                for first in range(0, len(ts), self.per_message):
                    part = slice(first, first + self.per_message)
                    sent = ts[part][-1]
                    delay = rng.integers(0, to_nanoseconds(self.max_delay) + 1)
                    if rng.random() < self.straggler_fraction:
                        delay += rng.integers(60, 180) * 1_000_000_000
                    messages.append((sent + delay, d, channel, ts[part], values[part]))
        messages.sort(key=lambda m: (m[0], m[1], m[2]))
        self._built = messages
        return messages

    def device_name(self, d: int) -> str:
        return f"dev-{d:05d}"

    def readings(self) -> pd.DataFrame:
        """Every reading in delivery order: device, channel, timestamp (int64 ns), value."""
        msgs = self._build()
        return pd.DataFrame({
            "device": np.concatenate([[self.device_name(m[1])] * len(m[3]) for m in msgs]).astype(object),
            "channel": np.concatenate([[m[2]] * len(m[3]) for m in msgs]).astype(object),
            "timestamp": np.concatenate([m[3] for m in msgs]).astype(np.int64),
            "value": np.concatenate([m[4] for m in msgs]).astype(np.float64),
        })

    def messages(self) -> list[tuple[str, bytes]]:
        """(topic, payload) in delivery order; topics follow ``{prefix}/{device}/{channel}``."""
        from .sources.payloads import encode_binary_batch

        out = []
        formats = ("json", "json-array", "influx", "binary")
        for i, (_, d, channel, ts, values) in enumerate(self._build()):
            device = self.device_name(d)
            fmt = self.format if self.format != "mixed" else formats[i % len(formats)]
            topic = f"{self.topic_prefix}/{device}/{channel}"
            if fmt == "json" and len(ts) == 1:
                payload = json.dumps({"ts": int(ts[0]), "value": float(values[0])})
            elif fmt in ("json", "json-array"):
                payload = json.dumps([{"ts": int(t), "value": float(v)} for t, v in zip(ts, values)])
            elif fmt == "influx":
                payload = "\n".join(f"sensors,device={device} {channel}={float(v)!r} {int(t)}"
                                    for t, v in zip(ts, values))
            else:
                out.append((topic, encode_binary_batch(ts, values)))
                continue
            out.append((topic, payload.encode()))
        return out


def publish_mqtt(messages, host: str, port: int, rate: float | None = None, client_id: str = "cusense-simulator",
                 progress: bool = False) -> None:
    """Publishes with QoS 1 and waits until the broker has acknowledged every message."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    try:
        start = time.perf_counter()
        infos = []
        for i, (topic, payload) in enumerate(messages):
            infos.append(client.publish(topic, payload, qos=1))
            if rate:
                ahead = (i + 1) / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if progress and i % 5000 == 0:
                sys.stderr.write(f"\rpublished {i + 1}/{len(messages)}")
        for info in infos:
            info.wait_for_publish(timeout=60)
        if progress:
            sys.stderr.write(f"\rpublished {len(messages)}/{len(messages)}\n")
    finally:
        client.loop_stop()
        client.disconnect()


def produce_kafka(messages, bootstrap_servers: str, topic: str) -> None:
    """Produces each message to ``topic`` with the MQTT-style topic as the record key (so one
    device-channel always lands in one partition, in order)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
                         "linger.ms": 5})
    for mqtt_topic, payload in messages:
        while True:
            try:
                producer.produce(topic, payload, key=mqtt_topic.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("Kafka producer could not deliver every message within 60 s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="cusense simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mqtt", metavar="HOST:PORT", help="publish to this MQTT broker")
    ap.add_argument("--kafka", metavar="BOOTSTRAP", help="produce to this Kafka cluster")
    ap.add_argument("--kafka-topic", default="readings")
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--duration", default="5min", help="event-time span of the stream")
    ap.add_argument("--period", default="1s", help="sampling period of each channel")
    ap.add_argument("--format", default="json", choices=FORMATS)
    ap.add_argument("--per-message", type=int, default=1, help="readings per message")
    ap.add_argument("--rate", type=float, default=None, help="messages per second (default: as fast as possible)")
    ap.add_argument("--start", default="2026-12-01T00:00:00", help="event time of the first reading")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if not (args.mqtt or args.kafka):
        ap.error("give --mqtt HOST:PORT or --kafka BOOTSTRAP")
    sim = FleetSimulator(devices=args.devices, duration=args.duration, period=args.period,
                         format=args.format, per_message=args.per_message, start=args.start,
                         seed=args.seed)
    messages = sim.messages()
    print(f"{len(messages)} messages, {len(sim.readings())} readings from {args.devices} devices",
          file=sys.stderr)
    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        publish_mqtt(messages, host or "127.0.0.1", int(port), rate=args.rate, progress=sys.stderr.isatty())
    if args.kafka:
        produce_kafka(messages, args.kafka, args.kafka_topic)
    return 0


if __name__ == "__main__":
    sys.exit(main())
