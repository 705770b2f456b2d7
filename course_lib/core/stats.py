"""How a number is decided: paired comparisons with an interval, spreads over calibration draws.

A lesson says "the pruned model is worse" or "SparseGPT beats Wanda" only when the
measurement decides it. Three habits make that so.

**Paired.** Two models are compared on the *same* tokens. Each token t has a
negative log-likelihood under each model; the perplexity ratio is

    ppl_B / ppl_A = exp(mean_t (nll_B,t - nll_A,t)),

an average of per-token *differences*. Much of what makes one window hard (a rare
word, a code block) is hard for both models and cancels in the difference, so a
paired comparison decides with far less text than two separate perplexities would.

**An interval, by the bootstrap.** How much would the ratio move on other text of
the same kind? We cannot draw new text, but we can redraw the text we have:
cut the evaluation tokens into blocks of ``BLOCK`` consecutive tokens (neighbouring
tokens are correlated, blocks much less so), draw as many blocks *with replacement*,
recompute the ratio, repeat ``RESAMPLES`` times. The middle 95% of those ratios is
the interval (a percentile block bootstrap, seeded: the same inputs give the same
interval on every machine). A comparison is **decided** when its interval excludes a
tie (1.0); otherwise it is "not distinguishable at this size", and the normal
approximation says roughly how much more text would decide it: the interval's
half-width shrinks as 1/sqrt(tokens), so ``(z * se / |mean|)^2`` times the text.

**Calibration draws.** Wanda and SparseGPT learn from a calibration sample. Another
sample gives another pruned model, and on a small model that moves perplexity more
than the evaluation text does. A ranking of methods is claimed only when it holds
in every one of several calibration draws (``DrawComparison``), each draw decided by
its own paired interval; the lesson prints the spread over draws.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

BLOCK = 32         # tokens per bootstrap block
RESAMPLES = 2000   # bootstrap resamples
LEVEL = 0.95       # interval coverage
SAME_WITHIN = 0.001  # an undecided interval this close to 1 reads "the same", not "more text would decide"
SEED = 0           # the bootstrap's generator: the same inputs give the same interval anywhere


def blocks_of(nll: torch.Tensor, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per-block sums and token counts of an (n_windows, tokens) NLL (or NLL difference) tensor.

    Each window is cut into consecutive blocks of ``block`` tokens (the last one may be
    shorter); blocks never cross windows, whose texts are not adjacent.
    """
    values = nll.detach().double().cpu().numpy()
    if values.ndim == 1:
        values = values[None]
    sums, counts = [], []
    for row in values:
        for start in range(0, row.shape[0], block):
            part = row[start:start + block]
            sums.append(part.sum())
            counts.append(part.shape[0])
    return np.asarray(sums), np.asarray(counts, dtype=np.float64)


def bootstrap_means(sums: np.ndarray, counts: np.ndarray, resamples: int = RESAMPLES,
                    seed: int = SEED) -> np.ndarray:
    """Token-weighted means of ``resamples`` block resamples (drawn with replacement)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)


@dataclass(frozen=True)
class PairedRatio:
    """Perplexity of ``other`` over ``base`` on the same tokens, with its bootstrap interval."""

    base: float      # perplexity of the reference model
    other: float     # perplexity of the compared model
    low: float       # interval of the ratio other / base
    high: float
    blocks: int
    tokens: int
    level: float = LEVEL
    more_text: float = float("nan")  # roughly how many times more text would decide it

    @property
    def ratio(self) -> float:
        return self.other / self.base

    @property
    def decided(self) -> bool:
        """The interval excludes a tie."""
        return self.low > 1 or self.high < 1

    @property
    def verdict(self) -> str:
        if self.low > 1:
            return "higher"
        if self.high < 1:
            return "lower"
        return "not distinguishable"

    def interval(self) -> str:
        return f"{self.level:.0%} interval {_fmt(self.low)}-{_fmt(self.high)}"

    def decide_hint(self) -> str:
        """How much more text would decide an undecided comparison, in words."""
        if self.decided:
            return ""
        if max(abs(self.low - 1), abs(self.high - 1)) < SAME_WITHIN:
            # two computations of one function (a runtime, a float64 twin): the estimate of
            # how much text would separate them divides by a difference of rounding errors
            return f"the same to within {SAME_WITHIN:.1%} at this size"
        if not math.isfinite(self.more_text) or self.more_text > 1000:
            return "not distinguishable at this size: no amount of text in reach would separate them"
        return f"not distinguishable at this size: about {math.ceil(self.more_text)}x more text would decide it"

    def record(self) -> dict:
        """The ratio, its interval, the verdict and the sentence, rounded for a JSON record."""
        return {"ratio": round(self.ratio, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "verdict": self.verdict, "text": str(self)}

    def __str__(self) -> str:
        text = (f"{self.other:.2f} vs {self.base:.2f}: ratio {_fmt(self.ratio)} "
                f"({self.interval()}, {self.blocks} blocks of {BLOCK} tokens)")
        return text + (f"; {self.decide_hint()}" if not self.decided else "")


def _fmt(ratio: float) -> str:
    """A ratio to three decimals, or to three significant digits when it is far from 1."""
    return f"{ratio:.3f}" if 0.01 <= ratio < 1000 else f"{ratio:.3g}"


def paired_ratio(nll_base: torch.Tensor, nll_other: torch.Tensor, block: int = BLOCK,
                 resamples: int = RESAMPLES, level: float = LEVEL) -> PairedRatio:
    """Compare two models' per-token NLLs of the same windows (``metrics.token_nll``)."""
    if nll_base.shape != nll_other.shape:
        raise ValueError(f"the two NLL tensors have shapes {tuple(nll_base.shape)} and "
                         f"{tuple(nll_other.shape)}: a paired comparison needs both models' NLL "
                         "of the same windows (metrics.token_nll on one set of windows).")
    diff = nll_other.double() - nll_base.double()
    sums, counts = blocks_of(diff, block)
    means = bootstrap_means(sums, counts, resamples)
    tail = (1 - level) / 2
    low, high = np.exp(np.quantile(means, [tail, 1 - tail]))
    mean = sums.sum() / counts.sum()
    se = float(means.std())
    z = _z(level)
    more = (z * se / abs(mean)) ** 2 if mean != 0 else float("inf")
    return PairedRatio(float(torch.exp(nll_base.double().mean())), float(torch.exp(nll_other.double().mean())),
                       float(low), float(high), len(sums), int(counts.sum()), level, float(more))


