"""What every lesson does first, in one call: fix seeds and threads, load the
model, cut the windows, and say what is running where.

    lesson = start("smollm2-135m")
    lesson.perplexity()                    # of lesson.model on the eval windows
    lesson.latency({"dense": dense, "pruned": pruned})   # side by side, ratios
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch

from ..core import data, metrics, models, stats, timing
from ..core.timing import Measurement


@dataclass
class Lesson:
    name: str
    model: torch.nn.Module
    tokenizer: object
    windows: data.Windows
    device: str
    threads: int
    source: str = "pydoc"

    def calibration(self, draw: int, n_calib: int | None = None, source: str | None = None) -> torch.Tensor:
        """Calibration windows of another draw (``data.make_windows``): same length, same count
        (or ``n_calib``), another sample of the text's first half; the eval windows stay."""
        return data.windows_for(self.tokenizer, self.name, source=source or self.source,
                                seq_len=self.windows.calib.shape[1], n_eval=self.windows.eval.shape[0],
                                n_calib=n_calib or self.windows.calib.shape[0], draw=draw).calib

    def perplexity(self, model=None, windows: torch.Tensor | None = None) -> float:
        """Perplexity on the lesson's eval windows, rounded to 2 decimals (stable across runs)."""
        return round(self.quality(model, windows).perplexity, 2)

    def quality(self, model=None, windows: torch.Tensor | None = None) -> stats.Quality:
        """Per-token NLL on the lesson's eval windows (or ``windows``): the perplexity, and
        ``.vs(other)`` for a paired comparison with an interval (``core.stats``)."""
        return stats.Quality(metrics.token_nll(model or self.model,
                                               self.windows.eval if windows is None else windows))

    def claim(self, text: str, holds: bool, evidence: str = "", needs_real_model: bool = False) -> "Held":
        """``claim`` for this lesson's model (see the module function).

        Returns a ``Held`` (true when the claim holds) that a notebook does not echo,
        so a claim can end a cell without a stray ``True`` under it.
        """
        return Held(claim(text, holds, evidence, needs_real_model, self.name))

    def copy_model(self):
        """An independent copy (to keep a dense model beside a pruned one)."""
        return copy.deepcopy(self.model)

    def latency(self, candidates: dict, tokens: int = 128, runs: int = 7, baseline: str | None = None,
                decides: Callable[[dict], bool] | None = None, attempts: int = 3) -> dict[str, Measurement]:
        """Prefill latency of several models, interleaved run by run; prints ratios to the first.

        ``decides(result)``: whether the measurement's spread decides what the lesson claims
        from it; a spread too wide (a burst of load) is measured again, up to ``attempts``
        times in all, and each new measurement is printed."""
        for attempt in range(attempts if decides is not None else 1):
            if attempt:
                print("the spread is too wide to decide: measured again")
            result = timing.compare_prefill(candidates, tokens=tokens, runs=runs, warmup=2,
                                            threads=self.threads, device=self.device)
            base = result[baseline or next(iter(result))]
            for label, m in result.items():
                print(f"{label:>24}: {m.median_ms:8.1f} ms (IQR {m.iqr_ms:.1f} ms, {m.runs} runs)  "
                      f"ratio to {base.label}: {m.ratio_to(base):.2f}x")
            if decides is None or decides(result):
                break
        return result


class Held:
    """Whether a claim held; truthy like a bool, and silent as the last value of a notebook cell."""

    def __init__(self, holds: bool):
        self.holds = bool(holds)

    def __bool__(self) -> bool:
        return self.holds

    def __eq__(self, other) -> bool:
        return self.holds == bool(other)

    def __hash__(self) -> int:
        return hash(self.holds)

    def __repr__(self) -> str:
        return f"Held({self.holds})"

    def _ipython_display_(self) -> None:  # the claim line printed above is the output
        pass


def claim(text: str, holds: bool, evidence: str = "", needs_real_model: bool = False,
          model_name: str | None = None) -> bool:
    """Print one claim of a lesson with the numbers that decide it: ``✓ text  [evidence]``.

    A lesson states each measured fact through this call, right after the measurement,
    so the words and the numbers are one thing: when a future change moves a number,
    the stored output shows ✗ and nbval fails. ``needs_real_model`` marks a claim about
    trained weights (quality orderings, timing effects that need real matrix sizes): on
    a tiny random stand-in (``tiny-*``) it prints ``·`` (not decided) instead of ✓/✗.
    Returns ``holds``.
    """
    holds = bool(holds)
    stand_in = model_name is not None and model_name.startswith("tiny-")
    mark = "·" if (needs_real_model and stand_in) else ("✓" if holds else "✗")
    suffix = "  (random weights: not decided)" if mark == "·" else ""
    print(f"{mark} {text}" + (f"  [{evidence}]" if evidence else "") + suffix)
    return holds


def start(model_name: str = "smollm2-135m", device: str | None = None, seq_len: int = 128,
          n_eval: int = 8, n_calib: int = 8, threads: int = 2, source: str = "pydoc",
          seed: int = 0) -> Lesson:
    """Load ``model_name`` and the course-protocol windows; print what runs where."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    model, tokenizer = models.load(model_name, device=device)
    device = next(model.parameters()).device.type
    windows = data.windows_for(tokenizer, model_name, source=source, seq_len=seq_len,
                               n_eval=n_eval, n_calib=n_calib)
    params = metrics.count_parameters(model)["total"]
    print(f"model  : {model_name} ({type(model).__name__}, {params / 1e6:.1f} M parameters, "
          f"{str(next(model.parameters()).dtype).replace('torch.', '')})")
    print(f"device : {device}, {threads} CPU threads, torch {torch.__version__.split('+')[0]}")
    print(f"text   : {source}; eval {n_eval} x {seq_len} tokens from the middle, "
          f"calibration {n_calib} x {seq_len} from the start (disjoint)")
    return Lesson(model_name, model, tokenizer, windows, device, threads, source)

