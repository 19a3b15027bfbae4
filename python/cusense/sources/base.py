"""What a source hands the service: raw broker messages, and what decoding makes of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


# slots and not frozen: one is built per broker message, and a frozen dataclass's __init__ sets
# each field through object.__setattr__, twice as slow.
@dataclass(slots=True)
class Message:
    """One broker message. ``partition``/``offset`` are set where the broker has them (Kafka)."""
    topic: str
    payload: bytes
    partition: int | None = None
    offset: int | None = None


@dataclass(frozen=True)
class DeadLetter:
    """A message (or part of one) that could not become readings, and why."""
    topic: str
    partition: int | None
    offset: int | None
    payload: bytes
    reason: str


@dataclass
class Readings:
    """Decoded records: pipeline keys (from the key dictionary), event times (int64 ns), values
    (float64), plus what was dead-lettered. Every message becomes readings, dead letters, or both
    (a JSON array with one bad element: the good ones are kept, the bad one is dead-lettered)."""
    keys: np.ndarray
    timestamps: np.ndarray
    values: np.ndarray
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


class Source(Protocol):
    """A broker the service reads. Calls come from one thread, in this order:
    ``open(positions)`` once, then ``poll`` repeatedly, ``positions()`` when a checkpoint is
    taken (after everything polled so far was processed), ``commit()`` once that checkpoint is
    durable and every sink has committed it, and ``close()``."""

    def open(self, positions: dict | None) -> None:
        """Connect. ``positions`` is what ``positions()`` returned for the checkpoint the service
        restored (None on a fresh start): the source resumes right after it."""

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` messages, waiting at most ``timeout_s`` for the first one."""

    def positions(self) -> dict:
        """JSON-serialisable position just after every message polled so far."""

    def commit(self) -> None:
        """Everything polled so far is checkpointed: acknowledge it to the broker."""

    def close(self) -> None:
        """Disconnect without acknowledging anything more."""