def _z(level: float) -> float:
    """The two-sided normal quantile for ``level`` (1.96 for 95%)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Quality:
    """One model's per-token NLL on a set of windows (``metrics.token_nll``): its perplexity,
    its own interval, and paired comparisons with another model's NLL of the same windows."""

    nll: torch.Tensor

    @property
    def perplexity(self) -> float:
        return float(torch.exp(self.nll.double().mean()))

    def vs(self, base: "Quality") -> PairedRatio:
        """This model's perplexity over ``base``'s, paired on the same tokens."""
        return paired_ratio(base.nll, self.nll)

    def interval(self, level: float = LEVEL) -> tuple[float, float]:
        """This perplexity's own (unpaired) bootstrap interval over the same blocks."""
        sums, counts = blocks_of(self.nll)
        tail = (1 - level) / 2
        low, high = np.exp(np.quantile(bootstrap_means(sums, counts), [tail, 1 - tail]))
        return float(low), float(high)

    def window_perplexities(self) -> list[float]:
        """The perplexity of each window alone."""
        return [float(torch.exp(row.double().mean())) for row in self.nll]


@dataclass(frozen=True)
class DrawComparison:
    """Method B against method A over calibration draws: one paired comparison per draw, and
    the comparison over the draws (a two-level bootstrap: draws and blocks both redrawn)."""

    label_a: str
    label_b: str
    draws: tuple  # PairedRatio of B over A, one per calibration draw (same evaluation windows)
    a_values: tuple  # perplexity of A in each draw
    b_values: tuple
    ratio: float = float("nan")  # over the draws: exp(mean over draws of the mean NLL difference)
    low: float = float("nan")
    high: float = float("nan")

    @property
    def b_lower_everywhere(self) -> bool:
        """B is lower over the draws (their interval below 1) and in every draw's own estimate."""
        return self.high < 1 and all(d.ratio < 1 for d in self.draws)

    @property
    def b_higher_everywhere(self) -> bool:
        return self.low > 1 and all(d.ratio > 1 for d in self.draws)

    @property
    def verdict(self) -> str:
        decided = sum(d.decided for d in self.draws)
        if self.b_lower_everywhere:
            return f"{self.label_b} lower over the draws and in each ({decided} of {len(self.draws)} decided alone)"
        if self.b_higher_everywhere:
            return f"{self.label_a} lower over the draws and in each ({decided} of {len(self.draws)} decided alone)"
        return "not decided across draws"

    def __str__(self) -> str:
        spread = lambda v: f"{min(v):.2f}-{max(v):.2f}"  # noqa: E731
        ratios = ", ".join(f"{d.ratio:.3f} [{d.low:.3f}-{d.high:.3f}]" for d in self.draws)
        return (f"{self.label_a} {spread(self.a_values)}, {self.label_b} {spread(self.b_values)} over "
                f"{len(self.draws)} calibration draws; {self.label_b}/{self.label_a} per draw: {ratios}; over the "
                f"draws {self.ratio:.3f} [{self.low:.3f}-{self.high:.3f}]: {self.verdict}")


