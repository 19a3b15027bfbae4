"""KafkaSource against librdkafka's mock cluster: every message exactly once and in partition
order, replay from a checkpoint's positions (also after kill -9 of a consumer process), offset
commits, outages and errors, and the poll rate next to a bare confluent-kafka consumer."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from kafka_cluster import kafka_cluster  # noqa: E402,F401  (pytest fixture)

from cusense.sources import KafkaSource  # noqa: E402
from cusense.sources.kafka import KafkaSourceError  # noqa: E402

PARTITIONS = 4


@pytest.fixture
def topic(kafka_cluster):
    name = f"readings-{uuid.uuid4().hex[:8]}"
    kafka_cluster.create_topic(name, PARTITIONS)
    return name


def produce(cluster, topic, count, start=0):
    """Messages ``start..start+count-1`` spread round-robin over the partitions; returns
    {partition: [payload, ...]} in offset order."""
    producer = confluent_kafka.Producer({"bootstrap.servers": cluster.bootstrap_servers,
                                         "linger.ms": 20,
                                         "queue.buffering.max.messages": 1_000_000})
    sent = {p: [] for p in range(PARTITIONS)}
    for i in range(start, start + count):
        payload = f"m{i}".encode()
        partition = i % PARTITIONS
        while True:
            try:
                producer.produce(topic, payload, partition=partition)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        sent[partition].append(payload)
    assert producer.flush(30) == 0
    return sent


def poll_all(source, expected, max_messages=1000, deadline_s=30.0):
    """Poll until ``expected`` messages came, then once more to show nothing else is there."""
    got = []
    deadline = time.monotonic() + deadline_s
    while len(got) < expected and time.monotonic() < deadline:
        got += source.poll(max_messages, 0.5)
    got += source.poll(max_messages, 0.5)
    return got


def by_partition(messages):
    out = {}
    for m in messages:
        out.setdefault(m.partition, []).append(m)
    return out


def group_offsets(cluster, topic, group_id):
    consumer = confluent_kafka.Consumer({"bootstrap.servers": cluster.bootstrap_servers,
                                        "group.id": group_id})
    try:
        committed = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return {str(tp.partition): tp.offset for tp in committed if tp.offset >= 0}


def new_group():
    return f"group-{uuid.uuid4().hex[:8]}"


def test_every_message_once_in_partition_order(kafka_cluster, topic):
    sent = produce(kafka_cluster, topic, 5_000)
    source = KafkaSource(kafka_cluster.bootstrap_servers, topic, new_group())
    source.open(None)
    assert source.positions() == {topic: {str(p): 0 for p in range(PARTITIONS)}}
    got = poll_all(source, 5_000, max_messages=700)
    source.close()

    assert len(got) == 5_000
    for partition, messages in by_partition(got).items():
        assert [m.payload for m in messages] == sent[partition]
        assert [m.offset for m in messages] == list(range(len(sent[partition])))
        assert all(m.topic == topic for m in messages)
    assert source.positions() == {topic: {str(p): len(sent[p]) for p in range(PARTITIONS)}}
    assert source.stats["messages"] == 5_000
    assert source.stats["partitions"] == PARTITIONS
    json.dumps(source.positions())  # goes into the checkpoint as is


def test_poll_respects_max_messages_and_timeout(kafka_cluster, topic):
    produce(kafka_cluster, topic, 100)
    source = KafkaSource(kafka_cluster.bootstrap_servers, [topic], new_group())
    source.open(None)
    first = []
    deadline = time.monotonic() + 10
    while not first and time.monotonic() < deadline:
        first = source.poll(7, 1.0)
    assert 1 <= len(first) <= 7
    poll_all(source, 100 - len(first))
    started = time.monotonic()
    assert source.poll(100, 0.3) == []  # nothing left: waits about the timeout, no longer
    assert time.monotonic() - started < 2.0
    source.close()


def test_reopen_at_earlier_positions_replays_exactly_what_followed(kafka_cluster, topic):
    """The crash replay: a checkpoint's positions, later messages polled but never checkpointed,
    close without commit; a new source opened at the checkpoint gets exactly those again."""
    sent = produce(kafka_cluster, topic, 4_000)
    group = new_group()
    source = KafkaSource(kafka_cluster.bootstrap_servers, topic, group)
    source.open(None)
    polled = []
    while len(polled) < 1_500:
        polled += source.poll(250, 1.0)
    checkpoint = json.loads(json.dumps(source.positions()))
    while len(polled) < 3_000:
        polled += source.poll(250, 1.0)
    source.close()
    assert group_offsets(kafka_cluster, topic, group) == {}  # nothing was committed

    replay = KafkaSource(kafka_cluster.bootstrap_servers, topic, group)
    replay.open(checkpoint)
    assert replay.positions() == checkpoint
    got = poll_all(replay, 4_000 - sum(checkpoint[topic].values()))
    replay.close()
    for partition in range(PARTITIONS):
        start = checkpoint[topic][str(partition)]
        messages = by_partition(got).get(partition, [])
        assert [m.payload for m in messages] == sent[partition][start:]
        assert [m.offset for m in messages] == list(range(start, len(sent[partition])))


def test_commit_makes_group_offsets_equal_positions(kafka_cluster, topic):
    produce(kafka_cluster, topic, 2_000)
    group = new_group()
    source = KafkaSource(kafka_cluster.bootstrap_servers, topic, group)
    source.open(None)
    polled = []
    while len(polled) < 1_000:
        polled += source.poll(300, 1.0)
    source.commit()
    committed_at = source.positions()
    assert group_offsets(kafka_cluster, topic, group) == committed_at[topic]
    assert source.stats["commits"] == 1
    poll_all(source, 2_000 - len(polled))
    source.close()  # no commit: the group keeps the offsets of the last commit
    assert group_offsets(kafka_cluster, topic, group) == committed_at[topic]

    # Without a checkpoint a new source starts at the group's committed offsets ...
    resumed = KafkaSource(kafka_cluster.bootstrap_servers, topic, group)
    resumed.open(None)
    assert resumed.positions() == committed_at
    resumed.close()
    # ... but a checkpoint wins over them, even when it is behind.
    behind = {topic: {p: 0 for p in committed_at[topic]}}
    restored = KafkaSource(kafka_cluster.bootstrap_servers, topic, group)
    restored.open(behind)
    assert restored.positions() == behind
    assert len(poll_all(restored, 2_000)) == 2_000
    restored.close()


# A consumer process that checkpoints each batch together with the positions after it, in one
# file renamed into place (the atomic unit a real checkpoint has), then commits.
_CONSUMER_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from cusense.sources import KafkaSource

    bootstrap, topic, group, out_dir, total = sys.argv[1:6]
    batches = sorted(int(name.split(".")[0]) for name in os.listdir(out_dir)
                     if name.endswith(".json"))
    positions = None
    if batches:
        with open(os.path.join(out_dir, f"{batches[-1]}.json")) as f:
            positions = json.load(f)["positions"]
    sequence = batches[-1] + 1 if batches else 0
    source = KafkaSource(bootstrap, topic, group)
    source.open(positions)
    print("ready", flush=True)
    while sum(source.positions()[topic].values()) < int(total):
        messages = source.poll(300, 1.0)
        if not messages:
            continue
        batch = {"messages": [[m.partition, m.offset, m.payload.decode()] for m in messages],
                 "positions": source.positions()}
        path = os.path.join(out_dir, f"{sequence}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(batch, f)
        os.replace(path + ".tmp", path)
        source.commit()
        sequence += 1
        time.sleep(0.02)  # leave time for the test to kill this process mid-stream
    source.close()
""")


