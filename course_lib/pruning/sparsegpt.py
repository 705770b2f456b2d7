"""SparseGPT: one-shot pruning with weight reconstruction (Frantar & Alistarh, 2023).

Removing weights changes a layer's output W X. SparseGPT prunes the input
columns of W one at a time, left to right, and after each column *updates the
remaining columns* so that the layer's output on the calibration inputs X moves
as little as possible (the Optimal Brain Surgeon update). Everything it needs is
the Hessian of that reconstruction error,

    H = 2 X X^T / n          (in_features x in_features, from calibration tokens),

and the upper Cholesky factor U of H^-1: pruning weight w in column i costs
w^2 / U_ii^2 and is compensated by subtracting (w / U_ii) * U[i, i:] from the
row's later columns. Which weights to prune is decided per block of 128 columns
(the ones of lowest w^2 / U_ii^2 in the block, "adaptive mask selection"), or
per group of M columns for N:M; the updates to columns right of the block are
batched into one matrix product ("lazy batch updates").

Precision and calibration size. H is accumulated, factored and applied in float64:
the dampened H can have a condition number of ~100 x in_features, and float32 rounding,
which differs between CPU kinds and thread counts, would otherwise decide which weights
a block prunes. And H is only full-rank when calibration holds more tokens than the
matrix has inputs (1536 for SmolLM2's ``down_proj``): with fewer, every direction the
sample did not visit is pinned by the dampening alone, the fit follows the sample, and
the result moves with it (lesson 5 measures this).

Inputs that were always zero in calibration ("dead" inputs, H_ii = 0) carry no
signal: their weights are set to zero and marked pruned in the returned mask,
so the mask always describes the weights. They count towards the requested
sparsity: with a score of 0 they are the first weights each block prunes, so a
layer is pruned exactly as requested unless its dead weights alone exceed the
request in some block (or N:M group); then it ends sparser than asked, and the
achieved sparsity (``handle.info["sparsity"]``, counted from the weights) says so.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..core import arch
from ..core.timing import thread_count
from ..core.cancel import carried, checkpoint
from . import calibrate
from .masks import (check_pattern_fits, check_sparsity, check_target, describe,
                    nm_mask, parse_pattern, topk_mask)
from .undo import PruneHandle

MAX_DAMP = 10.0  # give up once the dampening reaches 10x the mean diagonal


class HessianError(ValueError):
    """The calibration Hessian cannot be inverted, even with strong dampening."""


def inverse_cholesky(H: torch.Tensor, percdamp: float = 0.01, name: str = "layer") -> torch.Tensor:
    """Upper-triangular U with U^T U = (H + damp*I)^-1, damp = percdamp * mean(diag H).

    Same result as ``torch.linalg.cholesky(torch.linalg.inv(H), upper=True)``, computed
    without forming the inverse: Cholesky-factor H with rows and columns reversed,
    flip(H) = L L^T, then H^-1 = flip(L^-1)^T flip(L^-1), and flip(L^-1) is upper-triangular.
    (One factorisation and one triangular inverse, ``lower_inverse``; ``torch.cholesky_inverse``
    is ~50x slower on some CPUs.)

    Dampening makes H positive-definite when the calibration data do not span
    every input direction; if the factorisation still fails, retry with 10x more
    (warning each time) up to ``MAX_DAMP``, then raise a ``HessianError``.
    """
    if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not percdamp > 0:
        raise ValueError(f"percdamp={percdamp!r}: the dampening must be a fraction > 0 of the "
                         "mean diagonal, e.g. 0.01.")
    if not torch.isfinite(H.sum()):  # one NaN or inf makes the sum so (a sum is ~20x cheaper)
        raise HessianError(f"the Hessian of {name} holds NaN or inf: the calibration activations "
                           "overflowed. Run the model in float32 or check the calibration windows.")
    mean_diag = H.diagonal().mean()
    damp = percdamp
    while True:
        damped = H.flip(0, 1)  # a reversed copy
        damped.diagonal().add_(damp * mean_diag)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info == 0:
            upper = lower_inverse(lower).flip(0, 1)
            if torch.isfinite(upper.sum()):
                return upper
        if damp * 10 > MAX_DAMP:
            raise HessianError(
                f"the Hessian of {name} is not positive-definite even with dampening {damp:g} x "
                "its mean diagonal. Use more (or more varied) calibration windows, or prune this "
                "layer with magnitude/Wanda instead.")
        warnings.warn(f"SparseGPT: the Hessian of {name} is not positive-definite with dampening "
                      f"{damp:g}; retrying with {damp * 10:g}.", RuntimeWarning, stacklevel=2)
        damp *= 10


def lower_inverse(L: torch.Tensor, base: int = 128) -> torch.Tensor:
    """The inverse of a lower-triangular ``L``, by halves: two half-size inverses and two products.

    With L = [[A, 0], [B, C]] (A, C lower-triangular), L^-1 = [[A^-1, 0], [X, C^-1]] with
    X = -C^-1 B A^-1: check it, L L^-1 has B A^-1 + C X = 0 below the diagonal. Recursing
    on A and C, the work is n^3/3 multiply-adds (two (n/2)^3 products per level: n^3/4, then
    a quarter of that below), all in matrix products, against n^3/2 for
    ``torch.linalg.solve_triangular(L, I)`` (a triangular solve does not know that its
    right-hand side is the identity), and a CPU runs products at its full rate: for
    SmolLM2's 1536 x 1536 ``down_proj`` factor, 32 ms instead of 59 on two cores. The two
    results agree to float64 rounding (~1e-16 relative); blocks of ``base`` rows or fewer
    use the solve.
    """
    n = L.shape[0]
    if n <= base:
        return torch.linalg.solve_triangular(L, torch.eye(n, dtype=L.dtype, device=L.device), upper=False)
    h = (n // 2 + 31) // 32 * 32  # split at a multiple of 32: products of aligned sizes run faster
    inverse = torch.zeros_like(L)
    inverse[:h, :h] = lower_inverse(L[:h, :h], base)
    inverse[h:, h:] = lower_inverse(L[h:, h:], base)
    torch.mm(inverse[h:, h:], L[h:, :h] @ inverse[:h, :h], out=inverse[h:, :h])
    inverse[h:, :h].neg_()
    return inverse


@torch.no_grad()
def column_step(W: torch.Tensor, U: torch.Tensor, i: int, prune: torch.Tensor) -> torch.Tensor:
    """One column of SparseGPT, written plainly (``sparsegpt_layer`` does the same, batched).

    ``W``: (out, in) weights; ``U``: the upper Cholesky factor of H^-1; ``prune``: a bool
    per row, True where the weight ``W[r, i]`` of column ``i`` is removed. For each pruned
    weight w, the error err = w / U_ii is subtracted, scaled by row i of U, from the row's
    columns i and later: W[r, j] -= err_r * U[i, j] for j >= i. Column i of a pruned row
    lands on exactly 0 (the update makes it w - w / U_ii * U_ii); kept weights of column i
    are untouched, earlier columns never change. Returns a new tensor.
    """
    W = W.clone()
    err = torch.where(prune, W[:, i] / U[i, i], torch.zeros_like(W[:, i]))
    W[:, i:] -= err.unsqueeze(1) * U[i, i:].unsqueeze(0)
    W[prune, i] = 0.0  # exact zeros (the update leaves rounding residues)
    return W


@torch.no_grad()
def sparsegpt_layer(W: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, pattern=None,
                    blocksize: int = 128, percdamp: float = 0.01, segments: list[int] | None = None,
                    name: str = "layer", update_block: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune an (out, in) weight ``W`` given its input Hessian ``H``; returns ``(W_new, keep_mask)``.

    A pure function on tensors (inputs are not modified). ``blocksize`` (any whole
    number >= 1): columns per adaptive mask selection (unstructured), and per large lazy
    batch update (both patterns). ``update_block``: at most this many columns between two
    small lazy updates inside a block (rounded down to a multiple of M for N:M); any value
    gives the same result up to rounding, small ones are faster on a CPU. ``segments``
    lists the row counts of matrices stacked in ``W`` because they share one input (q, k,
    v): each keeps its own sparsity in every block, exactly as if pruned separately.
    """
    sparsity, pattern = check_sparsity(sparsity), parse_pattern(pattern)
    blocksize, update_block = check_block("blocksize", blocksize), check_block("update_block", update_block)
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H has shape {tuple(H.shape)}, but W is {tuple(W.shape)}: "
                         f"H must be ({cols}, {cols}), one row/column per input feature.")
    if pattern is not None:  # N:M: masks are chosen per M columns; blocks must hold whole groups
        check_pattern_fits(name, cols, pattern)
        update_block = max(pattern[1], update_block - update_block % pattern[1])
    bounds = torch.tensor([0] + (segments or [rows])).cumsum(0).tolist()

    # float64 throughout: H's condition number reaches ~100 x in_features after dampening, so
    # float32 rounding (which differs between CPUs) would move U, and with it which weights
    # each block prunes; in float64 the same inputs give the same masks on every machine.
    H = H.detach().double()  # not modified below unless some input is dead (then a copy is)
    Wt = W.detach().double().t().contiguous()  # (in, out) row-major: input column i is the row Wt[i]
    # (contiguous: a clone would keep the transpose's strides, and every column step would stride)
    dead = H.diagonal() == 0             # inputs that were always zero: their weights do nothing
    if dead.any():
        H = H.clone()
        H[dead, dead] = 1
    Wt[dead] = 0
    U = inverse_cholesky(H, percdamp, name)
    d = U.diagonal().unsqueeze(1)        # U_ii, as a column: (in, 1)
    prune = torch.zeros_like(Wt, dtype=torch.bool)

    # Lazy batch updates on two levels. Inside a block of ``blocksize`` columns, each update
    # block's errors reach the rest of that block at once (a small product); when the whole
    # block is done, its errors reach every column right of it in one large product, where
    # most of the arithmetic is (cols^2 x rows multiply-adds in all), done at full speed.
    group = blocksize if pattern is None else max(pattern[1], blocksize - blocksize % pattern[1])
    errors = torch.empty(min(group, cols), rows, dtype=Wt.dtype)  # (w - q) / U_ii of one block
    for o1 in range(0, cols, group):
        o2 = min(o1 + group, cols)
        checkpoint()  # a live explorer may stop here (a pure function: nothing to undo)
        # The block's own work (mask selection, column steps, the small products that carry a few
        # columns' errors through it) on one thread: with two, each small operation spent longer
        # waking the second thread than computing (2-3x slower with idle threads asleep, as the
        # presenter runs them). Their results do not depend on the thread count (elementwise, and
        # checked bit for bit for the small products on SmolLM2's layers); the factorisation's
        # do, and it keeps every thread, as does the large product right of the block below.
        with thread_count(1):  # thread-local: a side-by-side group keeps its own count
            if pattern is None:
                # adaptive mask selection: lowest w^2 / U_ii^2 of the block's columns, per matrix
                score = Wt[o1:o2].pow(2) / d[o1:o2].pow(2)
                for a, b in zip(bounds[:-1], bounds[1:]):
                    prune[o1:o2, a:b] = ~topk_mask(score[:, a:b], sparsity, "matrix")
            scale = prune[o1:o2] / d[o1:o2]  # err = w * scale: w / U_ii where pruned, 0 where kept
            for i1 in range(o1, o2, update_block):
                i2 = min(i1 + update_block, o2)
                Ub, Wb, Pb, db = U[i1:i2, i1:i2], Wt[i1:i2], prune[i1:i2], d[i1:i2]  # views into U, Wt...
                sb, err = scale[i1 - o1:i2 - o1], errors[i1 - o1:i2 - o1]
                w_rows, s_rows, e_rows, u_rows = Wb.unbind(), sb.unbind(), err.unbind(), Ub.unbind()
                for i in range(i2 - i1):
                    if pattern is not None and i % pattern[1] == 0:  # N:M: choose in the next M columns
                        n, m = pattern
                        score = Wb[i:i + m].pow(2) / db[i:i + m].pow(2)
                        Pb[i:i + m] = ~nm_mask(score.t(), n, m).t()
                        sb[i:i + m] = Pb[i:i + m] / db[i:i + m]
                    torch.mul(w_rows[i], s_rows[i], out=e_rows[i])
                    # OBS update of this block's later columns: W[:, j] -= err * U[i, j] for j > i
                    # (column i itself would land on 0 where pruned, which the final fill does)
                    Wb[i + 1:].addr_(u_rows[i][i + 1:], e_rows[i], alpha=-1)
                Wt[i2:o2].addmm_(U[i1:i2, i2:o2].t(), err, alpha=-1)  # the rest of the block
        Wt[o2:].addmm_(U[o1:o2, o2:].t(), errors[:o2 - o1], alpha=-1)  # everything right of it
    Wt.masked_fill_(prune, 0.0)  # exact zeros (the updates leave ~1e-9 residues on pruned weights)
    prune[dead] = True  # zero weights on dead inputs: pruned, whatever the selection said
    return Wt.t().contiguous().to(W.dtype), (~prune).t().contiguous()


