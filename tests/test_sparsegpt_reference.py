"""SparseGPT against the paper, and the calibration walk against what it must feed each layer.

``plain_sparsegpt`` is Algorithm 1 of Frantar & Alistarh (2023) written out for this
test: unblocked (one column at a time, no lazy batches), in float64, from the paper's
steps, not from the course kernel. The kernel must give the same masks, and the same
weights to float32 rounding: a kernel that forgot the compensation, used U_ii instead
of U_ii^2 in the score, updated the wrong columns or chose masks over the wrong block
would not.
"""
import pytest
import torch

from course_lib.core import arch, models
from course_lib.pruning import calibrate
from course_lib.pruning.masks import scores_to_mask
from course_lib.pruning.sparsegpt import sparsegpt_layer, sparsegpt_prune
from course_lib.pruning.wanda import wanda_prune, wanda_scores


def plain_sparsegpt(W, H, sparsity=0.5, nm=None, blocksize=128, percdamp=0.01):
    """The paper's algorithm, column by column, in float64. Returns (W_pruned, keep_mask).

    1. Dead inputs (H_jj = 0): H_jj := 1, W[:, j] := 0 (as the authors' code does).
    2. Hinv := the upper Cholesky factor of (H + percdamp * mean(diag H) * I)^-1.
    3. For each column j, left to right:
       - at the start of every mask-selection block of ``blocksize`` columns (unstructured),
         prune the round(p * rows * Bs) weights of lowest w^2 / Hinv_jj^2 in the block
         (the paper's code floors the count; the course rounds it everywhere); for N:M,
         at the start of every group of M columns, prune per row the M-N of lowest score;
       - err := w_j / Hinv_jj where pruned (0 where kept); W[:, j] := 0 where pruned;
       - W[:, j+1:] -= err * Hinv[j, j+1:]  (the Optimal Brain Surgeon update).
    """
    W = W.detach().double().clone()
    H = H.detach().double().clone()
    rows, cols = W.shape
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H = H + percdamp * torch.diagonal(H).mean() * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if nm is None and j % blocksize == 0:
            block = slice(j, min(j + blocksize, cols))
            score = W[:, block] ** 2 / torch.diagonal(Hinv)[block] ** 2
            count = round(sparsity * score.numel())
            lowest = torch.sort(score.flatten(), stable=True).indices[:count]
            chosen = torch.zeros(score.numel(), dtype=torch.bool)
            chosen[lowest] = True
            pruned[:, block] = chosen.reshape(score.shape)
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            score = W[:, j:j + m] ** 2 / torch.diagonal(Hinv)[j:j + m] ** 2
            lowest = torch.topk(score, m - n, dim=1, largest=False).indices
            pruned[:, j:j + m] = torch.zeros(rows, m, dtype=torch.bool).scatter_(1, lowest, True)
        err = torch.where(pruned[:, j], W[:, j] / Hinv[j, j], torch.zeros(rows, dtype=torch.float64))
        W[:, j] = torch.where(pruned[:, j], torch.zeros_like(W[:, j]), W[:, j])
        W[:, j + 1:] -= err[:, None] * Hinv[j, j + 1:][None, :]
    pruned |= dead[None, :]  # weights on dead inputs are zero: pruned
    return W, ~pruned


