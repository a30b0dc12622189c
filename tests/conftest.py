"""Shared test configuration: the device comes from ``SUBSET_RL_TEST_DEVICE`` (default ``cpu``).

Run the whole suite on a GPU with ``SUBSET_RL_TEST_DEVICE=cuda make test``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

DEVICE_ENV = "SUBSET_RL_TEST_DEVICE"


def test_device() -> torch.device:
    name = os.environ.get(DEVICE_ENV, "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"{DEVICE_ENV}={name} but CUDA is not available")
    return dev


test_device.__test__ = False  # not a test, despite the name


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device every test tensor lives on."""
    return test_device()
