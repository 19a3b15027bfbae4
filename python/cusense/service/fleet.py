"""Fleet status: is every device okay?

A device is one ``{key}`` of the topic template; its channels are separate pipeline keys. Its
status, decided in event time from the pipeline's outputs:

- ``silent``: every channel of the device is silent (the Silence detector reported it and no
  newer record has been scored since); ``since`` = the latest ``silent_since`` of them;
- ``anomalous``: not silent, and a detector raised an alarm on one of its channels less than
  ``alarm_hold`` before the watermark; ``since`` = the first alarm of the run of alarms;
- ``ok`` otherwise; ``since`` = when it stopped being silent or anomalous (first record: its time).

``last_seen`` is the device's largest event time pushed so far.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

NAT = np.iinfo(np.int64).min


class FleetStatus:
    def __init__(self, alarm_hold_ns: int):
        self.alarm_hold_ns = int(alarm_hold_ns)
        self.devices: dict[str, dict] = {}        # device -> status, since, last_alarm
        self.channels: dict[str, set] = {}        # device -> its pipeline keys
        # Per pipeline key (keys are dense: 0, 1, ...): its device and largest event time, kept
        # as arrays so that a push costs numpy work, not a Python step per key.
        self.key_device: list[str | None] = []
        self.key_last_seen = np.zeros(0, dtype=np.int64)
        self._key_touched = np.zeros(0, dtype=bool)   # keys with records in this epoch
        self.silent_keys: set[int] = set()
        self._anomalous: set[str] = set()         # devices whose alarm hold may expire
        self._touched: set[str] = set()           # devices whose status was decided in this epoch
        self._changed: set[str] = set()           # devices whose status changed in this epoch

    # --- state ---------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"devices": self.devices, "channels": {d: sorted(k) for d, k in self.channels.items()},
                "silent_keys": sorted(self.silent_keys), "key_last_seen": self.key_last_seen.tolist()}

    @classmethod
    def from_json(cls, state: dict, alarm_hold_ns: int) -> "FleetStatus":
        fleet = cls(alarm_hold_ns)
        fleet.devices = {d: dict(s) for d, s in state["devices"].items()}
        fleet.channels = {d: set(k) for d, k in state["channels"].items()}
        fleet.silent_keys = set(state["silent_keys"])
        fleet.key_last_seen = np.array(state["key_last_seen"], dtype=np.int64)
        fleet._key_touched = np.zeros(len(fleet.key_last_seen), dtype=bool)
        fleet.key_device = [None] * len(fleet.key_last_seen)
        for device, keys in fleet.channels.items():
            for key in keys:
                fleet.key_device[key] = device
        fleet._anomalous = {d for d, e in fleet.devices.items() if e["status"] == "anomalous"}
        return fleet

    # --- updates -------------------------------------------------------------------------------
    def _set(self, device: str, status: str, since: int) -> None:
        entry = self.devices[device]
        if entry["status"] != status:
            entry["status"], entry["since"] = status, int(since)
            self._changed.add(device)
            if status == "anomalous":
                self._anomalous.add(device)
            else:
                self._anomalous.discard(device)
        self._touched.add(device)

    def _decide(self, device: str, at: int, watermark: int | None) -> None:
        entry = self.devices[device]
        keys = self.channels[device]
        if keys and keys <= self.silent_keys:
            self._set(device, "silent", at)
        elif entry["last_alarm"] != NAT and watermark is not None and \
                entry["last_alarm"] + self.alarm_hold_ns > watermark:
            self._set(device, "anomalous", at)
        else:
            self._set(device, "ok", at)

    def seen(self, keys: np.ndarray, timestamps: np.ndarray, devices_of_keys) -> None:
        """Records pushed: new devices start ``ok``; ``last_seen`` moves forward."""
        if not len(keys):
            return
        top = int(keys.max()) + 1
        if top > len(self.key_last_seen):
            grow = top - len(self.key_last_seen)
            self.key_last_seen = np.concatenate([self.key_last_seen, np.full(grow, NAT, np.int64)])
            self._key_touched = np.concatenate([self._key_touched, np.zeros(grow, bool)])
            self.key_device.extend([None] * grow)
        # Event times are never NaT, so NaT marks a key seen for the first time.
        new_keys = np.unique(keys[self.key_last_seen[keys] == NAT])
        np.maximum.at(self.key_last_seen, keys, timestamps)
        self._key_touched[keys] = True
        if len(new_keys):
            devices, _ = devices_of_keys(new_keys)
            for key, device in zip(new_keys.tolist(), devices.tolist()):
                if device not in self.devices:
                    self.devices[device] = {"status": "ok", "since": int(self.key_last_seen[key]),
                                            "last_alarm": NAT}
                    self.channels[device] = set()
                    self._changed.add(device)
                self.channels[device].add(key)
                self.key_device[key] = device

    def last_seen(self, device: str) -> int:
        return int(max(self.key_last_seen[key] for key in self.channels[device]))

    def silence(self, keys, last_seen, silent_since, back_at, back, devices_of_keys, watermark) -> None:
        """Silence detector events, in event-time order."""
        if not len(keys):
            return
        devices, _ = devices_of_keys(keys)
        for key, device, since, at, is_back in zip(keys.tolist(), devices.tolist(), silent_since.tolist(),
                                                   back_at.tolist(), back.tolist()):
            if is_back:
                self.silent_keys.discard(key)
                self._decide(device, at, watermark)
            else:
                self.silent_keys.add(key)
                self._decide(device, since, watermark)

    def alarms(self, devices: np.ndarray, timestamps: np.ndarray, watermark) -> None:
        for device, t in zip(devices.tolist(), timestamps.tolist()):
            entry = self.devices[device]
            entry["last_alarm"] = max(entry["last_alarm"], t)
            self._decide(device, t, watermark)

    def advance(self, watermark: int | None) -> None:
        """Alarms older than ``alarm_hold`` expire as the watermark moves on."""
        if watermark is None:
            return
        for device in list(self._anomalous):   # only these can change here: O(anomalous), not O(fleet)
            entry = self.devices[device]
            if entry["last_alarm"] + self.alarm_hold_ns <= watermark:
                self._decide(device, entry["last_alarm"] + self.alarm_hold_ns, watermark)

    # --- epoch output --------------------------------------------------------------------------
    def take_epoch(self) -> tuple[pd.DataFrame, list[str]]:
        """(status rows of every device seen or changed in this epoch, devices that changed)."""
        seen = {self.key_device[key] for key in np.flatnonzero(self._key_touched).tolist()}
        rows = sorted(seen | self._touched | self._changed)
        changed = sorted(self._changed)
        self._touched, self._changed = set(), set()
        self._key_touched[:] = False
        frame = pd.DataFrame({
            "device": pd.Series(rows, dtype=object),
            "status": pd.Series([self.devices[d]["status"] for d in rows], dtype=object),
            "since": _utc([self.devices[d]["since"] for d in rows]),
            "last_seen": _utc([self.last_seen(d) for d in rows]),
        })
        return frame, changed

    def status_message(self, device: str) -> bytes:
        """The JSON published to ``.../status/{device}``."""
        import json
        e = self.devices[device]
        return json.dumps({"device": device, "status": e["status"], "since": int(e["since"]),
                           "last_seen": self.last_seen(device)}).encode()


def _utc(values) -> pd.Series:
    arr = np.asarray(values, dtype=np.int64)
    return pd.Series(pd.to_datetime(arr.view("datetime64[ns]"), utc=True))
