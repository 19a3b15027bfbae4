"""A Kafka cluster for tests and demos: librdkafka's built-in mock cluster.

No Kafka broker is installed where the tests run, but the librdkafka that confluent-kafka ships
contains a mock cluster speaking the Kafka protocol (produce, fetch, list offsets, consumer-group
offset commits). It is reached over TCP on 127.0.0.1, so a service started as a subprocess can
consume from it while the cluster lives in the test process. The AdminClient cannot create
topics on it (the mock has no controller for CreateTopics), so topics are created through
librdkafka's mock C API, called with ctypes.

    pytest:      def test_x(kafka_cluster): kafka_cluster.create_topic("t", 4) ...
    standalone:  python tests/python/kafka_cluster.py [--brokers 3] [--topic name:partitions ...]
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import signal
import threading

import pytest

_ERRSTR_SIZE = 512
_RD_KAFKA_PRODUCER = 0


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka confluent-kafka itself loads (the wheel bundles it under a mangled name),
    so the mock cluster runs the same code as the clients."""
    import confluent_kafka
    package_dir = os.path.dirname(confluent_kafka.__file__)
    bundled = sorted(glob.glob(os.path.join(package_dir, os.pardir, "confluent_kafka.libs",
                                            "librdkafka*.so*")))
    lib = ctypes.CDLL(bundled[0] if bundled else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.c_int]
    for toggle in (lib.rd_kafka_mock_broker_set_down, lib.rd_kafka_mock_broker_set_up):
        toggle.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
    return lib


class MockKafkaCluster:
    """A running mock cluster; it stops on ``close()`` (or when garbage-collected)."""

    def __init__(self, brokers: int = 3):
        self._lib = _librdkafka()
        self._brokers = brokers
        # The mock cluster needs a client handle to own its threads; an idle producer is the
        # cheapest. It never connects anywhere (no bootstrap.servers), so keep it quiet.
        conf = self._lib.rd_kafka_conf_new()
        errstr = ctypes.create_string_buffer(_ERRSTR_SIZE)
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"0", errstr, _ERRSTR_SIZE)
        self._handle = self._lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, _ERRSTR_SIZE)
        if not self._handle:
            raise RuntimeError(f"cannot create the mock cluster's client: {errstr.value.decode()}")
        self._mock = self._lib.rd_kafka_mock_cluster_new(self._handle, brokers)
        if not self._mock:
            self._lib.rd_kafka_destroy(self._handle)
            self._handle = None
            raise RuntimeError("librdkafka could not start its mock cluster")
        self.bootstrap_servers: str = self._lib.rd_kafka_mock_cluster_bootstraps(
            self._mock).decode()

    def create_topic(self, name: str, partitions: int) -> None:
        """Create ``name`` with ``partitions`` partitions (replicated over all brokers, up to 3)."""
        if not self._mock:
            raise RuntimeError("the mock cluster is closed")
        err = self._lib.rd_kafka_mock_topic_create(self._mock, name.encode(), partitions,
                                                   min(3, self._brokers))
        if err:
            raise RuntimeError(f"cannot create topic {name!r}: "
                               f"{self._lib.rd_kafka_err2str(err).decode()}")

    def set_broker_up(self, broker_id: int, up: bool) -> None:
        """Take broker ``broker_id`` (1..brokers) down (its connections are closed and new ones
        refused) or bring it back: an outage clients must ride out."""
        toggle = (self._lib.rd_kafka_mock_broker_set_up if up
                  else self._lib.rd_kafka_mock_broker_set_down)
        err = toggle(self._mock, broker_id)
        if err:
            raise RuntimeError(f"cannot change broker {broker_id}: "
                               f"{self._lib.rd_kafka_err2str(err).decode()}")

    def close(self) -> None:
        if self._mock:
            self._lib.rd_kafka_mock_cluster_destroy(self._mock)
            self._mock = None
        if self._handle:
            self._lib.rd_kafka_destroy(self._handle)
            self._handle = None

    def __enter__(self) -> "MockKafkaCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


@pytest.fixture(scope="session")
def kafka_cluster():
    """One mock cluster for the whole pytest run; give each test its own topic names."""
    with MockKafkaCluster() as cluster:
        yield cluster


def main() -> None:
    parser = argparse.ArgumentParser(description="Run librdkafka's mock Kafka cluster until "
                                     "interrupted and print its bootstrap address.")
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--topic", action="append", default=[], metavar="NAME:PARTITIONS",
                        help="create a topic (repeatable); otherwise producers auto-create "
                             "topics with the mock's default partition count")
    args = parser.parse_args()
    with MockKafkaCluster(args.brokers) as cluster:
        for spec in args.topic:
            name, _, partitions = spec.rpartition(":")
            cluster.create_topic(name, int(partitions))
        print(cluster.bootstrap_servers, flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()


if __name__ == "__main__":
    main()
