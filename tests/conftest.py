import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Tests use tiny tensors: one intra-op thread per process avoids OpenMP oversubscription when
# pytest-xdist runs several workers on a 2-core machine (it made tiny ops 50x slower).
torch.set_num_threads(1)
try:
    import numba

    # numba's worker threads left spinning after a parallel kernel slow torch's own ops down
    numba.set_num_threads(1)
except ImportError:
    pass

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def austen_dir():
    path = os.path.abspath(os.path.join(SHARED, "corpora", "austen"))
    if not os.path.isdir(path):
        pytest.skip("../shared/corpora/austen not present")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
