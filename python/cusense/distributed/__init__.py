"""cusense.distributed: a pipeline partitioned by key over Ray actors, with the single
pipeline's results (see docs/distributed.md). Needs Ray (``pip install 'cusense[ray]'``);
:func:`partition_of` needs only numpy."""
from ._pipeline import DEFAULT_MAX_REPLAY_BYTES, PartitionLostError, Pipeline, ReplayLogFullError
from ._plan import fmix32, partition_of

__all__ = ["Pipeline", "partition_of", "fmix32", "ReplayLogFullError", "PartitionLostError",
           "DEFAULT_MAX_REPLAY_BYTES"]
