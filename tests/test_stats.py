"""Paired comparisons with an interval: decided only when the interval excludes a tie."""
import math

import numpy as np
import pytest
import torch

from course_lib.core import stats


def _nll(shift: float, noise: float, seed: int, windows: int = 4, tokens: int = 127) -> tuple:
    """Two models' per-token NLLs of the same text: shared difficulty, a shift, private noise."""
    g = torch.Generator().manual_seed(seed)
    difficulty = torch.rand(windows, tokens, generator=g, dtype=torch.float64) * 6
    base = difficulty + noise * torch.randn(windows, tokens, generator=g, dtype=torch.float64)
    other = difficulty + shift + noise * torch.randn(windows, tokens, generator=g, dtype=torch.float64)
    return base, other


def test_ratio_is_the_perplexity_ratio_and_blocks_cover_every_token():
    base, other = _nll(0.1, 0.3, 0)
    r = stats.paired_ratio(base, other)
    assert r.ratio == pytest.approx(math.exp(other.mean() - base.mean()), rel=1e-12)
    assert r.tokens == base.numel() and r.blocks == 4 * math.ceil(127 / stats.BLOCK)
    assert r.low < r.ratio < r.high


def test_a_clear_shift_is_decided_and_a_tie_is_not():
    base, other = _nll(0.2, 0.3, 1)
    assert stats.paired_ratio(base, other).verdict == "higher"
    assert stats.paired_ratio(other, base).verdict == "lower"
    base, other = _nll(0.0, 0.3, 2)
    tie = stats.paired_ratio(base, other)
    assert tie.verdict == "not distinguishable" and not tie.decided
    assert "not distinguishable at this size" in str(tie)


def test_pairing_decides_what_two_separate_perplexities_cannot():
    # The shared difficulty varies far more than the shift: unpaired, the blocks' perplexities
    # overlap; paired, the per-token differences cancel it and the shift is decided.
    base, other = _nll(0.05, 0.05, 3)
    paired = stats.paired_ratio(base, other)
    assert paired.verdict == "higher"
    sums_a, counts = stats.blocks_of(base)
    sums_b, _ = stats.blocks_of(other)
    a, b = stats.bootstrap_means(sums_a, counts, seed=1), stats.bootstrap_means(sums_b, counts, seed=2)
    assert np.quantile(b, 0.025) < np.quantile(a, 0.975)  # separate intervals overlap


