import os

import numpy as np
import pytest

import cusense


def _cuda_skip_reason():
    if not cusense._core.cuda_built():
        return "CUDA backend not built"
    if not cusense.devices():
        return "no usable CUDA device"
    return None


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    """Every backend-dependent test runs on cpu and cuda; cuda skips with the reason."""
    if request.param == "cuda":
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param


@pytest.fixture
def rng(request):
    """A fresh seed per run (CUSENSE_TEST_SEED reproduces one), reported on failure."""
    seed = int(os.environ.get("CUSENSE_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)
