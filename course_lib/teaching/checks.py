"""Exercise checks: run a student's function on cases they cannot see, answer with a hint.

Every check returns a ``CheckResult`` that prints as one line: a pass, or the
first thing that is wrong, said the way a teaching assistant would say it
("group 3 of row 0 keeps 3 weights; a 2:4 mask keeps at most 2").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    message: str

    def __str__(self) -> str:
        return ("PASSED: " if self.passed else "NOT YET: ") + self.message

    def __repr__(self) -> str:
        return str(self)

    def __bool__(self) -> bool:
        return self.passed


def _run(fn: Callable, *args):
    """Call the student's function; turn a crash into a hint instead of a traceback."""
    try:
        return fn(*args), None
    except NotImplementedError:
        return None, CheckResult(False, "the function is not written yet (it raises NotImplementedError).")
    except Exception as err:  # the student's bug, reported as a hint
        return None, CheckResult(False, f"the function raised {type(err).__name__}: {err}")


def _tensor_check(out, expected_shape) -> CheckResult | None:
    if not isinstance(out, torch.Tensor):
        return CheckResult(False, f"return a torch.Tensor, not {type(out).__name__}.")
    if tuple(out.shape) != tuple(expected_shape):
        return CheckResult(False, f"wrong shape: got {tuple(out.shape)}, expected {tuple(expected_shape)}.")
    return None


# ------------------------------------------------------------- lesson 1: a head's columns
def check_zero_head(fn: Callable[[torch.Tensor, int, int], torch.Tensor]) -> CheckResult:
    """``fn(o_weight, head, head_dim)`` returns a copy of ``o_weight`` with that head's columns zeroed."""
    generator = torch.Generator().manual_seed(1)
    for hidden, n_heads, head_dim, head in ((8, 4, 2, 1), (12, 3, 4, 2), (6, 6, 1, 0), (10, 5, 2, 4)):
        w = torch.randn(hidden, n_heads * head_dim, generator=generator) + 3.0  # no accidental zeros
        original = w.clone()
        out, error = _run(fn, w, head, head_dim)
        if error is not None:
            return error
        if (bad := _tensor_check(out, w.shape)) is not None:
            return bad
        if not torch.equal(w, original):
            return CheckResult(False, "the input weight was changed in place: return a modified *copy* "
                                      "(w.clone()), so the original can be restored.")
        zero_cols = (out == 0).all(dim=0).nonzero().flatten().tolist()
        want = list(range(head * head_dim, (head + 1) * head_dim))
        if zero_cols != want:
            if zero_cols and len(zero_cols) == head_dim:
                shift = (zero_cols[0] - want[0]) // head_dim
                return CheckResult(False, f"you zeroed head {head + shift}'s columns {zero_cols[0]}..{zero_cols[-1]}, "
                                          f"not head {head}'s ({want[0]}..{want[-1]}): off by {shift} head(s).")
            if (out == 0).all(dim=1).any():
                return CheckResult(False, "you zeroed rows; a head is a block of *columns* of o_proj "
                                          "(the input side, which reads the concatenated heads).")
            return CheckResult(False, f"zero columns {want[0]}..{want[-1]} (head {head} x head_dim {head_dim}); "
                                      f"you zeroed {len(zero_cols)} columns.")
        if not torch.equal(out[:, [c for c in range(w.shape[1]) if c not in want]],
                           original[:, [c for c in range(w.shape[1]) if c not in want]]):
            return CheckResult(False, "other heads' columns changed too: only touch the chosen head.")
    return CheckResult(True, "4 hidden cases: the right block of columns, the input untouched.")


