"""A real mosquitto broker for tests: ``start_mosquitto``/``stop_mosquitto``/``restart_mosquitto``
and the session-scoped ``mqtt_broker`` fixture.

The broker is configured the way docs/mqtt.md asks production brokers to be configured for
``MqttSource``: persistence on (a restart keeps persistent sessions and their queued QoS 1
messages), no limit on the messages queued for an offline or slow client (mosquitto silently
drops QoS 1 messages beyond ``max_queued_messages``), and in-flight messages bounded by the
Receive Maximum that each MQTT 5 client announces.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def mosquitto_binary() -> str | None:
    """The broker binary: on PATH, or where Debian installs it (/usr/sbin is often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    fallback = Path("/usr/sbin/mosquitto")
    return str(fallback) if fallback.is_file() and os.access(fallback, os.X_OK) else None


@dataclass
class MosquittoHandle:
    host: str
    port: int
    directory: Path          # config, persistence database and log live here
    process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_config(handle: MosquittoHandle) -> Path:
    config = handle.directory / "mosquitto.conf"
    lines = [
        f"listener {handle.port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {handle.directory}/",
        # Saved on a clean shutdown (SIGTERM) anyway; the periodic save narrows what a
        # kill -9 of the broker itself would lose.
        "autosave_interval 5",
        # Never drop queued QoS 1 messages (the default limit is 1000 per client).
        "max_queued_messages 0",
        "max_queued_bytes 0",
        # MQTT 5 clients announce their own Receive Maximum; this bounds MQTT 3 clients.
        "max_inflight_messages 65535",
        f"log_dest file {handle.log_path}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Run as root, mosquitto would switch to the 'mosquitto' user, which cannot write here.
        lines.append("user root")
    config.write_text("\n".join(lines) + "\n")
    return config


def _wait_listening(handle: MosquittoHandle, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {handle.process.returncode}:\n"
                               f"{handle.log_tail()}")
        try:
            with socket.create_connection((handle.host, handle.port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {handle.port}:\n{handle.log_tail()}")


def _launch(handle: MosquittoHandle) -> None:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto broker not installed (Debian/Ubuntu: apt-get install mosquitto)")
    config = _write_config(handle)
    handle.process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
    _wait_listening(handle)


def start_mosquitto(tmpdir, port: int | None = None) -> MosquittoHandle:
    """Start a broker listening on 127.0.0.1 (a free port unless ``port`` is given), keeping its
    config, persistence database and log in ``tmpdir``. Skips the test when mosquitto is missing."""
    directory = Path(tmpdir)
    directory.mkdir(parents=True, exist_ok=True)
    handle = MosquittoHandle(host="127.0.0.1", port=port or _free_port(), directory=directory)
    _launch(handle)
    return handle


def stop_mosquitto(handle: MosquittoHandle, kill: bool = False) -> None:
    """Stop the broker: SIGTERM (it saves its persistence database on the way out), or SIGKILL
    with ``kill=True`` (it loses what changed since the last autosave)."""
    process = handle.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def restart_mosquitto(handle: MosquittoHandle, kill: bool = False) -> MosquittoHandle:
    """Stop and start the broker again on the same port with the same persistence database."""
    stop_mosquitto(handle, kill=kill)
    deadline = time.monotonic() + 10
    while True:  # the port may linger for a moment after the old process exits
        try:
            _launch(handle)
            return handle
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory):
    """One broker for the whole test session: an object with ``host`` and ``port``."""
    handle = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield handle
    stop_mosquitto(handle)
