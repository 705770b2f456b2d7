"""Where a stored measurement came from: the command, the commit, the machine, when, how long.

Every record the course stores and a lesson loads (``bench/pareto.json``,
``bench/recovery_curve.json``) carries the same ``provenance`` dict, and
``teaching.stored.provenance`` prints it as one line under the result.
"""
from __future__ import annotations

import platform
import subprocess
import time

import torch


def cpu() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return name


def machine() -> str:
    """One line naming the processor (and the GPU, if any), for benchmark reports."""
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu()}{gpu}"


def commit() -> str:
    """The checkout's short commit, marked when tracked files had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(command: str, seconds: float) -> dict:
    """The ``provenance`` dict of a record measured now by ``command`` in ``seconds``."""
    return {"command": command, "commit": commit(), "machine": machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "seconds": round(seconds)}
