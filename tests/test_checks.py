"""Exercise checks pass good solutions, fail stubs and typical mistakes with a useful hint;
the student edition carries no solution code."""
import math

import nbformat
import pytest
import torch

from course_lib.teaching import checks, student


def mask_2_4(w):
    groups = w.abs().reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(w.shape)


def stub(*_):
    raise NotImplementedError


def test_2_4_mask_check():
    assert checks.check_2_4_mask(mask_2_4)
    assert "not written yet" in str(checks.check_2_4_mask(stub))
    assert "at most 2" in str(checks.check_2_4_mask(lambda w: torch.ones_like(w, dtype=torch.bool)))
    smallest = lambda w: ~mask_2_4(w)  # noqa: E731
    assert "smallest" in str(checks.check_2_4_mask(smallest))
    rows_not_inputs = lambda w: mask_2_4(w.T.contiguous()).T if w.shape[0] % 4 == 0 else mask_2_4(w).flip(-1)  # noqa: E731
    assert not checks.check_2_4_mask(rows_not_inputs)


def test_zero_head_check():
    def good(w, head, d):
        out = w.clone()
        out[:, head * d:(head + 1) * d] = 0
        return out

    def off_by_one(w, head, d):
        return good(w, head + 1, d) if (head + 2) * d <= w.shape[1] else good(w, head - 1, d)

    def in_place(w, head, d):
        w[:, head * d:(head + 1) * d] = 0
        return w

    assert checks.check_zero_head(good)
    assert "off by" in str(checks.check_zero_head(off_by_one))
    assert "in place" in str(checks.check_zero_head(in_place))


def _nearest_by_enumeration(n, kv, want):
    """An independent solution: try every subset size by brute force over (whole groups, per group)."""
    g = n // kv
    best = None
    for m in range(kv):
        for k in range(g):
            count = m * g + (kv - m) * k
            if 0 < count < n and (best is None or (abs(count - want), count) < (abs(best[0] - want), best[0])):
                best = (count, list(range(m * g)) + [grp * g + i for grp in range(m, kv) for i in range(k)])
    return best[1]


def test_gqa_nearest_check_passes_a_right_answer_and_names_each_mistake():
    assert checks.check_gqa_nearest(_nearest_by_enumeration)
    # only "the same count per group": valid, but not the nearest where whole groups do better
    per_group_only = lambda n, kv, want: [grp * (n // kv) + i for grp in range(kv)  # noqa: E731
                                          for i in range(max(1, math.ceil(want / kv - 0.5)))]
    message = str(checks.check_gqa_nearest(per_group_only))
    assert "NOT YET" in message and "whole groups" in message
    first_k = lambda n, kv, want: list(range(want))  # noqa: E731  (splits a group unevenly)
    assert "same number" in str(checks.check_gqa_nearest(first_k))
    ties_up = lambda n, kv, want: _nearest_by_enumeration(n, kv, want + 0.01)  # noqa: E731
    assert "ties go to the smaller" in str(checks.check_gqa_nearest(ties_up))
    off_by_far = lambda n, kv, want: _nearest_by_enumeration(n, kv, n - 1)  # noqa: E731
    assert "nearest valid count is" in str(checks.check_gqa_nearest(off_by_far))
    everything = lambda n, kv, want: list(range(n))  # noqa: E731
    assert "at least one" in str(checks.check_gqa_nearest(everything))


def test_nearest_gqa_removal_is_valid_nearest_and_prefers_low_scores():
    from course_lib.pruning import heads

    assert heads.gqa_valid_counts(9, 3) == [0, 3, 5, 6, 7, 8]
    assert heads.gqa_valid_counts(4, 4) == [0, 1, 2, 3]  # no GQA: any count
    for n, kv in ((9, 3), (32, 4), (14, 2), (4, 1), (12, 12)):
        g = n // kv
        for want in range(1, n):
            chosen = heads.nearest_gqa_removal(n, kv, want)
            left = {g - sum(h // g == grp for h in chosen) for grp in range(kv)} - {0}
            assert len(left) == 1 and len(chosen) == len(_nearest_by_enumeration(n, kv, want)), (n, kv, want)
    scores = [5, 5, 5, 1, 1, 1, 5, 5, 5]  # group 1 is the weakest: a whole-group choice takes it
    assert heads.nearest_gqa_removal(9, 3, 3, scores) == [3, 4, 5]


def test_ideal_speedup_check():
    def good(h, n, d, r, v):
        return (8 * h * n * d + 2 * h * v) / (8 * h * (n - r) * d + 2 * h * v)

    assert checks.check_ideal_speedup(good)
    assert "lm_head" in str(checks.check_ideal_speedup(lambda h, n, d, r, v: n / (n - r)))
    assert "upside down" in str(checks.check_ideal_speedup(lambda *a: 1 / good(*a)))


def test_slice_mlp_check():
    def good(gate, up, down, keep):
        return gate[keep], up[keep], down[:, keep]

    assert checks.check_slice_mlp(good)
    assert "columns" in str(checks.check_slice_mlp(lambda g, u, d, k: (g[k], u[k], d[k])))


def test_strip_solutions_keeps_the_signature_and_indentation():
    source = "def f(x):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    out = student.strip_solutions(source)
    assert "return x + 1" not in out and out.startswith("def f(x):")
    namespace = {}
    exec(out, namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)
    with pytest.raises(ValueError, match="unbalanced"):
        student.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


def int8_rows(w):
    scale = w.abs().amax(dim=1) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


def test_int8_rows_check():
    assert checks.check_int8_rows(int8_rows)
    assert "not written yet" in str(checks.check_int8_rows(stub))
    per_tensor = lambda w: (torch.round(w / (w.abs().max() / 127)).to(torch.int8), w.abs().max() / 127)  # noqa: E731
    assert "one scale per output row" in str(checks.check_int8_rows(per_tensor))
    truncated = lambda w: ((w / int8_rows(w)[1][:, None]).trunc().to(torch.int8), int8_rows(w)[1])  # noqa: E731
    assert "round to the nearest" in str(checks.check_int8_rows(truncated))
    assert "torch.int8" in str(checks.check_int8_rows(lambda w: (int8_rows(w)[0].float(), int8_rows(w)[1])))
