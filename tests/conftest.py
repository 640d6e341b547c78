import os

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def quiet_about_a_busy_cpu(monkeypatch):
    """The busy-CPU note (train.busy_cpu_note) follows the machine's load average: keep it out of
    what the tests read. The tests of the note give the load they want themselves."""
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    return pytest.importorskip("torch", reason="PyTorch is a test-only oracle; not installed")
