import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from test_data import _write_mnist_dir

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def data_dir(tmp_path):
    """A directory of MNIST IDX files (60 train, 20 test images) the data sources read."""
    d = tmp_path / "mnist"
    d.mkdir()
    _write_mnist_dir(d, n_train=60, n_test=20)
    return d
