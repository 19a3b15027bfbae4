"""``cusense serve``: cusense as a long-lived service between a device fleet and storage."""
from .config import ConfigError, ServiceConfig, load_config
from .service import Service, serve

__all__ = ["Service", "serve", "load_config", "ServiceConfig", "ConfigError"]
