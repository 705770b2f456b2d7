"""The names of the course's pruning methods, N:M patterns and recoveries, and their
checks, importable without torch.

(``SCORES``: which data-aware or data-free score chooses what a structured method removes.)
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

# the scores that choose which heads / neurons / layers a structured method removes; the first is the default
SCORES = {"heads": ("contribution", "ablation", "weight-norm"),
          "mlp": ("contribution", "activation", "weight-norm"),
          "layers": ("block-influence",)}
SCORE_MEANING = {"contribution": "each head's or neuron's measured share of the layer output on calibration text",
                 "ablation": "perplexity increase with the head zeroed, one evaluation per head (slow)",
                 "activation": "each neuron's mean |activation| on calibration text",
                 "block-influence": "how much each layer turns the hidden state on calibration text",
                 "weight-norm": "weight norms only, no data (lesson 4 shows it can ruin a model)"}

RECOVERY = ("none", "refit", "distil", "long")
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


def check_score(method: str, score: str | None = None) -> str | None:
    """The score ``method`` will use: ``score`` validated, or the method's default (None: unstructured)."""
    if method not in SCORES:
        if score is not None:
            raise ValueError(f"--score {score!r} chooses which heads, neurons or layers a structured method "
                             f"removes ({', '.join(STRUCTURED)}); --method {method!r} zeroes single weights by "
                             "its own rule: drop --score.")
        return None
    if score is None:
        return SCORES[method][0]
    if score not in SCORES[method]:
        choices = "; ".join(f"{name}: {SCORE_MEANING[name]}" for name in SCORES[method])
        raise ValueError(f"--score {score!r} is not a score for --method {method}: choose one of "
                         f"{', '.join(SCORES[method])} ({choices}).")
    return score


def needs_calibration(method: str, score: str | None = None) -> bool:
    """Whether ``method`` (with ``score``) reads calibration windows."""
    return method in ("wanda", "sparsegpt") or check_score(method, score) not in (None, "weight-norm")


def check_recipe(recipe: str) -> str:
    """A structured cut the pipeline (``ship``) can ship: one of ``STRUCTURED``."""
    if recipe not in STRUCTURED:
        raise ValueError(f"--recipe {recipe!r} is unknown: the pipeline ships {', '.join(STRUCTURED)} (the same "
                         "fraction of heads or of MLP neurons removed from every layer, or of whole layers).")
    return recipe


def check_recovery(recover: str, steps: int = DEFAULT_STEPS) -> str:
    if recover not in RECOVERY:
        raise ValueError(f"--recover {recover!r} is not known: choose one of {', '.join(RECOVERY)} "
                         "(refit: closed-form repair of the output projections, seconds; distil: "
                         "refit, then KL distillation from the dense model for --steps steps; long: the long "
                         "recovery make recover builds, for smollm2-135m's 25% MLP cut).")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"--steps {steps!r}: give a whole number of distillation steps >= 0.")
    return recover


SHIPPED = ("nbits", "int8")  # the shipped file: weight-only MatMulNBits, or smoothed int8 GEMMs
SMOOTH_ALPHA = 0.65  # SmoothQuant's migration strength: measured on SmolLM2 (bench/results.md, "Shipped: int8 GEMMs")


def check_alpha(alpha) -> float:
    """SmoothQuant's migration strength: a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: the migration strength is a number in [0, 1] "
                         "(0: nothing moves to the weights, 1: all of the activations' range does).")
    return float(alpha)
