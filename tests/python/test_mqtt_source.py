"""MqttSource against a real mosquitto broker: exactly-once hand-out across commits, crashes
(close without commit, kill -9 of a consumer process), broker restarts and back-pressure."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

mqtt = pytest.importorskip("paho.mqtt.client")

from cusense.sources import MqttSource  # noqa: E402
from mqtt_broker import mqtt_broker, restart_mosquitto, start_mosquitto, stop_mosquitto  # noqa: E402,F401


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def publisher(mqtt_broker):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("pub"),
                         protocol=mqtt.MQTTv5)
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish_all(client, messages, qos=1):
    """Publish (topic, payload) pairs and wait until the broker has every one."""
    infos = []
    for i, (topic, payload) in enumerate(messages):
        infos.append(client.publish(topic, payload, qos=qos))
        if i >= 20_000:  # paho cannot have more than 65535 unacknowledged packet ids
            infos[i - 20_000].wait_for_publish(30)
    for info in infos:
        info.wait_for_publish(30)


def numbered(topics, count):
    """count messages spread over topics, payloads '<topic>:<n>' so order per topic is checkable."""
    return [(topics[i % len(topics)], f"{topics[i % len(topics)]}:{i}".encode())
            for i in range(count)]


def poll_until(source, count, timeout_s=15.0, commit=False):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += source.poll(count - len(got), 0.5)
        if commit:
            source.commit()
    return got


def poll_quiet(source, quiet_s=1.0):
    """Everything that still arrives until nothing has for quiet_s."""
    got = []
    while True:
        batch = source.poll(10_000, quiet_s)
        if not batch:
            return got
        got += batch


def open_source(broker, topics, client_id, positions=None, **options):
    source = MqttSource(broker.host, broker.port, topics, client_id, **options)
    source.open(positions)
    return source


def as_pairs(messages):
    return [(m.topic, m.payload) for m in messages]


def test_everything_polled_once_in_order_per_topic(mqtt_broker, publisher):
    prefix = unique("order")
    topics = [f"{prefix}/a", f"{prefix}/b", f"{prefix}/c"]
    sent = numbered(topics, 3000)
    with open_source(mqtt_broker, f"{prefix}/#", unique("c")) as source:
        publish_all(publisher, sent)
        got = poll_until(source, len(sent), commit=True)
        got += poll_quiet(source, 0.5)
        assert sorted(as_pairs(got)) == sorted(sent)
        for topic in topics:  # MQTT orders messages per topic, not across topics
            assert [p for t, p in as_pairs(got) if t == topic] == [p for t, p in sent if t == topic]
        stats = source.stats
        assert stats["received"] == 3000 and stats["duplicates_dropped"] == 0
        assert stats["acknowledged"] == 3000
        assert source.positions()["delivered"] == 3000
        assert all(m.partition is None and m.offset is None for m in got)


def test_uncommitted_messages_are_replayed_committed_ones_never(mqtt_broker, publisher):
    prefix, client_id = unique("replay"), unique("c")
    sent = numbered([f"{prefix}/x"], 400)
    source = open_source(mqtt_broker, f"{prefix}/#", client_id)
    publish_all(publisher, sent)
    committed = poll_until(source, 150)
    source.commit()
    uncommitted = poll_until(source, 100)
    source.close()  # a crash before the next checkpoint: no commit

    with open_source(mqtt_broker, f"{prefix}/#", client_id) as restarted:
        got = poll_until(restarted, 250)
        got += poll_quiet(restarted, 0.5)
    assert as_pairs(committed) == sent[:150]
    assert as_pairs(uncommitted) == sent[150:250]
    assert as_pairs(got) == sent[150:], "replay of the uncommitted, then the rest, once each"


def test_checkpoint_durable_but_acks_lost(mqtt_broker, publisher):
    """The process dies after the checkpoint is durable but before its acknowledgements reach
    the broker: restarted from that checkpoint, the redelivered messages are dropped."""
    prefix, client_id = unique("acklost"), unique("c")
    sent = numbered([f"{prefix}/x"], 50)
    source = open_source(mqtt_broker, f"{prefix}/#", client_id)
    publish_all(publisher, sent[:30])
    first = poll_until(source, 30)
    checkpoint = json.loads(json.dumps(source.positions()))  # as a checkpoint file would hold it
    source.close()  # died before commit() could acknowledge
    assert as_pairs(first) == sent[:30]
    assert checkpoint["delivered"] == 30 and len(checkpoint["unconfirmed_acks"]) == 30

    restarted = open_source(mqtt_broker, f"{prefix}/#", client_id, positions=checkpoint)
    publish_all(publisher, sent[30:])
    got = poll_until(restarted, 20) + poll_quiet(restarted, 0.5)
    assert as_pairs(got) == sent[30:]
    assert restarted.stats["duplicates_dropped"] == 30
    restarted.commit()
    restarted.close()
    # The redeliveries were acknowledged again: a third run sees nothing.
    with open_source(mqtt_broker, f"{prefix}/#", client_id) as third:
        assert poll_quiet(third, 1.0) == []


def test_positions_of_another_client_are_refused(mqtt_broker):
    source = MqttSource(mqtt_broker.host, mqtt_broker.port, "x/#", "me")
    with pytest.raises(ValueError, match="someone-else"):
        source.open({"client_id": "someone-else", "delivered": 0, "unconfirmed_acks": []})


def test_open_fails_clearly_without_broker():
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        MqttSource("127.0.0.1", 1, "x/#", unique("c"), connect_timeout_s=1.0).open(None)


CONSUMER_PROCESS = textwrap.dedent("""
    import json, sys, time
    from cusense.sources import MqttSource
    host, port, topics, client_id, first, second = sys.argv[1:7]
    source = MqttSource(host, int(port), topics, client_id)
    source.open(None)
    def take(count):
        got = []
        while len(got) < count:
            got += source.poll(count - len(got), 1.0)
        return [m.payload.decode() for m in got]
    committed = take(int(first))
    checkpoint = source.positions()
    source.commit()
    pending = take(int(second))
    print(json.dumps({"committed": committed, "checkpoint": checkpoint, "pending": pending}),
          flush=True)
    time.sleep(600)  # killed here, before the next checkpoint
