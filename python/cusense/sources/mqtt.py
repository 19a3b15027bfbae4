"""MQTT source for ``cusense serve``: a persistent MQTT 5 session whose QoS 1 acknowledgements
wait for the service's checkpoints, so that a crash replays exactly what was not checkpointed.

How it works (docs/mqtt.md states the guarantee and the broker settings it needs):

* The client connects with a fixed client id, Clean Start off and a session that never expires,
  and subscribes with QoS 1. paho acknowledges nothing by itself (``manual_ack=True``):
  ``commit()`` sends the PUBACKs of everything ``poll`` handed out, once the checkpoint holding
  it is durable. Whatever was not acknowledged when the process died, the broker sends again
  to the restarted client: the replay from the last checkpoint.
* After a lost connection (or a broker restart) the broker re-sends every unacknowledged
  message with the DUP flag and its original packet id. Those are already buffered here or
  handed out, so they are recognised by packet id (plus a digest of topic and payload, to be
  sure it is the same message) and dropped.
* An acknowledgement can itself be lost: sent while disconnected, or in flight when the
  connection (or the process, after a durable checkpoint) died. The broker then re-sends a
  message that is already checkpointed. Acknowledged-but-unconfirmed packet ids are therefore
  remembered (and saved in ``positions()``, for the restart) and such a redelivery is
  acknowledged again and dropped.
* The broker never has more than Receive Maximum unacknowledged messages out to this client,
  and that is at most ``max_buffered``: the buffer cannot overflow with QoS 1 traffic. When it
  is full anyway (QoS 0 publishers are not flow controlled), the network thread blocks, which
  pushes back through TCP onto the broker, which queues.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .base import Message

log = logging.getLogger(__name__)

# MQTT packet identifiers are 16 bit: a broker cannot have more unacknowledged messages out.
MAX_RECEIVE_MAXIMUM = 65535
# MQTT 5 Session Expiry Interval meaning "never expires".
SESSION_NEVER_EXPIRES = 0xFFFFFFFF


def message_digest(topic: str, payload: bytes) -> int:
    """Stable (across processes) 64-bit fingerprint of a message, to tell a redelivery of the
    same message from a new message that reuses a packet id."""
    h = hashlib.blake2b(digest_size=8)
    h.update(topic.encode())
    h.update(b"\0")
    h.update(payload)
    return int.from_bytes(h.digest(), "little")


class MqttSource:
    """Reads MQTT topics for ``cusense serve`` without loss or duplicates across checkpoints."""

    def __init__(self, host: str, port: int, topics: str | list[str], client_id: str, qos: int = 1,
                 username: str | None = None, password: str | None = None, keepalive: int = 30,
                 max_buffered: int = 100_000, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30, connect_timeout_s: float = 10.0):
        if qos not in (0, 1):
            raise ValueError("qos must be 1 (at-least-once, deduplicated here) or 0 (best effort)")
        if not client_id:
            raise ValueError("client_id is required: the broker keeps the session under it")
        if max_buffered < 1:
            raise ValueError("max_buffered must be at least 1")
        self.host, self.port = host, int(port)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("at least one topic filter is required")
        self.client_id = client_id
        self.qos = qos
        self.keepalive = keepalive
        self.max_buffered = max_buffered
        self.receive_maximum = min(max_buffered, MAX_RECEIVE_MAXIMUM)
        self.connect_timeout_s = connect_timeout_s

        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv5, manual_ack=True)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(reconnect_min_s, reconnect_max_s)  # type: ignore[arg-type]  # float seconds work
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_message = self._on_message

        # Everything below is shared with paho's network thread and guarded by _lock.
        self._lock = threading.Lock()
        self._space_or_message = threading.Condition(self._lock)
        # Received, not yet polled: (topic, payload, packet id or None for QoS 0, session).
        self._buffer: collections.deque = collections.deque()
        # Packet id -> digest of every message received and not yet acknowledged.
        self._unacked: dict[int, int] = {}
        # Packet ids handed out by poll since the last commit: commit acknowledges them.
        self._to_ack: list[int] = []
        # Packet id -> (digest, connection number) of acknowledgements the broker may not have
        # received: a redelivery of one of these is acknowledged again and dropped.
        self._acked_unconfirmed: dict[int, tuple[int, int]] = {}
        self._connection_number = 0        # 1 for the first connection, +1 per reconnect
        self._new_message_seen = False     # a first delivery (DUP=0) arrived on this connection
        self._session = 0                  # +1 whenever the broker lost our session
        self._connected = False
        self._subscribed = threading.Event()
        self._disconnected = threading.Event()
        self._flushed = threading.Event()
        self._flush_mid: int | None = None
        self._connect_error: str | None = None
        self._expect_session = False       # opened from a checkpoint: the broker should know us
        self._opened = False
        self._closing = False
        self._delivered = 0
        self._stats = {"received": 0, "duplicates_dropped": 0, "reconnects": 0,
                       "acknowledged": 0, "sessions_lost": 0, "blocked_s": 0.0}

    # -- Source protocol --------------------------------------------------------------------

    def open(self, positions: dict | None) -> None:
        """Connect and subscribe; waits until the subscription is in place (ConnectionError after
        ``connect_timeout_s``). MQTT has no offsets: the broker's session is the position. A
        checkpointed ``positions`` only contributes the acknowledgements that may not have
        reached the broker before the previous process died."""
        if self._opened:
            raise RuntimeError("MqttSource.open called twice")
        if positions:
            self._expect_session = True
            if positions.get("client_id", self.client_id) != self.client_id:
                raise ValueError(f"positions belong to MQTT client {positions['client_id']!r}, "
                                 f"not {self.client_id!r}")
            # Connection number 0: acknowledged by the previous process.
            for mid, digest in positions.get("unconfirmed_acks", []):
                self._acked_unconfirmed[int(mid)] = (int(digest), 0)
            self._delivered = int(positions.get("delivered", 0))
        self._opened = True
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
        properties.ReceiveMaximum = self.receive_maximum
        self._client.connect_async(self.host, self.port, keepalive=self.keepalive,
                                   clean_start=False, properties=properties)
        self._client.loop_start()
        if not self._subscribed.wait(self.connect_timeout_s) or self._connect_error:
            reason = self._connect_error or "no connection within %.1f s" % self.connect_timeout_s
            self.close()
            raise ConnectionError(f"MQTT broker {self.host}:{self.port}: {reason}")

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        with self._space_or_message:
            while not self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return []
                self._space_or_message.wait(remaining)
            messages: list[Message] = []
            while self._buffer and len(messages) < max_messages:
                topic, payload, mid, session = self._buffer.popleft()
                # A message from a session the broker has lost cannot be acknowledged: its packet
                # id may already name another message in the new session.
                if mid is not None and session == self._session:
                    self._to_ack.append(mid)
                messages.append(Message(topic, payload))
            self._delivered += len(messages)
            self._space_or_message.notify_all()  # wake a network thread waiting for space
            return messages

    def positions(self) -> dict:
        """``delivered``: messages polled so far (all runs, for metrics). ``unconfirmed_acks``:
        [packet id, digest] of what the next ``commit`` will acknowledge and of earlier
        acknowledgements the broker may not have received; after a restart from this checkpoint
        their redeliveries are dropped."""
        with self._lock:
            unconfirmed = {mid: digest for mid, (digest, _) in self._acked_unconfirmed.items()}
            for mid in self._to_ack:
                unconfirmed[mid] = self._unacked[mid]
            return {"client_id": self.client_id, "delivered": self._delivered,
                    "unconfirmed_acks": [[mid, digest] for mid, digest in unconfirmed.items()]}

    def commit(self) -> None:
        """Acknowledge to the broker every message polled so far. Never blocks on the network:
        PUBACKs are queued for paho's network thread (and, while disconnected, not sent at all:
        the broker re-sends those messages on reconnect and they are acknowledged then)."""
        with self._lock:
            mids, self._to_ack = self._to_ack, []
            for mid in mids:
                digest = self._unacked.pop(mid, None)
                if digest is not None:
                    self._acked_unconfirmed[mid] = (digest, self._connection_number)
            connected = self._connected
            self._stats["acknowledged"] += len(mids)
        if connected:
            for mid in mids:
                self._client.ack(mid, 1)

    def close(self) -> None:
        """Disconnect without acknowledging anything more; the session stays on the broker."""
        with self._space_or_message:
            if self._closing:
                return
            self._closing = True
            self._space_or_message.notify_all()  # release a network thread blocked on a full buffer
        if self._opened:
            with self._lock:
                connected = self._connected
            if connected:
                self._flush_acknowledgements()
            self._client.disconnect()
            if connected:
                # Stopping paho's loop right away could drop the DISCONNECT still queued.
                self._disconnected.wait(5.0)
            self._client.loop_stop()

    def _flush_acknowledgements(self, timeout_s: float = 5.0) -> None:
        """Wait until the broker has processed the PUBACKs sent so far. A broker handles a
        connection's packets in order, so the answer to a harmless request sent after them (an
        UNSUBSCRIBE of a filter never subscribed) proves it. Without this, a client reconnecting
        with the same id right after close() takes the session over before the broker has read
        the PUBACKs: they are discarded and the messages come again."""
        self._flushed.clear()
        _, self._flush_mid = self._client.unsubscribe(f"cusense/flush/{self.client_id}")
        if not self._flushed.wait(timeout_s):
            log.warning("MQTT broker %s:%s did not confirm the last acknowledgements within "
                        "%.1f s", self.host, self.port, timeout_s)

    # -- extras for the service -------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool = True, qos: int = 1):
        """Publish (e.g. a fleet status change). Returns paho's MQTTMessageInfo; QoS 1 messages
        published while disconnected are sent after the reconnect."""
        return self._client.publish(topic, payload, qos=qos, retain=retain)

    @property
    def stats(self) -> dict:
        """received (from the broker, duplicates included), duplicates_dropped, reconnects,
        acknowledged, sessions_lost (broker came back without our session), buffered, and
        blocked_s (time the network thread waited for buffer space)."""
        with self._lock:
            return {**self._stats, "buffered": len(self._buffer)}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._connect_error = f"connection refused: {reason_code}"
            log.error("MQTT %s:%s refused the connection: %s", self.host, self.port, reason_code)
            if not self._subscribed.is_set():
                self._subscribed.set()  # let open() fail now rather than after its timeout
            return
        with self._lock:
            self._connection_number += 1
            self._new_message_seen = False
            self._connected = True
            if self._connection_number > 1:
                self._stats["reconnects"] += 1
            if not flags.session_present and (self._connection_number > 1 or self._expect_session):
                # The broker lost (or expired) our session: whatever it held unacknowledged is
                # gone, and its packet ids mean nothing in the new session.
                self._session += 1
                self._stats["sessions_lost"] += 1
                self._unacked.clear()
                self._to_ack.clear()
                self._acked_unconfirmed.clear()
                log.warning("MQTT broker %s:%s has no session for client %r: messages it held "
                            "for this client are lost", self.host, self.port, self.client_id)
        # Subscribing again is harmless with a session present (Retain Handling 1: retained
        # messages are sent only for a subscription that did not exist) and needed without one.
        options = SubscribeOptions(qos=self.qos, retainHandling=1)
        client.subscribe([(topic, options) for topic in self.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            self._connect_error = f"subscription refused: {', '.join(failed)}"
            log.error("MQTT subscription to %s refused: %s", self.topics, failed)
        self._subscribed.set()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        if mid == self._flush_mid:
            self._flushed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            self._connected = False
        if self._closing:
            self._disconnected.set()
        else:
            log.warning("MQTT connection to %s:%s lost (%s); reconnecting",
                        self.host, self.port, reason_code)

    def _on_message(self, client, userdata, msg):
        topic, payload = msg.topic, msg.payload
        if msg.qos == 0:
            self._append(topic, payload, None)
            return
        mid = msg.mid
        digest = message_digest(topic, payload)
        with self._lock:
            self._stats["received"] += 1
            if msg.dup and self._unacked.get(mid) == digest:
                # Re-sent after a reconnect, already buffered or handed out: its acknowledgement
                # comes with the commit of the checkpoint that holds it.
                self._stats["duplicates_dropped"] += 1
                return
            acked = self._acked_unconfirmed.get(mid)
            if msg.dup and acked is not None and acked[0] == digest:
                # Already checkpointed, but the broker never got our acknowledgement: send it
                # again (once connected; until then the broker keeps re-sending on reconnect).
                self._stats["duplicates_dropped"] += 1
                if self._connected:
                    client.ack(mid, 1)
                return
            if not msg.dup:
                if not self._new_message_seen:
                    # The broker re-sends everything unacknowledged right after connecting and
                    # only then anything new: acknowledgements sent on earlier connections that
                    # were not answered by a redelivery did arrive.
                    self._new_message_seen = True
                    current = self._connection_number
                    self._acked_unconfirmed = {m: v for m, v in self._acked_unconfirmed.items()
                                               if v[1] == current}
                # A first delivery reusing a packet id: the broker got our acknowledgement for it.
                self._acked_unconfirmed.pop(mid, None)
            if mid in self._unacked:
                # Cannot happen with a broker that honours Receive Maximum; keep the message (a
                # duplicate is better than a loss) and say so.
                log.error("MQTT broker reused packet id %d while it was unacknowledged", mid)
        self._append(topic, payload, mid, digest)

    def _append(self, topic: str, payload: bytes, mid: int | None, digest: int = 0) -> None:
        """Buffer one message, waiting (and so holding back the broker) while the buffer is full."""
        with self._space_or_message:
            if len(self._buffer) >= self.max_buffered:
                started = time.monotonic()
                while len(self._buffer) >= self.max_buffered and not self._closing:
                    self._space_or_message.wait(0.5)
                self._stats["blocked_s"] += time.monotonic() - started
            if self._closing:
                return  # not acknowledged: the broker keeps it for the next run
            if mid is not None:
                self._unacked[mid] = digest
            else:
                self._stats["received"] += 1
            self._buffer.append((topic, payload, mid, self._session))
            self._space_or_message.notify_all()
