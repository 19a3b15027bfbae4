"""Persistent mapping of (device id, channel) pairs to dense uint32 pipeline keys."""
from __future__ import annotations

import numpy as np
import pandas as pd

_FORMAT_VERSION = 1


class KeyDictionary:
    """Assigns each distinct ``(device, channel)`` string pair a dense uint32 key, in first-seen
    order (0, 1, 2, ...), and remembers it for the life of the service (``to_json`` goes into the
    checkpoint). At most ``max_keys`` pairs: a pair that does not fit gets ``KeyDictionary.FULL``
    from ``ids`` and is not added; the caller must not push such readings (the decoder
    dead-letters them)."""

    #: What ``ids`` returns for a pair that did not fit under ``max_keys``. Never a real key,
    #: because ``max_keys`` is at most ``FULL`` and keys are ``0 .. max_keys - 1``.
    FULL = np.uint32(0xFFFF_FFFF)

    def __init__(self, max_keys: int = 1_000_000):
        if isinstance(max_keys, bool) or not isinstance(max_keys, (int, np.integer)):
            raise TypeError(f"max_keys must be an int, got {type(max_keys).__name__}")
        if not 1 <= max_keys <= int(self.FULL):
            raise ValueError(f"max_keys must be in 1..{int(self.FULL)}, got {max_keys}")
        self.max_keys = int(max_keys)
        self._key_of_pair: dict[tuple[str, str], int] = {}
        # Object arrays indexed by key make lookup() one fancy-indexing call. They grow by
        # doubling; entries at and beyond len(self) are unused.
        self._devices = np.empty(16, dtype=object)
        self._channels = np.empty(16, dtype=object)

    def __len__(self) -> int:
        return len(self._key_of_pair)

    def __repr__(self) -> str:
        return f"KeyDictionary({len(self)} keys, max_keys={self.max_keys})"

    def ids(self, devices, channels) -> np.ndarray:
        """The uint32 key of each ``(devices[i], channels[i])`` pair, adding unseen pairs in order
        of first appearance. Pairs that would take the dictionary past ``max_keys`` get
        ``KeyDictionary.FULL`` and are not added (the earlier new pairs of the batch still are)."""
        devices = _as_object_array(devices, "devices")
        channels = _as_object_array(channels, "channels")
        if len(devices) != len(channels):
            raise ValueError(f"devices and channels differ in length: {len(devices)} != {len(channels)}")
        if len(devices) == 0:
            return np.empty(0, dtype=np.uint32)
        # One dictionary lookup per distinct pair, not per reading: factorize each column (codes in
        # first-seen order), combine the codes into one integer per pair and factorize that.
        # use_na_sentinel=False keeps a stray None/NaN as a value of its own, so that _add
        # rejects it instead of factorize hiding it behind code -1.
        device_codes, device_uniques = pd.factorize(devices, use_na_sentinel=False)
        channel_codes, channel_uniques = pd.factorize(channels, use_na_sentinel=False)
        pair_codes, pair_uniques = pd.factorize(device_codes.astype(np.int64) * len(channel_uniques)
                                                + channel_codes)
        key_of_pair = self._key_of_pair
        distinct_keys = np.empty(len(pair_uniques), dtype=np.uint32)
        for i, combined in enumerate(pair_uniques.tolist()):
            pair = (device_uniques[combined // len(channel_uniques)],
                    channel_uniques[combined % len(channel_uniques)])
            key = key_of_pair.get(pair)
            if key is None:
                key = self._add(pair)
            distinct_keys[i] = key
        return distinct_keys[pair_codes]

    def lookup(self, keys) -> tuple[np.ndarray, np.ndarray]:
        """The ``(devices, channels)`` object arrays of the given keys."""
        keys = np.asarray(keys)
        if keys.dtype.kind not in "iu":
            raise TypeError(f"keys must be integers, got dtype {keys.dtype}")
        if keys.size and (keys.min() < 0 or keys.max() >= len(self)):
            bad = keys[(keys < 0) | (keys >= len(self))][0]
            raise KeyError(f"key {int(bad)} is not in the dictionary ({len(self)} keys)")
        return self._devices[keys], self._channels[keys]

    def to_json(self) -> dict:
        """A JSON-serialisable snapshot: the pairs in key order."""
        n = len(self)
        return {"version": _FORMAT_VERSION, "max_keys": self.max_keys,
                "pairs": [[d, c] for d, c in zip(self._devices[:n].tolist(), self._channels[:n].tolist())]}

    @classmethod
    def from_json(cls, snapshot: dict) -> "KeyDictionary":
        """The dictionary ``to_json`` described, with the same keys."""
        if not isinstance(snapshot, dict) or snapshot.get("version") != _FORMAT_VERSION:
            raise ValueError(f"not a key dictionary snapshot of version {_FORMAT_VERSION}")
        keys = cls(snapshot["max_keys"])
        pairs = snapshot["pairs"]
        if len(pairs) > keys.max_keys:
            raise ValueError(f"snapshot has {len(pairs)} pairs, more than max_keys={keys.max_keys}")
        for entry in pairs:
            if (not isinstance(entry, (list, tuple)) or len(entry) != 2
                    or not all(isinstance(s, str) for s in entry)):
                raise ValueError(f"snapshot pair {entry!r} is not [device, channel] strings")
            pair = (entry[0], entry[1])
            if pair in keys._key_of_pair:
                raise ValueError(f"snapshot lists pair {pair!r} twice")
            keys._add(pair)
        return keys

    def _add(self, pair: tuple[str, str]) -> int:
        if not (isinstance(pair[0], str) and isinstance(pair[1], str)):
            raise TypeError(f"device and channel must be strings, got {pair!r}")
        key = len(self._key_of_pair)
        if key >= self.max_keys:
            return int(self.FULL)
        if key == len(self._devices):
            self._devices = np.concatenate([self._devices, np.empty(key, dtype=object)])
            self._channels = np.concatenate([self._channels, np.empty(key, dtype=object)])
        self._devices[key], self._channels[key] = pair
        self._key_of_pair[pair] = key
        return key


def _as_object_array(strings, name: str) -> np.ndarray:
    array = np.asarray(strings, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array