def test_kill9_and_restart_from_saved_positions_neither_loses_nor_repeats(
        kafka_cluster, topic, tmp_path):
    total = 12_000
    sent = produce(kafka_cluster, topic, total)
    script = tmp_path / "consumer.py"
    script.write_text(_CONSUMER_SCRIPT)
    out_dir = tmp_path / "checkpoints"
    out_dir.mkdir()
    args = [sys.executable, str(script), kafka_cluster.bootstrap_servers, topic, new_group(),
            str(out_dir), str(total)]

    def checkpoints():
        return len(list(out_dir.glob("*.json")))

    kills = 0
    for kill_after in (3, 10, 18):  # kill -9 three times, each after a few more checkpoints
        process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        target = checkpoints() + kill_after
        deadline = time.monotonic() + 30
        while checkpoints() < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=10)
    assert kills >= 2, "the consumer finished before it could be killed: slow it down"
    final = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr

    received = {p: [] for p in range(PARTITIONS)}
    for sequence in range(checkpoints()):
        batch = json.loads((out_dir / f"{sequence}.json").read_text())
        for partition, offset, payload in batch["messages"]:
            received[partition].append((offset, payload.encode()))
    for partition in range(PARTITIONS):
        assert received[partition] == list(enumerate(sent[partition]))


