"""Shared fixtures: fixed threads and seeds, tiny models, the embedded model loaded once, a record
of network attempts."""
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle torch threads sleep instead of spinning: on a busy 2-core machine a
# spinning pool makes a tiny model's forward 50x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

from course_lib.core import data, models

# Two threads for a serial run; one per worker under pytest-xdist (`make test`
# runs two workers on a 2-core machine).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

TINY = list(models.BASE_TINY)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the embedded SmolLM2; tests must leave it unpruned."""
    return models.load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_windows(smollm2):
    """Small course-protocol windows for the embedded model: 8 calibration, 4 eval, 128 tokens."""
    _, tokenizer = smollm2
    return data.windows_for(tokenizer, "smollm2-135m", seq_len=128, n_eval=4, n_calib=8)


@pytest.fixture
def network_attempts(monkeypatch):
    """Every connection the code under test tries, recorded as ``(host, port)`` and refused at once
    (``Network is unreachable``), as on a machine without Wi-Fi. "Fails fast" is then a fact about
    what the code did (no attempt, or exactly one and no retry), not about a clock."""
    attempts = []

    def refuse(address):
        attempts.append(tuple(address[:2]) if isinstance(address, tuple) else address)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(address))
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: refuse(address))
    return attempts