def test_more_text_estimate_is_what_decides_text_like_this():
    # More text "like this": the same per-token differences, repeated. Their mean stays, the
    # interval narrows as 1/sqrt(tokens); the estimate says how many repeats it takes.
    base, other = _nll(0.03, 0.6, 4)
    small = stats.paired_ratio(base, other)
    assert not small.decided and small.more_text > 1
    k = math.ceil(small.more_text)
    assert stats.paired_ratio(base.repeat(2 * k, 1), other.repeat(2 * k, 1)).decided
    assert not stats.paired_ratio(base.repeat(max(1, k // 4), 1), other.repeat(max(1, k // 4), 1)).decided


def test_two_computations_of_one_function_read_the_same_not_more_text():
    # a runtime's logits vs PyTorch's: per-token differences of rounding size. The estimate
    # of "more text" divides by their mean, which the CPU's last bits choose: not printed.
    base, _ = _nll(0.0, 0.3, 5)
    g = torch.Generator().manual_seed(6)
    twin = base + 1e-6 * torch.randn(base.shape, generator=g, dtype=torch.float64)
    same = stats.paired_ratio(base, twin)
    assert not same.decided and "the same to within 0.1%" in str(same) and "more text" not in str(same)
    base, other = _nll(0.0, 0.3, 2)  # a tie of two different models still says what would decide it
    assert "more text would decide it" in str(stats.paired_ratio(base, other))


def test_the_interval_is_the_same_on_every_run():
    base, other = _nll(0.1, 0.3, 5)
    assert str(stats.paired_ratio(base, other)) == str(stats.paired_ratio(base.clone(), other.clone()))


def test_mismatched_windows_are_refused():
    base, other = _nll(0.1, 0.3, 6)
    with pytest.raises(ValueError, match="same windows"):
        stats.paired_ratio(base, other[:3])


def test_a_ranking_holds_only_when_the_draws_agree_and_their_interval_decides():
    draws = [_nll(-0.1, 0.3, s) for s in (7, 8, 9)]
    result = stats.compare_over_draws("A", [a for a, _ in draws], "B", [b for _, b in draws])
    assert result.b_lower_everywhere and "B lower over the draws" in str(result)
    assert result.low < result.ratio < result.high < 1
    mixed = draws[:2] + [_nll(0.1, 0.3, 10)]  # one draw goes the other way
    result = stats.compare_over_draws("A", [a for a, _ in mixed], "B", [b for _, b in mixed])
    assert not result.b_lower_everywhere and result.verdict == "not decided across draws"


def test_the_interval_over_draws_holds_the_calibration_variance_too():
    """Draws that disagree widen the interval: redrawing only the evaluation blocks of their
    average would claim a precision the calibration sample does not have."""
    shifts = (-0.25, -0.02, 0.12)
    draws = [_nll(shift, 0.1, 20 + k) for k, shift in enumerate(shifts)]
    result = stats.compare_over_draws("A", [a for a, _ in draws], "B", [b for _, b in draws])
    average = stats.paired_ratio(torch.stack([a for a, _ in draws]).mean(0), torch.stack([b for _, b in draws]).mean(0))
    assert result.ratio == pytest.approx(average.ratio, rel=1e-9)  # the same estimate...
    assert result.high - result.low > 2 * (average.high - average.low)  # ...with the draws' spread in it


# ------------------------------------------------ the live explorer's interval, and why it is planned for every look
def false_verdict_rate(cuts):
    """Exactly: the chance of any verdict over every look when both are equally fast (all sign paths)."""
    n = len(cuts)
    false = 0
    for path in range(2 ** n):
        below = 0
        for i in range(n):
            below += (path >> i) & 1
            c = cuts[i]
            if c >= 0 and (below <= c or below >= i + 1 - c):
                false += 1
                break
    return false / 2 ** n


def test_looking_after_every_run_keeps_false_verdicts_within_five_percent():
    for max_runs in (6, 9, 12):
        cuts = stats.sequential_cuts(max_runs)
        assert false_verdict_rate(cuts) <= 0.05, max_runs
        assert max(cuts) >= 0, "some look can decide"
    # the naive rule (a 95% interval at every look, as if each were the only one) decides too often
    naive = []
    for n in range(1, 13):
        c, cdf = -1, 0.0
        for k in range(n + 1):
            cdf += math.comb(n, k) / 2 ** n
            if cdf > 0.025:
                break
            c = k
        naive.append(c)
    assert false_verdict_rate(naive) > 0.05


def test_the_median_interval_is_made_of_order_statistics():
    ratios = [1.3, 1.1, 1.4, 1.2, 1.25, 1.35, 1.15, 1.05, 1.45, 0.95]
    cuts = stats.sequential_cuts(12)
    got = stats.median_interval(ratios, 12)
    k = cuts[len(ratios) - 1]
    ordered = sorted(ratios)
    assert (got.low, got.high) == (ordered[k], ordered[-1 - k]) and got.cut == k
    assert got.median == pytest.approx(1.225) and got.decided  # one ratio below 1 of ten
    early = stats.median_interval(ratios[:4], 12)
    assert not early.decided and (early.low, early.high) == (1.1, 1.4)  # the range, deciding nothing
    with pytest.raises(ValueError, match="13 runs but max_runs=12"):
        stats.median_interval(ratios + [1.0, 1.0, 1.0], 12)
