"""cusense: keyed event-time windows and anomaly scores over sensor streams, on GPU or CPU."""
from . import _core
from ._core import (BackendUnavailableError, CapacityError, CheckpointError, ConcurrentUseError,
                    CudaError, OutOfMemoryError)
from ._pipeline import (LateDataWarning, Pipeline, Rolling, Session, Sliding, Tumbling,
                        cuda_available, devices, partition_of, rekey_checkpoints,
                        window_aggregate)
from . import detectors
from .detectors import score
from ._result import Result
from ._time import TimeUnitWarning, to_nanoseconds

__version__ = "0.1.0"

__all__ = [
    "Pipeline", "Tumbling", "Sliding", "Session", "Rolling", "Result", "window_aggregate", "partition_of", "rekey_checkpoints", "detectors", "score", "devices", "cuda_available",
    "to_nanoseconds", "BackendUnavailableError", "CapacityError", "ConcurrentUseError", "CudaError",
    "OutOfMemoryError", "CheckpointError", "TimeUnitWarning", "LateDataWarning",
]