def test_broker_outage_is_ridden_out(kafka_cluster, topic):
    sent = produce(kafka_cluster, topic, 1_000)
    source = KafkaSource(kafka_cluster.bootstrap_servers, topic, new_group())
    source.open(None)
    got = source.poll(200, 2.0)
    brokers = (1, 2, 3)
    for broker in brokers:
        kafka_cluster.set_broker_up(broker, False)
    try:
        outage_end = time.monotonic() + 1.5
        while time.monotonic() < outage_end:  # only what was prefetched before the outage
            got += source.poll(200, 0.2)
    finally:
        for broker in brokers:
            kafka_cluster.set_broker_up(broker, True)
    produce(kafka_cluster, topic, 1_000, start=1_000)
    got += poll_all(source, 2_000 - len(got), deadline_s=60)
    source.close()
    expected = {p: sent[p] + [f"m{i}".encode() for i in range(1_000, 2_000) if i % PARTITIONS == p]
                for p in range(PARTITIONS)}
    assert {p: [m.payload for m in ms] for p, ms in by_partition(got).items()} == expected


def test_partitions_added_later_are_picked_up(kafka_cluster, topic, monkeypatch):
    """The mock cluster cannot add partitions to a topic, so the source is made to see only
    partitions 0 and 1 when it opens; the periodic metadata refresh then finds 2 and 3."""
    sent = produce(kafka_cluster, topic, 2_000)
    source = KafkaSource(kafka_cluster.bootstrap_servers, topic, new_group(),
                         metadata_refresh_s=0.2)
    real_discover = source._discover_partitions
    monkeypatch.setattr(source, "_discover_partitions",
                        lambda: [tp for tp in real_discover() if tp[1] < 2])
    source.open(None)
    assert source.positions() == {topic: {"0": 0, "1": 0}}
    monkeypatch.setattr(source, "_discover_partitions", real_discover)
    got = poll_all(source, 2_000)
    source.close()
    assert {p: [m.payload for m in ms] for p, ms in by_partition(got).items()} == sent
    assert source.stats["partitions"] == PARTITIONS


def test_errors_are_clear(kafka_cluster, topic):
    with pytest.raises(ValueError, match="enable.auto.commit"):
        KafkaSource(kafka_cluster.bootstrap_servers, topic, "g",
                    config={"enable.auto.commit": True})
    missing = KafkaSource(kafka_cluster.bootstrap_servers, "no-such-topic", new_group())
    with pytest.raises(KafkaSourceError, match="no-such-topic"):
        missing.open(None)
    stale = KafkaSource(kafka_cluster.bootstrap_servers, topic, new_group())
    with pytest.raises(KafkaSourceError, match="recreated"):
        stale.open({topic: {"0": 0, str(PARTITIONS): 5}})
    with pytest.raises(RuntimeError, match="not open"):
        stale.poll(10, 0)

    source = KafkaSource(kafka_cluster.bootstrap_servers, topic, new_group())
    source.open(None)
    # librdkafka reports fatal errors through the error callback: the next poll raises.
    source._on_error(confluent_kafka.KafkaError(confluent_kafka.KafkaError._FATAL,
                                                "fenced by a newer instance", fatal=True))
    with pytest.raises(KafkaSourceError, match="fatal Kafka error: fenced"):
        source.poll(10, 0)
    source.close()
    source.close()  # closing twice is harmless


def _bare_consumer_rate(cluster, topic, total):
    consumer = confluent_kafka.Consumer({"bootstrap.servers": cluster.bootstrap_servers,
                                        "group.id": new_group(), "enable.auto.commit": False,
                                        "auto.offset.reset": "earliest",
                                        # the fetch settings KafkaSource uses by default
                                        "queued.min.messages": 100_000,
                                        "fetch.queue.backoff.ms": 50})
    consumer.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    count = 0
    started = time.perf_counter()
    while count < total:
        for record in consumer.consume(10_000, 1.0):
            if record.error() is None:
                count += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return count / elapsed


def _source_rate(cluster, topic, total):
    source = KafkaSource(cluster.bootstrap_servers, topic, new_group())
    source.open(None)
    count = 0
    started = time.perf_counter()
    while count < total:
        count += len(source.poll(10_000, 1.0))
    elapsed = time.perf_counter() - started
    source.close()
    return count / elapsed


def test_poll_rate_next_to_a_bare_consumer(kafka_cluster, topic):
    """KafkaSource.poll against a consume() loop that only counts, on the same topic.
    CUSENSE_KAFKA_BENCH_MESSAGES sets the message count (500000 for a real measurement)."""
    total = int(os.environ.get("CUSENSE_KAFKA_BENCH_MESSAGES", "50000"))
    produce(kafka_cluster, topic, total)
    bare = _bare_consumer_rate(kafka_cluster, topic, total)
    source = _source_rate(kafka_cluster, topic, total)
    print(f"{total} messages: bare consumer {bare:,.0f}/s, KafkaSource.poll {source:,.0f}/s "
          f"({source / bare:.2f}x)")
    assert source > 0 and bare > 0