def random_layer(rows, cols, seed, dead=()):
    """A weight and a calibration Hessian from correlated inputs of uneven scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6 * cols, cols, generator=g) @ (torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols ** 0.5)
    x *= torch.exp(torch.randn(cols, generator=g))
    x[:, list(dead)] = 0
    return torch.randn(rows, cols, generator=g), 2 * x.t() @ x / len(x)


CASES = {  # (rows, cols, blocksize, sparsity, nm, dead inputs): the last block is short in each
    "50%": (12, 72, 32, 0.5, None, (17,)),
    "70%": (10, 56, 24, 0.7, None, (3,)),
    "2:4": (12, 60, 128, 0.5, (2, 4), (9,)),
    "4:8": (8, 72, 128, 0.5, (4, 8), (40,)),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", list(CASES))
def test_sparsegpt_equals_the_papers_algorithm(case, seed):
    rows, cols, blocksize, sparsity, nm, dead = CASES[case]
    W, H = random_layer(rows, cols, seed, dead)
    expected, expected_keep = plain_sparsegpt(W, H, sparsity, nm, blocksize)
    ours, keep = sparsegpt_layer(W, H, sparsity, nm, blocksize=blocksize)
    assert torch.equal(keep, expected_keep)  # mask for mask
    assert torch.equal(ours == 0, ~keep)
    scale = W.abs().max().item()
    assert (ours.double() - expected).abs().max().item() < 1e-5 * scale  # float32 rounding (~1e-7)
    # and the comparison has teeth: the compensated weights moved away from the originals
    assert (ours - W * keep).abs().max().item() > 1e-2 * scale


# ------------------------------------------------------------------ the calibration walk
def _layer_inputs(model, windows, index):
    """Inputs (tokens, features) of every prunable linear of layer ``index`` in a full forward."""
    seen, hooks = {}, []
    for name, module in calibrate.layer_modules(model, index).items():
        hooks.append(module.register_forward_pre_hook(
            lambda _m, inp, name=name: seen.__setitem__(name, inp[0].reshape(-1, inp[0].shape[-1]).double())))
    try:
        with torch.no_grad():
            model(windows, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _expected_masks(method, model, windows, index, sparsity):
    """Layer ``index``'s masks recomputed by hand from the inputs a full forward gives it."""
    inputs = _layer_inputs(model, windows, index)
    weights = {name: arch.weight_matrix(m).detach() for name, m in calibrate.layer_modules(model, index).items()}
    if method == "wanda":
        return {name: scores_to_mask(wanda_scores(w, inputs[name].pow(2).sum(0).float()), sparsity, "row")
                for name, w in weights.items()}
    out = {}
    groups = calibrate.input_groups(model, windows)
    prefix = f"model.layers.{index}."
    for group in groups:
        names = [prefix + g for g in group]
        x = inputs[names[0]]
        stacked = torch.cat([weights[n] for n in names])
        _, keep = sparsegpt_layer(stacked, (2 * x.t() @ x / len(x)).float(), sparsity,
                                  segments=[weights[n].shape[0] for n in names])
        start = 0
        for n in names:
            out[n] = keep[start:start + weights[n].shape[0]]
            start += weights[n].shape[0]
    return out


def _agreement(masks, expected):
    same = sum(int((masks[n] == expected[n]).sum()) for n in expected)
    return same / sum(expected[n].numel() for n in expected)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_layer_1_is_calibrated_on_what_the_pruned_layer_0_outputs(method):
    """Layer 1's masks are those computed from a model whose layer 0 is already pruned.

    A walk that calibrated layer 1 on the dense model's activations would give the
    masks computed from the dense model instead: the two sets differ, and the test
    demands the first.
    """
    model, _ = models.load("tiny-llama")
    hybrid, _ = models.load("tiny-llama")  # becomes: layer 0 pruned, layer 1 dense
    windows = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    sparsity = 0.6
    from_dense = _expected_masks(method, model, windows, 1, sparsity)
    prune = wanda_prune if method == "wanda" else sparsegpt_prune
    handle = prune(model, windows, sparsity, batch_size=2, on_arrival="none")
    with torch.no_grad():
        for (name, pruned), (_, dense) in zip(calibrate.layer_modules(model, 0).items(),
                                              calibrate.layer_modules(hybrid, 0).items()):
            dense.weight.copy_(pruned.weight)
    from_pruned = _expected_masks(method, hybrid, windows, 1, sparsity)
    masks = {name: handle.info["masks"][name] for name in from_pruned}
    match_pruned, match_dense = _agreement(masks, from_pruned), _agreement(masks, from_dense)
    assert match_pruned > 0.999, match_pruned  # equal up to a rare floating-point tie
    assert match_dense < 0.99, match_dense  # and the dense activations would have given others


@pytest.mark.parametrize("n", [7, 128, 129, 300, 1000])
def test_lower_inverse_is_the_triangular_solve(n):
    """The inverse by halves equals the solve against the identity, to float64 rounding, at sizes
    that recurse unevenly; a sign lost on the off-diagonal block or a block placed in the
    wrong corner would be off by O(1)."""
    from course_lib.pruning.sparsegpt import lower_inverse

    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    lower = torch.linalg.cholesky(a @ a.t() / n + torch.eye(n, dtype=torch.float64))
    want = torch.linalg.solve_triangular(lower, torch.eye(n, dtype=torch.float64), upper=False)
    got = lower_inverse(lower)
    assert torch.equal(got.triu(1), torch.zeros_like(got))  # lower-triangular
    assert (got - want).abs().max().item() < 1e-12 * want.abs().max().item()
