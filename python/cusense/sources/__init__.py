"""Sources for ``cusense serve``: MQTT and Kafka consumers and the payload decoder."""
from .base import DeadLetter, Message, Readings, Source

_LAZY = {"MqttSource": ".mqtt", "KafkaSource": ".kafka", "Decoder": ".payloads",
         "TopicTemplate": ".payloads", "KeyDictionary": ".keydict",
         "encode_binary_batch": ".payloads"}


def __getattr__(name):
    # Broker clients are optional dependencies: import them only when asked for.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Message", "DeadLetter", "Readings", "Source", *_LAZY]
