"""cusense: keyed event-time windows and anomaly scores over sensor streams, on GPU or CPU."""
from . import _core
from ._core import BackendUnavailableError, CapacityError, CudaError, OutOfMemoryError
from ._pipeline import Pipeline, Tumbling, cuda_available, devices, window_aggregate
from ._result import Result
from ._time import to_nanoseconds

__version__ = "0.1.0"

__all__ = [
    "Pipeline", "Tumbling", "Result", "window_aggregate", "devices", "cuda_available",
    "to_nanoseconds", "BackendUnavailableError", "CapacityError", "CudaError", "OutOfMemoryError",
]
