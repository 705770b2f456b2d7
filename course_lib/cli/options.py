"""Checked command-line numbers: a bad value is one line naming the option and its range.

``argparse`` calls a ``type=`` function on the text; an ``ArgumentTypeError`` it
raises becomes ``error: argument --runs: ...`` and exit code 2. ``Parser`` prints
that one line (not the whole usage block) and never a traceback.
"""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr, exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def int_in(low: int, high: int):
    """An argparse type: a whole number in ``low..high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give one in "
                                             f"{low}..{high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; give a whole number "
                                             f"in {low}..{high}")
        return value
    parse.__name__ = f"int in {low}..{high}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a fraction in [0, 1) (everything removed would leave no model)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction in "
                                         "[0, 1), e.g. 0.5") from None
    if not math.isfinite(value) or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is outside [0, 1); give a fraction in [0, 1), "
                                         "e.g. 0.5")
    return value


def use_threads(args) -> None:
    """``--threads`` for all the command runs; torch is imported here, once the options are checked."""
    import torch

    torch.set_num_threads(args.threads)


def check_lengths(model, args) -> None:
    """--seq-len and --latency-tokens must fit the model's context (positions it can embed)."""
    config = model.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    for option, value in (("--seq-len", getattr(args, "seq_len", None)),
                          ("--latency-tokens", getattr(args, "latency_tokens", None))):
        if context and value and value > context:
            raise ValueError(f"{option} {value} is longer than the model's context ({context} "
                             f"positions): give {option} in {2 if option == '--seq-len' else 1}..{context}.")


# the ranges of the course's numeric options (the upper ends reject typos, not real runs)
THREADS = int_in(1, 1024)
RUNS = int_in(1, 10_000)
TOKENS = int_in(1, 131_072)      # a prefill length
SEQ_LEN = int_in(2, 131_072)     # a window needs an input and a next token
WINDOWS = int_in(1, 100_000)     # eval / calibration windows
