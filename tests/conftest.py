import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/testing.py

# Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter; the switch is
# read when a kernel is decorated, so it must be set before anything imports mqnet_fast.ops.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Encoders and decoded image folders go to a fresh cache, never the user's ~/.cache."""
    os.environ["MQNET_FAST_CACHE"] = str(tmp_path_factory.mktemp("mqnet-fast-cache"))
    yield


SHARED_CIFAR10 = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "shared", "data", "cifar10-jpeg.tar.gz")


@pytest.fixture(scope="session")
def shared_cifar10():
    """The shared CIFAR-10 archive's ImageArrays, decoded once per session (into the private cache)."""
    if not os.path.exists(SHARED_CIFAR10):
        pytest.skip("shared CIFAR-10 archive not present")
    from mqnet_fast.data import load_imagefolder

    return load_imagefolder(SHARED_CIFAR10)