def check_block(what: str, value) -> int:
    """A block size is a whole number of columns >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}={value!r}: give a whole number of columns >= 1, e.g. 128.")
    return value


def collect_hessian(stat, x: torch.Tensor):
    """Running (sum of x x^T, token count) over (tokens, in_features) input batches, in float64."""
    x = x.double()
    if stat is None:
        return x.t() @ x, x.shape[0]
    xtx, n = stat
    return xtx.addmm_(x.t(), x), n + x.shape[0]


def sparsegpt_prune(model: nn.Module, calib_windows: torch.Tensor, sparsity: float = 0.5,
                    pattern=None, blocksize: int = 128, percdamp: float = 0.01,
                    batch_size: int = 8, on_arrival: str = "none", keep_masks: bool = True,
                    progress=None) -> PruneHandle:
    """Prune every decoder Linear/Conv1D with SparseGPT, layer by layer; returns an undo handle.

    ``calib_windows``: (n, seq_len) token ids, e.g. ``data.windows_for(tok, name).calib``.
    ``pattern="2:4"`` gives N:M sparsity (then the sparsity is 1 - N/M). ``blocksize``,
    ``percdamp``: see ``sparsegpt_layer``. ``batch_size`` / ``on_arrival``: how the
    layers are walked, see ``calibrate.walk`` (``on_arrival="all"`` is SparseGPT's
    "true sequential" option). Weights on inputs that calibration never activated are
    pruned whatever the request (see the module docstring): ``handle.info["sparsity"]``
    is the sparsity achieved, counted from the weights.
    """
    sparsity, pattern = check_target(model, sparsity, pattern)
    blocksize = check_block("blocksize", blocksize)
    calib_windows = calibrate.check_windows(calib_windows, model)
    handle = PruneHandle(describe("sparsegpt", sparsity, pattern))
    masks = {}
    workers = torch.get_num_threads()  # the groups of a layer are pruned side by side (below)

    def prune_layer(index, layer, groups):
        full_name = {id(m): name for name, m in calibrate.layer_modules(model, index).items()}
        stacks = []
        for group in groups:
            # Matrices reading the same input share H: stack them and run the column loop once.
            xtx, n = group.stat
            weights = [arch.weight_matrix(m) for m in group.modules]
            stacks.append((torch.cat(weights), xtx.mul_(2).div_(n), [w.shape[0] for w in weights],
                           " / ".join(full_name[id(m)] for m in group.modules)))
        results = side_by_side(lambda W, H, segments, name: sparsegpt_layer(
            W, H, sparsity, pattern, blocksize, percdamp, segments, name=name), stacks, workers)
        for group, (W_new, keep) in zip(groups, results):
            start = 0
            for module in group.modules:
                weight = arch.weight_matrix(module)
                rows = slice(start, start + weight.shape[0])
                handle.save_tensor(module.weight.data)
                weight.copy_(W_new[rows])
                if keep_masks:
                    masks[full_name[id(module)]] = keep[rows]
                start += weight.shape[0]

    return calibrate.prune_walking(model, handle, calib_windows, collect_hessian, prune_layer,
                                   masks if keep_masks else None, batch_size, on_arrival, progress,
                                   method="sparsegpt", requested=sparsity, scope="block",
                                   pattern=pattern)


def side_by_side(fn, stacks: list[tuple], workers: int) -> list:
    """``[fn(*s) for s in stacks]``, up to ``workers`` at a time (the largest first).

    A layer's groups (q/k/v, o, gate/up, down) are independent once their Hessians are
    collected. Much of a column loop is small operations that keep one core busy, so two
    groups at a time finish sooner on two cores (``down_proj`` takes about as long as the
    other three). Each worker keeps the caller's torch thread count: the factorisation's
    and the products' rounding depends on it, and on a rank-deficient Hessian the masks
    follow the last bit (one thread instead of two changed 5% of SmolLM2's), so the
    results stay bit for bit those of one group after the other. A stop
    (``core.cancel``) reaches the workers too.
    """
    if workers < 2 or len(stacks) < 2:
        return [fn(*s) for s in stacks]
    order = sorted(range(len(stacks)), key=lambda i: -stacks[i][0].shape[0] * stacks[i][0].shape[1] ** 2)
    run = carried(fn)
    with ThreadPoolExecutor(min(workers, len(stacks)), initializer=torch.set_num_threads,
                            initargs=(workers,)) as pool:
        futures = {i: pool.submit(run, *stacks[i]) for i in order}
        return [futures[i].result() for i in range(len(stacks))]
