"""The names of the course's pruning methods, N:M patterns and recoveries, and their
checks, importable without torch.

The command line builds its ``--help`` and checks its options with these before it
imports any model code (torch, transformers and torchao take seconds to import), so a
typo is answered at once. ``pruning.recipes``, ``pruning.masks`` and ``recover.recipes``
act on them (and re-export them under their old names).
"""
from __future__ import annotations

import numbers

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")  # single weights become zeros: shapes stay
STRUCTURED = ("heads", "mlp", "layers")  # whole heads, neurons or layers go: matrices shrink
METHODS = UNSTRUCTURED + STRUCTURED
CALIBRATED = ("wanda", "sparsegpt", "layers")  # these read calibration text

RECOVERY = ("none", "refit", "distil")
DEFAULT_STEPS = 20  # distillation steps of --recover distil


def parse_pattern(pattern) -> tuple[int, int] | None:
    """``"2:4"`` or ``(2, 4)`` -> ``(2, 4)``: keep N of every M consecutive weights. ``None`` -> ``None``."""
    if pattern is None:
        return None
    if isinstance(pattern, str):
        parts = pattern.replace(" ", "").split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"pattern={pattern!r} is not of the form 'N:M' with two whole numbers, "
                             "e.g. '2:4' (keep 2 of every 4 consecutive weights).")
        n, m = int(parts[0]), int(parts[1])
    elif isinstance(pattern, (tuple, list)) and len(pattern) == 2:
        if not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in pattern):
            raise ValueError(f"pattern={pattern!r}: N and M must be whole numbers, e.g. (2, 4).")
        n, m = int(pattern[0]), int(pattern[1])
    else:
        raise TypeError(f"pattern={pattern!r}: pass a string like '2:4' or a pair like (2, 4).")
    if not 0 < n < m:
        raise ValueError(f"pattern={pattern!r}: need 0 < N < M (N weights kept of every M), "
                         f"got N={n}, M={m}. Use e.g. '2:4' (keep 2 of every 4).")
    return n, m


def check_method(method: str, pattern=None) -> tuple[str, tuple[int, int] | None]:
    """Validate a method name and its pattern (N:M only for the unstructured methods)."""
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not known: choose one of {', '.join(METHODS)} "
                         "(weights: magnitude/wanda/sparsegpt; structures: heads/mlp/layers).")
    pattern = parse_pattern(pattern)
    if pattern is not None and method in STRUCTURED:
        raise ValueError(f"--pattern {pattern[0]}:{pattern[1]} applies to single weights; method "
                         f"{method!r} removes whole {dict(heads='heads', mlp='neurons').get(method, 'layers')}. "
                         "Drop --pattern, or use magnitude/wanda/sparsegpt.")
    return method, pattern


def check_recovery(recover: str, steps: int = DEFAULT_STEPS) -> str:
    if recover not in RECOVERY:
        raise ValueError(f"--recover {recover!r} is not known: choose one of {', '.join(RECOVERY)} "
                         "(refit: closed-form repair of the output projections, seconds; distil: "
                         "refit, then KL distillation from the dense model for --steps steps).")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"--steps {steps!r}: give a whole number of distillation steps >= 0.")
    return recover