def compare_over_draws(label_a: str, nll_a: list, label_b: str, nll_b: list, resamples: int = RESAMPLES,
                       level: float = LEVEL) -> DrawComparison:
    """``nll_a[k]`` and ``nll_b[k]``: per-token NLLs of methods A and B calibrated on draw k,
    evaluated on the same windows. Over the draws, each bootstrap resample redraws the
    calibration draws *and* the evaluation blocks, so the interval holds both sources of
    variance; it is rough with few draws, which is why every draw is also shown alone."""
    if len(nll_a) != len(nll_b) or not nll_a:
        raise ValueError(f"{len(nll_a)} draws of {label_a} and {len(nll_b)} of {label_b}: give both "
                         "methods the same calibration draws (at least one).")
    pairs = tuple(paired_ratio(a, b) for a, b in zip(nll_a, nll_b))
    sums = np.stack([blocks_of(b.double() - a.double())[0] for a, b in zip(nll_a, nll_b)])  # draws x blocks
    counts = blocks_of(nll_a[0])[1]
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, sums.shape[0], size=(resamples, sums.shape[0]))
    blocks = rng.integers(0, sums.shape[1], size=(resamples, sums.shape[1]))
    means = np.array([sums[d][:, b].sum(axis=1).mean() / counts[b].sum() for d, b in zip(draws, blocks)])
    tail = (1 - level) / 2
    low, high = np.exp(np.quantile(means, [tail, 1 - tail]))
    ratio = float(np.exp(sums.sum(axis=1).mean() / counts.sum()))
    return DrawComparison(label_a, label_b, pairs, tuple(p.base for p in pairs), tuple(p.other for p in pairs),
                          ratio, float(low), float(high))


# ------------------------------------------------------------------ a median decided as the runs come in
@dataclass(frozen=True)
class MedianInterval:
    """An interval for the median of paired ratios, from the order statistics of the runs so far.

    ``low`` / ``high`` leave out the ``cut`` lowest and ``cut`` highest ratios; ``cut`` is -1 while
    too few runs exist for any interval at this level (then low/high are the range of the runs,
    and nothing is decided).
    """

    median: float
    low: float
    high: float
    runs: int
    cut: int
    level: float = LEVEL

    @property
    def decided(self) -> bool:
        """The interval excludes 1 (and enough runs exist for an interval at all)."""
        return self.cut >= 0 and (self.low > 1 or self.high < 1)


@lru_cache(maxsize=64)
def sequential_cuts(max_runs: int, level: float = LEVEL) -> tuple[int, ...]:
    """How many of the lowest and highest ratios an interval for the median leaves out after
    1, 2, ..., ``max_runs`` paired runs, when it is looked at after every run.

    The sign test behind it: if the two candidates were equally fast, each run's ratio would be
    above 1 or below 1 like a coin toss, so "at most c of n ratios below 1" has the binomial
    probability P(Bin(n, 1/2) <= c). An interval that leaves out c ratios at each end clears 1
    exactly then. Looking after every run and stopping at the first interval that clears 1 gives
    chance many tries: the cuts are chosen so that the chance of *any* false verdict, over every
    look up to ``max_runs``, stays within ``1 - level`` (computed exactly, by following the
    count of ratios below 1 run by run). -1: no interval yet (with fewer than 6 runs even the
    range of the runs would clear 1 by chance more often than 5% of the time).
    """
    if max_runs < 1:
        raise ValueError(f"max_runs={max_runs}: need at least one run.")
    alpha = 1 - level

    def cuts_for(per_look: float) -> list[int]:
        out = []
        for n in range(1, max_runs + 1):
            cdf, c = 0.0, -1
            for k in range(n + 1):
                cdf += math.comb(n, k) / 2 ** n
                if cdf > per_look / 2:
                    break
                c = k
            out.append(c)
        return out

    def false_verdicts(cuts: list[int]) -> float:
        alive = {0: 1.0}  # count of ratios below 1 -> probability, among runs not yet stopped
        stopped = 0.0
        for n, c in enumerate(cuts, start=1):
            step: dict[int, float] = {}
            for below, p in alive.items():
                for nxt in (below, below + 1):
                    step[nxt] = step.get(nxt, 0.0) + p / 2
            alive = {}
            for below, p in step.items():
                if c >= 0 and (below <= c or below >= n - c):
                    stopped += p
                else:
                    alive[below] = p
        return stopped

    lo, hi = 0.0, alpha  # a per-look level of alpha is too lenient once looks repeat; bisect
    for _ in range(60):
        mid = (lo + hi) / 2
        if false_verdicts(cuts_for(mid)) <= alpha:
            lo = mid
        else:
            hi = mid
    return tuple(cuts_for(lo))


def median_interval(ratios, max_runs: int, level: float = LEVEL) -> MedianInterval:
    """The interval for the median of ``ratios`` (one per paired run so far), valid however
    often it is looked at up to ``max_runs`` runs (``sequential_cuts``)."""
    values = np.sort(np.asarray(ratios, dtype=np.float64))
    n = len(values)
    if n == 0:
        raise ValueError("no paired runs yet: time at least one before asking for an interval.")
    if n > max_runs:
        raise ValueError(f"{n} runs but max_runs={max_runs}: the interval was planned for at most "
                         f"{max_runs} looks; plan for as many runs as you will take.")
    cut = sequential_cuts(max_runs, level)[n - 1]
    k = max(cut, 0)
    return MedianInterval(float(np.median(values)), float(values[k]), float(values[n - 1 - k]),
                          n, cut, level)
