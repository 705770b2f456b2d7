"""Progress bars for long steps, shown only where someone watches a terminal.

``bar(...)`` is ``tqdm`` on stderr with ``disable=None``: tqdm then draws only when
stderr is a terminal, so notebook outputs (the kernel's stderr is not a TTY) and
nbval replays stay free of progress bars, and so do pipes and CI logs. ``quiet()``
turns them off altogether (the command line's ``--json`` mode), as does the
environment variable ``COURSE_QUIET=1``.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from tqdm import tqdm

_QUIET = [False]


def is_quiet() -> bool:
    return _QUIET[0] or os.environ.get("COURSE_QUIET", "") not in ("", "0")


@contextmanager
def quiet(flag: bool = True):
    """No progress bars inside the block."""
    before, _QUIET[0] = _QUIET[0], flag
    try:
        yield
    finally:
        _QUIET[0] = before


def bar(iterable=None, *, total=None, desc: str | None = None, unit: str = "it", leave: bool = False):
    """A tqdm bar on stderr, drawn only on a terminal and never when quiet."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=True if is_quiet() else None, dynamic_ncols=True)