""")


def test_kill_9_before_commit_redelivers_to_restarted_consumer(mqtt_broker, publisher):
    prefix, client_id = unique("kill"), unique("c")
    topics = [f"{prefix}/a", f"{prefix}/b"]
    sent = numbered(topics, 500)
    # Subscribe once so the broker queues for this session while the child starts.
    open_source(mqtt_broker, f"{prefix}/#", client_id).close()
    publish_all(publisher, sent)
    child = subprocess.Popen(
        [sys.executable, "-c", CONSUMER_PROCESS, mqtt_broker.host, str(mqtt_broker.port),
         f"{prefix}/#", client_id, "200", "150"],
        stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(child.stdout.readline())
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert report["committed"] == [p.decode() for _, p in sent[:200]]
    assert report["pending"] == [p.decode() for _, p in sent[200:350]]

    with open_source(mqtt_broker, f"{prefix}/#", client_id,
                     positions=report["checkpoint"]) as restarted:
        got = poll_until(restarted, 300) + poll_quiet(restarted, 0.5)
    assert as_pairs(got) == sent[200:], "the killed consumer's uncommitted messages, once"


def test_broker_restart_mid_stream_loses_and_doubles_nothing(tmp_path):
    broker = start_mosquitto(tmp_path / "broker")
    try:
        prefix, client_id = unique("restart"), unique("c")
        topics = [f"{prefix}/a", f"{prefix}/b"]
        sent = numbered(topics, 600)
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique("pub"),
                                protocol=mqtt.MQTTv5)
        publisher.connect(broker.host, broker.port)
        publisher.loop_start()
        source = open_source(broker, f"{prefix}/#", client_id, reconnect_min_s=0.1,
                             reconnect_max_s=0.5)
        publish_all(publisher, sent[:400])
        got = poll_until(source, 100)
        source.commit()                  # acknowledged before the restart
        got += poll_until(source, 100)   # handed out, unacknowledged across the restart

        stop_mosquitto(broker)
        source.commit()                  # while disconnected: the acks cannot be sent
        restart_mosquitto(broker)
        publisher.loop_stop()            # the publisher reconnects too
        publisher.reconnect()
        publisher.loop_start()
        publish_all(publisher, sent[400:])
        got += poll_until(source, 400) + poll_quiet(source, 1.0)
        assert sorted(as_pairs(got)) == sorted(sent), "nothing lost, nothing twice"
        for topic in topics:
            assert [p for t, p in as_pairs(got) if t == topic] == [p for t, p in sent if t == topic]
        stats = source.stats
        assert stats["reconnects"] >= 1 and stats["sessions_lost"] == 0
        assert stats["duplicates_dropped"] >= 200  # at least everything handed out before
        source.commit()
        source.close()
        publisher.disconnect()
        publisher.loop_stop()
        # The acknowledgements that could not be sent during the outage went out after it.
        with open_source(broker, f"{prefix}/#", client_id) as again:
            assert poll_quiet(again, 1.0) == []
    finally:
        stop_mosquitto(broker)


def test_slow_poller_keeps_buffer_bounded(mqtt_broker, publisher):
    prefix = unique("slow")
    sent = numbered([f"{prefix}/x"], 2000)
    with open_source(mqtt_broker, f"{prefix}/#", unique("c"), max_buffered=50) as source:
        assert source.receive_maximum == 50
        publish_all(publisher, sent)
        time.sleep(1.0)
        # The broker holds the rest: it never has more than Receive Maximum unacknowledged out.
        assert source.stats["buffered"] <= 50 and source.stats["received"] <= 50
        got = []
        while len(got) < len(sent):
            batch = source.poll(20, 5.0)
            assert batch, "stalled"
            got += batch
            source.commit()
            assert source.stats["buffered"] <= 50
        assert as_pairs(got) == sent


def test_qos0_flood_blocks_network_thread_and_close_does_not_hang(mqtt_broker, publisher):
    """QoS 0 is not flow controlled by the broker: a full buffer blocks paho's network thread."""
    prefix = unique("qos0")
    sent = numbered([f"{prefix}/x"], 2000)
    source = open_source(mqtt_broker, f"{prefix}/#", unique("c"), qos=0, max_buffered=50)
    publish_all(publisher, sent, qos=0)
    deadline = time.monotonic() + 5
    while source.stats["blocked_s"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert source.stats["buffered"] == 50
    source.commit()  # nothing to acknowledge with QoS 0, and must not wait for the network thread
    started = time.monotonic()
    source.close()
    assert time.monotonic() - started < 5


def test_acknowledgements_held_for_a_checkpoint_interval_do_not_stall_or_drop(mqtt_broker,
                                                                             publisher):
    """With acknowledgements held for over a second the broker's default limits (20 in flight
    for MQTT 3 clients, 1000 queued then dropped) would stall or drop; MQTT 5 Receive Maximum
    and an unlimited queue let it flow."""
    prefix = unique("hold")
    sent = numbered([f"{prefix}/x"], 20_000)
    with open_source(mqtt_broker, f"{prefix}/#", unique("c")) as source:
        publish_all(publisher, sent)
        got, last_commit = [], time.monotonic()
        deadline = time.monotonic() + 60
        while len(got) < len(sent) and time.monotonic() < deadline:
            got += source.poll(5000, 0.5)
            if time.monotonic() - last_commit >= 1.2:
                source.commit()
                last_commit = time.monotonic()
        assert as_pairs(got) == sent
        assert source.stats["duplicates_dropped"] == 0


def test_published_retained_status_reaches_a_new_subscriber(mqtt_broker):
    prefix = unique("fleet")
    with open_source(mqtt_broker, f"{prefix}/in/#", unique("svc")) as service:
        service.publish(f"{prefix}/status/pump-7", b"degraded", retain=True).wait_for_publish(5)
    with open_source(mqtt_broker, f"{prefix}/status/#", unique("viewer")) as viewer:
        got = poll_until(viewer, 1, timeout_s=5)
        assert as_pairs(got) == [(f"{prefix}/status/pump-7", b"degraded")]
        # Clear the retained message (empty retained payload) so the broker forgets it.
        viewer.publish(f"{prefix}/status/pump-7", b"", retain=True).wait_for_publish(5)