# ----------------------------------------------------- lesson 2: the nearest valid GQA removal
def check_gqa_nearest(fn: Callable[[int, int, int], list[int]]) -> CheckResult:
    """``fn(n_heads, n_kv_heads, n_remove)``: a GQA-valid head set of the valid size nearest ``n_remove``.

    ``n_remove`` is not a multiple of the KV heads, so "the same number from every group"
    cannot give it exactly: the student combines whole groups and per-group removals,
    and compares with ``heads.nearest_gqa_removal`` (ties go to the smaller count, at least 1).
    """
    from ..pruning import heads as lib

    # hidden layouts: SmolLM2, TinyLlama, Qwen2.5, Gemma-3, and two made up
    for n_heads, n_kv, n_remove in ((9, 3, 4), (32, 4, 6), (14, 2, 5), (32, 4, 10), (6, 2, 1), (12, 3, 10)):
        out, error = _run(fn, n_heads, n_kv, n_remove)
        if error is not None:
            return error
        try:
            chosen = sorted(int(h) for h in out)
        except TypeError:
            return CheckResult(False, f"return a list of head indices, not {type(out).__name__}.")
        want = len(lib.nearest_gqa_removal(n_heads, n_kv, n_remove))
        if len(set(chosen)) != len(chosen):
            return CheckResult(False, f"{chosen} names a head twice: every head can go only once.")
        if chosen and (chosen[0] < 0 or chosen[-1] >= n_heads):
            return CheckResult(False, f"head indices run from 0 to {n_heads - 1}; got {chosen}.")
        group = n_heads // n_kv
        left = [group - sum(1 for h in chosen if h // group == g) for g in range(n_kv)]
        if len({n for n in left if n > 0}) > 1:
            return CheckResult(False, f"{n_heads} heads, {n_kv} KV heads (groups of {group}): removing {chosen} "
                                      f"leaves {left} query heads in the groups. Every group that stays must keep "
                                      "the same number: remove whole groups, then the same count from each group left.")
        if not any(left):
            return CheckResult(False, f"{chosen} removes every head of the layer; a layer keeps at least one.")
        if len(chosen) != want:
            valid = [c for c in lib.gqa_valid_counts(n_heads, n_kv) if c > 0]
            if abs(len(chosen) - n_remove) == abs(want - n_remove):
                hint = " Both are equally near: a tie goes to the smaller count (remove less, keep more)."
            elif len(chosen) % n_kv == 0 and want % n_kv:
                hint = (" You only tried the same count per group; whole groups (and whole groups plus "
                        "the same count from each group left) give other valid counts.")
            else:
                hint = ""
            return CheckResult(False, f"{n_heads} heads / {n_kv} KV heads, asked for {n_remove}: you removed "
                                      f"{len(chosen)}, a valid count, but the nearest valid count is {want} "
                                      f"(valid: {valid}; ties go to the smaller).{hint}")
    return CheckResult(True, "6 hidden layouts (SmolLM2's, TinyLlama's, Qwen2.5's among them): valid and nearest.")


# ------------------------------------------------------------- lesson 3: the ideal speedup
def check_ideal_speedup(fn: Callable[[int, int, int, int, int], float]) -> CheckResult:
    """``fn(hidden, n_heads, head_dim, removed_heads, vocab)``: ideal speedup of one MHA layer + lm_head.

    Count 2 FLOPs per multiply-add; per token, one layer's attention projections
    cost 2 * 4 * hidden * (n_heads * head_dim) and the lm_head 2 * hidden * vocab.
    """
    for hidden, heads, head_dim, removed, vocab in ((64, 4, 16, 1, 100), (768, 12, 64, 6, 50257),
                                                    (576, 9, 64, 3, 49152), (32, 8, 4, 2, 10)):
        dense = 2 * 4 * hidden * heads * head_dim + 2 * hidden * vocab
        pruned = 2 * 4 * hidden * (heads - removed) * head_dim + 2 * hidden * vocab
        want = dense / pruned
        out, error = _run(fn, hidden, heads, head_dim, removed, vocab)
        if error is not None:
            return error
        if not isinstance(out, (int, float)):
            return CheckResult(False, f"return a number, not {type(out).__name__}.")
        if abs(out - want) > 1e-6 * want:
            without_head = (2 * 4 * hidden * heads * head_dim) / (2 * 4 * hidden * (heads - removed) * head_dim)
            if abs(out - without_head) < 1e-6 * without_head:
                return CheckResult(False, "you left out the lm_head: it costs the same before and after, "
                                          "and it belongs in both totals.")
            if abs(out - 1 / want) < 1e-6:
                return CheckResult(False, "upside down: speedup = dense FLOPs / pruned FLOPs (above 1).")
            return CheckResult(False, f"for hidden={hidden}, {heads} heads of {head_dim}, {removed} removed, "
                                      f"vocab={vocab}: expected {want:.4f}, got {out:.4f}.")
    return CheckResult(True, "4 hidden configurations, including GPT-2's: the ideal speedup is right.")


# ------------------------------------------------------------- lesson 4: slicing a gated MLP
def check_slice_mlp(fn: Callable) -> CheckResult:
    """``fn(gate, up, down, keep)`` returns the sliced ``(gate, up, down)`` keeping neurons ``keep``."""
    generator = torch.Generator().manual_seed(4)
    for hidden, width, keep in ((6, 8, [0, 3, 5]), (4, 10, [1, 2, 9]), (5, 5, [4])):
        gate, up = torch.randn(width, hidden, generator=generator), torch.randn(width, hidden, generator=generator)
        down = torch.randn(hidden, width, generator=generator)
        out, error = _run(fn, gate, up, down, torch.tensor(keep))
        if error is not None:
            return error
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            return CheckResult(False, "return three tensors: (gate, up, down).")
        for name, got, shape in zip(("gate", "up", "down"), out, ((len(keep), hidden),) * 2 + ((hidden, len(keep)),)):
            if (bad := _tensor_check(got, shape)) is not None:
                hint = " (down_proj reads the neurons: slice its *columns*)" if name == "down" else \
                       " (gate/up produce the neurons: slice their *rows*)"
                return CheckResult(False, f"{name}: {bad.message}{hint}")
        x = torch.randn(3, hidden, generator=generator)
        mask = torch.zeros(width)
        mask[keep] = 1
        want = (torch.nn.functional.silu(x @ gate.T) * (x @ up.T) * mask) @ down.T
        got = (torch.nn.functional.silu(x @ out[0].T) * (x @ out[1].T)) @ out[2].T
        if not torch.allclose(got, want, atol=1e-5):
            return CheckResult(False, "the shapes are right but the output differs from zeroing those neurons: "
                                      "keep the *same* indices in all three matrices, in the same order.")
    return CheckResult(True, "3 hidden MLPs: the sliced MLP equals the zeroed one.")


# ------------------------------------------------------------- lesson 5: the 2:4 mask
def check_2_4_mask(fn: Callable[[torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(weight)`` returns a bool keep-mask keeping the 2 largest |w| of every 4 consecutive inputs."""
    generator = torch.Generator().manual_seed(5)
    for rows, cols in ((2, 8), (5, 16), (3, 4), (7, 32)):
        w = torch.randn(rows, cols, generator=generator)
        out, error = _run(fn, w)
        if error is not None:
            return error
        if (bad := _tensor_check(out, w.shape)) is not None:
            return bad
        keep = out.bool()
        per_group = keep.reshape(rows, cols // 4, 4).sum(-1)
        if (per_group > 2).any():
            r, g = (per_group > 2).nonzero()[0].tolist()
            return CheckResult(False, f"group {g} of row {r} keeps {per_group[r, g].item()} weights; "
                                      "a 2:4 mask keeps at most 2 of every 4 consecutive weights.")
        if (per_group < 2).any():
            r, g = (per_group < 2).nonzero()[0].tolist()
            return CheckResult(False, f"group {g} of row {r} keeps only {per_group[r, g].item()}: keep exactly 2 "
                                      "(pruning more than half loses accuracy for nothing).")
        groups = w.abs().reshape(rows, cols // 4, 4)
        best = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        if not torch.equal(keep.reshape(rows, cols // 4, 4), best):
            if torch.equal(keep.reshape(rows, -1, 4), torch.zeros_like(best).scatter_(
                    -1, (-groups).topk(2, dim=-1).indices, True)):
                return CheckResult(False, "you kept the 2 *smallest* of each group: keep the largest |w|.")
            return CheckResult(False, "2 per group, but not the 2 largest |w|: groups are 4 consecutive "
                                      "*input* columns of one row (reshape to (rows, cols // 4, 4)).")
    return CheckResult(True, "4 hidden matrices: 2 of every 4 kept, always the largest.")


# ------------------------------------------------------------- lesson 5: Wanda's score
def check_wanda_mask(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> CheckResult:
    """``fn(weight, inputs, sparsity)``: bool keep-mask by Wanda's score |W_ij| * ||X_j||_2, per row.

    ``inputs`` is (tokens, in_features). Compared with ``pruning.wanda`` on hidden matrices.
    """
    from ..pruning import masks, wanda

    generator = torch.Generator().manual_seed(11)
    for rows, cols, tokens, sparsity in ((4, 8, 5, 0.5), (6, 16, 9, 0.25), (3, 12, 7, 0.75), (8, 32, 20, 0.5)):
        w = torch.randn(rows, cols, generator=generator)
        x = torch.randn(tokens, cols, generator=generator) * torch.rand(cols, generator=generator).pow(3) * 10
        w_before, x_before = w.clone(), x.clone()
        out, error = _run(fn, w, x, sparsity)
        if error is not None:
            return error
        if (bad := _tensor_check(out, w.shape)) is not None:
            return bad
        if not (torch.equal(w, w_before) and torch.equal(x, x_before)):
            return CheckResult(False, "your function changed its inputs: build the mask, leave W and X alone.")
        keep = out.bool()
        sq = x.pow(2).sum(0)
        want = masks.scores_to_mask(wanda.wanda_scores(w, sq), sparsity, "row")
        if torch.equal(keep, want):
            continue
        n_keep = int(want[0].sum())
        kept = keep.sum(1)
        if kept.min() != kept.max() or int(kept[0]) != n_keep:
            if int(keep.sum()) == int(want.sum()):
                return CheckResult(False, "the right number of weights overall, but not in every row: Wanda "
                                          "compares weights *within each output row* (top-k along dim=1).")
            return CheckResult(False, f"row 0 keeps {int(kept[0])} of {cols} weights; at sparsity {sparsity} "
                                      f"each row keeps {n_keep}.")
        like = lambda score: torch.equal(keep, masks.scores_to_mask(score, sparsity, "row"))  # noqa: E731
        if like(w.abs()):
            return CheckResult(False, "this is magnitude pruning: the score must also weigh each weight by "
                                      "the norm of its input channel, ||X_j||_2 = sqrt(sum over tokens of x_j^2).")
        if like(w.abs() * sq.unsqueeze(0)):
            return CheckResult(False, "you weighed by the sum of squares: take its square root, ||X_j||_2.")
        if like(w.abs() * x.abs().sum(0).unsqueeze(0)) or like(w.abs() * x.abs().mean(0).unsqueeze(0)):
            return CheckResult(False, "||X_j||_2 is the L2 norm over tokens (sqrt of the sum of squares), "
                                      "not the sum of absolute values.")
        if like(w * sq.sqrt().unsqueeze(0)):
            return CheckResult(False, "take |W_ij| (the absolute value): a large negative weight matters too.")
        if like(-wanda.wanda_scores(w, sq)):
            return CheckResult(False, "you kept the lowest scores: keep the highest, prune the lowest.")
        return CheckResult(False, "the mask differs from Wanda's: score |W_ij| * ||X_j||_2 (X's column j, over "
                                  "tokens), then keep the top (1 - sparsity) of every row.")
    return CheckResult(True, "4 hidden layers: your mask equals course_lib's Wanda mask.")


# ------------------------------------------------------------- lesson 5: one SparseGPT step
def check_sparsegpt_step(fn: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], torch.Tensor]) -> CheckResult:
    """``fn(W, U, i, prune)``: prune column ``i`` where ``prune`` is True and compensate the later columns.

    Compared with ``pruning.sparsegpt.column_step`` on hidden layers and Hessians.
    """
    from ..pruning import sparsegpt

    generator = torch.Generator().manual_seed(13)
    for rows, cols, i in ((3, 6, 0), (4, 8, 3), (5, 10, 9), (6, 12, 5)):
        w = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        x = torch.randn(4 * cols, cols, generator=generator, dtype=torch.float64)
        U = sparsegpt.inverse_cholesky(2 * x.t() @ x / len(x))
        prune = torch.rand(rows, generator=generator) < 0.5
        prune[0], prune[-1] = True, False
        w_before = w.clone()
        out, error = _run(fn, w, U, i, prune)
        if error is not None:
            return error
        if (bad := _tensor_check(out, w.shape)) is not None:
            return bad
        if not torch.equal(w, w_before):
            return CheckResult(False, "your function changed W in place: work on a copy (W.clone()).")
        want = sparsegpt.column_step(w, U, i, prune)
        if torch.allclose(out.double(), want, atol=1e-8):
            continue
        out = out.double()
        if not torch.equal(out[:, :i], w[:, :i]):
            return CheckResult(False, f"columns left of {i} changed: they were pruned and compensated already; "
                                      f"only columns j >= i move.")
        if (out[prune, i] != 0).any():
            return CheckResult(False, "a pruned weight of column i is not exactly 0: set W[prune, i] = 0 "
                                      "after the update.")
        if not torch.equal(out[~prune], w[~prune]):
            return CheckResult(False, "a row whose weight you keep changed: only pruned rows get an error "
                                      "to compensate (err = 0 where prune is False).")
        err = w[:, i] / U[i, i]
        zeroed = w.clone()
        zeroed[prune, i] = 0
        if torch.allclose(out, zeroed):
            return CheckResult(False, "you zeroed the weights but the later columns did not move: subtract "
                                      "err * U[i, j] from each column j > i, with err = w / U[i, i] (row i of U, "
                                      "U[i, i:]; its column U[i:, i] is zero below the diagonal).")
        err = w[:, i] / U[i, i]
        plus = w.clone()
        plus[:, i:] += (err * prune).unsqueeze(1) * U[i, i:].unsqueeze(0)
        if torch.allclose(out[:, i + 1:], plus[:, i + 1:]):
            return CheckResult(False, "the later columns moved the wrong way: *subtract* err * U[i, j].")
        bare = w.clone()
        bare[:, i:] -= (w[:, i] * prune).unsqueeze(1) * U[i, i:].unsqueeze(0)
        if torch.allclose(out[:, i + 1:], bare[:, i + 1:]):
            return CheckResult(False, "the error is w / U[i, i], not w: divide by the diagonal entry of U.")
        return CheckResult(False, "the compensated columns differ from SparseGPT's: for pruned rows, "
                                  "err = W[:, i] / U[i, i] and W[:, j] -= err * U[i, j] for every j >= i.")
    return CheckResult(True, "4 hidden layers: your step equals course_lib's SparseGPT column step.")


# ------------------------------------------------------------- lesson 5: the allocation challenge
def check_allocation(model, windows: torch.Tensor, sparsities, target: float) -> CheckResult:
    """Measure a per-layer allocation against uniform pruning (magnitude scores) at the same total.

    ``sparsities``: one sparsity per decoder layer, or the student's function of the layer count.
    """
    from ..core import arch, metrics
    from ..pruning import allocation

    if callable(sparsities):
        sparsities, error = _run(sparsities, len(arch.decoder_layers(model)))
        if error is not None:
            return error
    try:
        s = allocation.check_allocation(model, sparsities)
    except (ValueError, TypeError) as err:
        return CheckResult(False, str(err))
    total = allocation.total_sparsity(model, s)
    if abs(total - target) > 0.005:
        return CheckResult(False, f"your allocation prunes {total:.1%} of the decoder weights in total, not "
                                  f"{target:.0%}: a fair comparison with uniform needs the same total "
                                  f"(raise some layers where you lowered others).")
    result = {}
    for label, alloc in (("uniform", [target] * len(s)), ("yours", s)):
        handle = allocation.prune_layers(model, alloc)
        try:
            result[label] = metrics.perplexity(model, windows)
        finally:
            handle.restore()
    gain = 1 - result["yours"] / result["uniform"]
    text = (f"perplexity {result['yours']:.2f} with your allocation, {result['uniform']:.2f} uniform, "
            f"both {target:.0%} in total")
    if gain > 0:
        return CheckResult(True, f"{text}: {gain:.1%} lower than uniform.")
    return CheckResult(False, f"{text}: {-gain:.1%} higher than uniform. Prune the layers the scan "
                              "found sensitive less, and the tolerant ones more.")


# ------------------------------------------------------------- lesson 6: int8 with one scale per row
def check_int8_rows(fn: Callable[[torch.Tensor], tuple]) -> CheckResult:
    """``fn(weight)`` returns ``(q, scale)``: int8 ``q`` and one float scale per output row,
    symmetric (``weight ~ q * scale[:, None]``, ``q`` in [-127, 127], the row's max |w| -> 127)."""
    generator = torch.Generator().manual_seed(6)
    for rows, cols in ((3, 8), (6, 32), (1, 5)):
        w = torch.randn(rows, cols, generator=generator) * torch.logspace(-2, 1, rows).unsqueeze(1)
        out, error = _run(fn, w)
        if error is not None:
            return error
        if not (isinstance(out, tuple) and len(out) == 2):
            return CheckResult(False, f"return a pair (q, scale); got {type(out).__name__}.")
        q, scale = out
        if not isinstance(q, torch.Tensor) or q.dtype != torch.int8:
            return CheckResult(False, f"q should be a torch.int8 tensor; got "
                                      f"{getattr(q, 'dtype', type(q).__name__)} (use .round().to(torch.int8)).")
        if q.shape != w.shape:
            return CheckResult(False, f"q has shape {tuple(q.shape)}, the weight {tuple(w.shape)}.")
        scale = torch.as_tensor(scale).float().reshape(-1)
        if scale.numel() != rows:
            return CheckResult(False, f"{scale.numel()} scales for {rows} rows: one scale per output row "
                                      "(a per-tensor scale is what breaks the rows with small weights).")
        if int(q.abs().max()) > 127:
            return CheckResult(False, "q leaves [-127, 127]: divide by max|w| / 127 of the row.")
        expected = w.abs().amax(dim=1) / 127
        if not torch.allclose(scale, expected, rtol=1e-4):
            return CheckResult(False, "the scale of a row should be max|w of the row| / 127 "
                                      "(symmetric: the largest weight maps to +-127).")
        error_max = float(((q.float() * scale[:, None] - w).abs() / scale[:, None]).max())
        if error_max > 0.5 + 1e-4:
            return CheckResult(False, f"q * scale misses w by {error_max:.2f} steps; round to the nearest "
                                      "step (torch.round), do not truncate.")
    return CheckResult(True, "3 hidden matrices: int8 codes in range, one scale per row, error <= half a step.")


# ------------------------------------------------------------- lesson 0: a paired interval
def _correlated_nll(seed: int, windows: int = 6, tokens: int = 127, shift: float = 0.05):
    """Two models' NLLs of the same hidden text: a shared difficulty that drifts along each
    window (neighbouring tokens alike), the models' own noise, and a small shift between them."""
    generator = torch.Generator().manual_seed(seed)
    difficulty = torch.empty(windows, tokens, dtype=torch.float64)
    drift = torch.empty(windows, tokens, dtype=torch.float64)
    difficulty[:, 0] = 3 + torch.randn(windows, generator=generator, dtype=torch.float64)
    drift[:, 0] = 0
    for t in range(1, tokens):  # slowly changing topics and slowly changing model disagreement
        difficulty[:, t] = 0.9 * difficulty[:, t - 1] + 0.3 + 0.5 * torch.randn(windows, generator=generator, dtype=torch.float64)
        drift[:, t] = 0.9 * drift[:, t - 1] + 0.1 * torch.randn(windows, generator=generator, dtype=torch.float64)
    base = difficulty + 0.05 * torch.randn(windows, tokens, generator=generator, dtype=torch.float64)
    return base, base + shift + drift


def check_paired_interval(fn: Callable) -> CheckResult:
    """``fn(nll_base, nll_other, block, resamples, seed)`` returns ``(ratio, low, high)``: the
    perplexity ratio other / base and its 95% block-bootstrap interval, paired on the same tokens.

    Compared with ``core.stats.paired_ratio`` on hidden NLLs whose neighbouring tokens are
    correlated (as in real text). Bootstrap draws differ from run to run, so the interval's
    ends must land within a sixth of the reference interval's width.
    """
    import math

    from ..core import stats

    for seed, block in ((1, 32), (2, 16), (3, 32)):
        base, other = _correlated_nll(seed)
        out, error = _run(fn, base.clone(), other.clone(), block, 2000, 0)
        if error is not None:
            return error
        try:
            ratio, low, high = (float(v) for v in out)
        except (TypeError, ValueError):
            return CheckResult(False, f"return three numbers (ratio, low, high); got {out!r}.")
        want = stats.paired_ratio(base, other, block=block)
        ppl_base, ppl_other = math.exp(base.mean()), math.exp(other.mean())
        if not math.isclose(ratio, want.ratio, rel_tol=1e-6):
            if math.isclose(ratio, 1 / want.ratio, rel_tol=1e-6):
                return CheckResult(False, "upside down: the ratio is perplexity(other) / perplexity(base).")
            if math.isclose(ratio, ppl_other - ppl_base, rel_tol=1e-6):
                return CheckResult(False, "a ratio, not a difference: exp(mean NLL other) / exp(mean NLL base).")
            return CheckResult(False, f"the ratio should be exp(mean(nll_other - nll_base)) = {want.ratio:.4f}; "
                                      f"got {ratio:.4f}.")
        if not low <= ratio <= high:
            return CheckResult(False, f"the interval {low:.4f}-{high:.4f} does not contain the ratio {ratio:.4f}: "
                                      "take the 2.5th and 97.5th percentiles of the resampled ratios.")
        width, want_width = high - low, want.high - want.low
        if width < 0.6 * want_width:
            return CheckResult(False, f"your interval ({low:.4f}-{high:.4f}) is too narrow (course_lib: "
                                      f"{want.low:.4f}-{want.high:.4f}). Did you resample single tokens? "
                                      "Neighbouring tokens are alike, so a resample of tokens pretends to "
                                      "hold more independent evidence than the text has: resample blocks of "
                                      "`block` consecutive tokens (never across windows).")
        if width > 1.6 * want_width:
            return CheckResult(False, f"your interval ({low:.4f}-{high:.4f}) is too wide (course_lib: "
                                      f"{want.low:.4f}-{want.high:.4f}). Did you resample the two models "
                                      "separately? Pair them: resample the per-token *differences* "
                                      "nll_other - nll_base, block by block, so what is hard for both cancels.")
        if abs(low - want.low) > want_width / 6 or abs(high - want.high) > want_width / 6:
            return CheckResult(False, f"interval {low:.4f}-{high:.4f}, course_lib's {want.low:.4f}-"
                                      f"{want.high:.4f}: weigh each resample by its tokens (the last block "
                                      "of a window is shorter) and take exp of the resampled mean difference.")
    return CheckResult(True, "3 hidden comparisons: your paired block-bootstrap interval matches course_lib's.")
