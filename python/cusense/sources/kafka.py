"""Kafka source for ``cusense serve``: a confluent-kafka consumer whose offsets move with the
service's checkpoints.

Kafka's committed offsets are not the source of truth here: ``positions()`` goes into the
service checkpoint together with the window state it belongs to, and a restart resumes from the
checkpoint. Committing to Kafka happens only after a checkpoint is durable (``commit()``), so
monitoring tools see the lag; see docs/kafka.md for why the checkpoint wins.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from .base import Message

try:
    import confluent_kafka
    from confluent_kafka import KafkaError, TopicPartition
except ImportError as exc:  # optional dependency
    raise ImportError("KafkaSource needs confluent-kafka: pip install confluent-kafka") from exc

log = logging.getLogger(__name__)

# What the exactly-once rule requires: nothing is committed or stored behind the service's back.
_REQUIRED_CONFIG = {"enable.auto.commit": False, "enable.auto.offset.store": False}

# Errors on a message that will not go away by retrying: raise instead of skipping silently.
_PERMANENT_MESSAGE_ERRORS = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,       # the topic or partition was deleted
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError._AUTO_OFFSET_RESET,          # offset out of range with auto.offset.reset=error
}

_MAX_CONSUME_BATCH = 1_000_000  # confluent-kafka's limit on consume(num_messages)


class KafkaSourceError(RuntimeError):
    """A Kafka error the source cannot recover from (librdkafka retries the transient ones)."""


def _is_true(value) -> bool:
    return str(value).lower() in ("true", "1")


class KafkaSource:
    """Reads every partition of ``topics`` (a name or a list) with explicit assignment.

    ``config`` adds librdkafka settings (security, fetch sizes, ...); ``max_buffered`` bounds the
    messages prefetched per partition (librdkafka's ``queued.min.messages``). Every
    ``metadata_refresh_s`` seconds the topics are looked up again and partitions added since are
    assigned, starting at their earliest offset (0 disables the refresh). ``topic_from_key``
    hands the record key on as the message topic, for topic templates.
    """

    def __init__(self, bootstrap_servers: str, topics: str | list[str], group_id: str,
                 config: dict | None = None, max_buffered: int = 100_000, *,
                 metadata_refresh_s: float = 60.0, metadata_timeout_s: float = 30.0,
                 topic_from_key: bool = False):
        # Kafka topics usually carry a whole fleet, with the device in the record key: with
        # topic_from_key the key (e.g. "fleet/dev-17/temp") stands for the MQTT-style topic
        # that the topic template is matched against.
        self.topic_from_key = bool(topic_from_key)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("KafkaSource needs at least one topic")
        config = dict(config or {})
        for key, required in _REQUIRED_CONFIG.items():
            if key in config and _is_true(config[key]) != required:
                raise ValueError(f"KafkaSource sets {key}={str(required).lower()}: offsets "
                                 "are committed only with checkpoints (see docs/kafka.md)")
        self._config = {
            "auto.offset.reset": "earliest",
            "queued.min.messages": max_buffered,
            # Once a partition's prefetch queue is full librdkafka pauses its fetching for this
            # long; the default (1 s) caps a fast consumer at ~max_buffered messages/s/partition.
            "fetch.queue.backoff.ms": 50,
            "logger": log,  # librdkafka's log lines through Python logging, not raw stderr
            **config,
            "bootstrap.servers": bootstrap_servers,
            "group.id": group_id,
            # Lets poll() tell a broken cluster from a transient outage (see _on_error).
            "error_cb": self._on_error,
            **_REQUIRED_CONFIG,
        }
        self.metadata_refresh_s = metadata_refresh_s
        self.metadata_timeout_s = metadata_timeout_s
        self.stats = {"messages": 0, "bytes": 0, "polls": 0, "errors": 0, "commits": 0,
                      "partitions": 0}
        self._consumer: Any = None   # confluent_kafka.Consumer once open
        self._next_offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset
        self._fatal_error: KafkaError | None = None
        self._next_refresh = 0.0

    # -- Source protocol -------------------------------------------------------------------

    def open(self, positions: dict | None) -> None:
        """Assign every partition of the topics. A partition listed in ``positions`` starts
        exactly there; any other at the group's committed offset, else at the earliest one."""
        if self._consumer is not None:
            raise RuntimeError("KafkaSource is already open")
        self._consumer = confluent_kafka.Consumer(self._config)
        restored = {}
        for topic, partitions in (positions or {}).items():
            if topic not in self.topics:
                log.warning("checkpoint position for topic %r ignored: not consumed any more",
                            topic)
                continue
            for partition, offset in partitions.items():
                restored[(topic, int(partition))] = int(offset)
        try:
            discovered = self._discover_partitions()
            unknown = sorted(set(restored) - set(discovered))
            if unknown:
                raise KafkaSourceError(f"checkpoint positions name partitions the cluster does "
                                       f"not have: {unknown} (was the topic recreated?)")
            self._assign(discovered, restored)
        except BaseException:
            self.close()
            raise
        self._next_refresh = time.monotonic() + self.metadata_refresh_s

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` messages; waits at most ``timeout_s`` for the first one, then
        takes only what is already fetched, so a slow stream is not held back."""
        consumer = self._require_open()
        if self.metadata_refresh_s > 0 and time.monotonic() >= self._next_refresh:
            self._assign_new_partitions()
        if max_messages < 1:
            return []
        batch_size = min(max_messages, _MAX_CONSUME_BATCH)
        # consume(n, timeout) waits until n messages or the timeout: ask for what is ready first.
        raw = consumer.consume(batch_size, 0)
        if not raw and timeout_s > 0:
            raw = consumer.consume(1, timeout_s)
            if raw and batch_size > 1:
                raw += consumer.consume(batch_size - 1, 0)
        self.stats["polls"] += 1
        if self._fatal_error is not None:
            raise KafkaSourceError(f"fatal Kafka error: {self._fatal_error.str()}")

        messages = []
        next_offsets = self._next_offsets
        payload_bytes = 0
        for record in raw:
            if record.error() is not None:
                self._on_message_error(record)
                continue
            topic, partition, offset = record.topic(), record.partition(), record.offset()
            payload = record.value() or b""  # a tombstone (null value) is an empty payload
            name = topic
            if self.topic_from_key:
                key = record.key()
                name = key.decode("utf-8", "replace") if key else f"{topic}/<no key>"
            messages.append(Message(name, payload, partition, offset))
            next_offsets[(topic, partition)] = offset + 1
            payload_bytes += len(payload)
        self.stats["messages"] += len(messages)
        self.stats["bytes"] += payload_bytes
        return messages

    def positions(self) -> dict:
        """``{topic: {partition (str): next offset}}`` for every assigned partition: the offset
        of the next message to read, i.e. one past the last message polled."""
        result: dict[str, dict[str, int]] = {}
        for (topic, partition), offset in sorted(self._next_offsets.items()):
            result.setdefault(topic, {})[str(partition)] = offset
        return result

    def commit(self) -> None:
        """Commit ``positions()`` to the group, synchronously. Called once the checkpoint holding
        them is durable; it only feeds lag monitoring (a restart uses the checkpoint)."""
        consumer = self._require_open()
        offsets = [TopicPartition(topic, partition, offset)
                   for (topic, partition), offset in sorted(self._next_offsets.items())]
        if not offsets:
            return
        try:
            results = consumer.commit(offsets=offsets, asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            self._raise_or_warn_commit_error(exc.args[0])
            return
        for result in results or []:
            if result.error is not None:
                self._raise_or_warn_commit_error(result.error)
                return
        self.stats["commits"] += 1

    def close(self) -> None:
        """Leave without committing anything: a restart resumes from the last checkpoint."""
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()

    # -- internals -------------------------------------------------------------------------

    def _require_open(self):
        if self._consumer is None:
            raise RuntimeError("KafkaSource is not open (call open(positions) first)")
        return self._consumer

    def _discover_partitions(self) -> list[tuple[str, int]]:
        """Every (topic, partition) of the topics, from the cluster's metadata."""
        found: list[tuple[str, int]] = []
        for topic in self.topics:
            try:
                metadata = self._consumer.list_topics(topic, timeout=self.metadata_timeout_s)
            except confluent_kafka.KafkaException as exc:
                raise KafkaSourceError(f"cannot read metadata of topic {topic!r} from "
                                       f"{self._config['bootstrap.servers']}: {exc}") from exc
            topic_metadata = metadata.topics.get(topic)
            if topic_metadata is None or topic_metadata.error is not None:
                reason = topic_metadata.error.str() if topic_metadata is not None else "missing"
                raise KafkaSourceError(f"topic {topic!r} is not available: {reason}")
            found.extend((topic, partition) for partition in sorted(topic_metadata.partitions))
        return found

    def _assign(self, partitions: list[tuple[str, int]], restored: dict) -> None:
        """Assign ``partitions`` at explicit offsets, so ``positions()`` covers each of them from
        the start and a checkpoint never depends on what the group committed later."""
        start = dict(restored)
        unresolved = [tp for tp in partitions if tp not in start]
        if unresolved:
            committed = self._consumer.committed(
                [TopicPartition(topic, partition) for topic, partition in unresolved],
                timeout=self.metadata_timeout_s)
            for tp in committed:
                if tp.error is not None:
                    raise KafkaSourceError(f"cannot read the committed offset of "
                                           f"{tp.topic}[{tp.partition}]: {tp.error.str()}")
                if tp.offset >= 0:
                    start[(tp.topic, tp.partition)] = tp.offset
                else:  # nothing committed yet: the earliest offset still in the log
                    low, _high = self._consumer.get_watermark_offsets(
                        tp, timeout=self.metadata_timeout_s, cached=False)
                    start[(tp.topic, tp.partition)] = low
        assignment = [TopicPartition(topic, partition, start[(topic, partition)])
                      for topic, partition in partitions]
        if self._next_offsets:
            self._consumer.incremental_assign(assignment)
        else:
            self._consumer.assign(assignment)
        for topic, partition in partitions:
            self._next_offsets[(topic, partition)] = start[(topic, partition)]
        self.stats["partitions"] = len(self._next_offsets)

    def _assign_new_partitions(self) -> None:
        self._next_refresh = time.monotonic() + self.metadata_refresh_s
        try:
            discovered = self._discover_partitions()
        except KafkaSourceError as exc:  # the next refresh tries again; consuming goes on
            log.warning("partition refresh failed: %s", exc)
            return
        new = [tp for tp in discovered if tp not in self._next_offsets]
        if new:
            log.info("assigning partitions added since open: %s", new)
            self._assign(new, {})

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors. Transient ones (a broker down, a timeout) are
        retried by librdkafka itself; a fatal one makes the next poll() raise."""
        if error.fatal():
            self._fatal_error = error
        else:
            self.stats["errors"] += 1
            log.warning("Kafka error (retried by librdkafka): %s", error.str())

    def _on_message_error(self, record) -> None:
        error = record.error()
        if error.code() == KafkaError._PARTITION_EOF:  # caught up: not an error
            return
        where = f"{record.topic()}[{record.partition()}]"
        if error.fatal() or error.code() in _PERMANENT_MESSAGE_ERRORS:
            raise KafkaSourceError(f"Kafka error on {where}: {error.str()}")
        self.stats["errors"] += 1
        log.warning("Kafka error on %s (skipped, retried by librdkafka): %s", where, error.str())

    def _raise_or_warn_commit_error(self, error: KafkaError) -> None:
        # The checkpoint already holds these offsets, so a failed commit loses nothing: the next
        # commit carries newer offsets. Only a fatal error stops the source.
        if error.fatal():
            raise KafkaSourceError(f"fatal Kafka error on commit: {error.str()}")
        self.stats["errors"] += 1
        log.warning("offset commit failed (the checkpoint is unaffected): %s", error.str())
