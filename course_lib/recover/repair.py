"""Closed-form repair: refit each output projection after neurons or heads were removed.

After ``remove_neurons`` a layer's MLP writes ``W_K h_K`` to the residual stream
instead of ``W h``: the columns of the dropped neurons are gone, and so is what
they wrote. The kept neurons' activations are usually *correlated* with the
dropped ones, so a different ``W'`` acting on the kept units alone can write much
of what the dense layer wrote. Which one? The one that matches the dense output
best on calibration data, a least-squares problem with a closed form.

Collect, over every calibration token ``t``, the pruned model's input to the
output projection ``h_t`` (only the kept units, ``k`` of them) and the dense
model's output of the same projection ``y_t`` (minus the bias, which stays). Then

    W' = argmin_W  sum_t ||W h_t - y_t||^2 + lambda ||W - W_K||^2
       = (C + lambda W_K) (G + lambda I)^-1,
    G = sum_t h_t h_t^T  (k x k),   C = sum_t y_t h_t^T,   W_K = the kept columns.

``G`` is the same input Gram matrix (the "Hessian" ``2XX^T``) that SparseGPT
inverts; the difference is only the shape of the solution. SparseGPT keeps the
full matrix and, when it drops one weight, pushes the error onto the remaining
weights of the row through ``G^-1``; here a whole block of columns goes at once
and we solve for all the remaining columns in one step, on a smaller matrix. If
the pruned model's inputs equal the dense model's (one layer pruned, nothing
upstream changed) and lambda -> 0, ``C = W G_full[:, K]`` and the solution is
``W' = W_K + W_D G_DK G_KK^-1``: each dropped column is redistributed onto the
kept columns in proportion to how well they predict it -- exactly the OBS update.

The ridge pulls towards ``W_K``, not towards 0: with little data (or a large
``lambda = damp * mean(diag G)``) the answer stays the layer we had, and only
directions the calibration tokens pin down move. Measured on SmolLM2 with a
quarter of the MLP neurons removed (32 x 256 calibration tokens): the ridge
towards 0 (damp 0.01) made perplexity worse, 17.35 -> 18.23; towards ``W_K`` with
damp 0.1 it improved, 17.35 -> 16.21. Every position stays in the fit, the first
of each window too: its outputs (the "attention sink") are hundreds of times
larger than the rest, and a refit that leaves them out no longer reproduces
them -- perplexity in the thousands. A lower reconstruction error is not a lower
perplexity: per-layer output error is not the model's loss, and after MLP neuron
removal the refit often halves the first while barely moving the second (after
head removal it wins back most of the loss). Distillation optimises the loss itself.

Because the inputs come from the *pruned* model and the targets from the *dense*
one, the refit also soaks up drift from layers pruned earlier -- which is why it
walks the model layer by layer: layer ``i`` is fitted to the inputs that the
already-refit layers ``0..i-1`` produce, the inputs it will really see. (Fitting
every layer at once, on the unrepaired model's inputs, fits each layer to drift
that the earlier refits then remove: 17.35 -> 27.14 on the same cut.)

The reconstruction error of the refit and of the original ``W_K`` is computed
from the same statistics, and the original is kept where the refit is not
better, so the calibration error never increases. With few tokens per input
dimension the fit learns the calibration tokens rather than the layer and the
error on other text *rises*; so a quarter of the windows is kept out of the fit,
and a projection is refit only where the refit also lowers the error on those.
``restore()`` on the returned handle puts every original weight back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import arch
from ..pruning import calibrate
from ..pruning.undo import PruneHandle, restoring_on_error


def output_projections(model: nn.Module, which=("mlp", "attn")) -> dict[str, nn.Module]:
    """``{"layers.3.mlp": down_proj, "layers.3.attn": o_proj, ...}``: the projections back to the stream."""
    gpt2 = arch.family(model) == "gpt2"
    out = {}
    for i, layer in enumerate(arch.decoder_layers(model)):
        if "mlp" in which:
            block = arch.mlp(layer)
            out[f"layers.{i}.mlp"] = block.c_proj if gpt2 else block.down_proj
        if "attn" in which:
            attn = arch.attention(layer)
            out[f"layers.{i}.attn"] = attn.c_proj if gpt2 else attn.o_proj
    return out


def _in_features(module: nn.Module) -> int:
    return arch.weight_matrix(module).shape[1]


@dataclass
class Statistics:
    """Sufficient statistics of one projection's least-squares problem."""

    G: torch.Tensor   # sum h h^T        (in x in), pruned inputs
    C: torch.Tensor   # sum (y - b) h^T  (out x in), dense targets
    yy: float         # sum ||y - b||^2
    tokens: int

    def add(self, other: "Statistics") -> "Statistics":
        """The statistics of both token sets together (sums add)."""
        return Statistics(self.G + other.G, self.C + other.C, self.yy + other.yy, self.tokens + other.tokens)

    def error(self, W: torch.Tensor) -> float:
        """Mean squared reconstruction error per token: sum_t ||W h_t - y_t||^2 / tokens."""
        W = W.double()
        value = (W @ self.G * W).sum() - 2 * (W * self.C).sum() + self.yy
        return float(value.clamp_min(0)) / self.tokens


def _check_pair(pruned: nn.Module, dense: nn.Module) -> None:
    if pruned is dense:
        raise ValueError("pruned and dense are the same object: keep a dense copy "
                         "(copy.deepcopy(model)) before pruning, to use it as the target.")
    if len(arch.decoder_layers(pruned)) != len(arch.decoder_layers(dense)):
        raise ValueError(f"the pruned model has {len(arch.decoder_layers(pruned))} layers and the dense "
                         f"one {len(arch.decoder_layers(dense))}: the refit pairs layer i with layer i, "
                         "so it repairs removed neurons or heads, not removed layers "
                         "(recover those by distillation).")


@torch.no_grad()
def collect(pruned: nn.Module, dense: nn.Module, windows: torch.Tensor, names=None,
            which=("mlp", "attn"), batch_size: int = 4) -> dict[str, Statistics]:
    """Run both models on the same windows; accumulate each projection's G, C and ||y||^2."""
    _check_pair(pruned, dense)
    p_mods, d_mods = output_projections(pruned, which), output_projections(dense, which)
    names = list(p_mods) if names is None else list(names)
    stats: dict[str, Statistics] = {}
    inputs, targets = {}, {}

    def grab_input(name):
        def hook(module, args):
            inputs[name] = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        return hook

    def grab_target(name):
        def hook(module, args, output):
            y = output.detach().double()
            if module.bias is not None:
                y = y - module.bias.double()
            targets[name] = y.reshape(-1, y.shape[-1])
        return hook

    def fold():
        for n in names:
            batch_stat = _statistics(inputs.pop(n), targets.pop(n))
            stats[n] = batch_stat if n not in stats else stats[n].add(batch_stat)

    arch.forward_windows(pruned, windows, batch_size, paired=dense, after_batch=fold,
                         pre_hooks={p_mods[n]: grab_input(n) for n in names},
                         hooks={d_mods[n]: grab_target(n) for n in names})
    return stats


def solve(stat: Statistics, damp: float = 0.01, prior: torch.Tensor | None = None) -> torch.Tensor:
    """``(C + lambda P) (G + lambda I)^-1``, ``lambda = damp * mean(diag G)`` (float64, Cholesky).

    ``prior`` P (default 0): the weights the ridge pulls towards."""
    G = stat.G
    lam = damp * float(torch.diag(G).mean()) + 1e-12
    A = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    L = torch.linalg.cholesky(A)
    C = stat.C if prior is None else stat.C + lam * prior
    # W' A = C  <=>  A W'^T = C^T  (A symmetric)
    return torch.cholesky_solve(C.T, L).T


def changed_projections(pruned: nn.Module, dense: nn.Module, which=("mlp", "attn")) -> list[str]:
    """Output projections whose input width differs from the dense model's (neurons/heads removed)."""
    _check_pair(pruned, dense)
    p_mods, d_mods = output_projections(pruned, which), output_projections(dense, which)
    return [n for n in p_mods if _in_features(p_mods[n]) != _in_features(d_mods[n])]


@torch.no_grad()
def dense_targets(dense: nn.Module, windows: torch.Tensor, names, which=("mlp", "attn"),
                  batch_size: int = 4) -> dict[str, torch.Tensor]:
    """Each projection's dense output minus its bias, ``(tokens, out)`` float32, windows in order."""
    modules = output_projections(dense, which)
    out: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def grab(name):
        def hook(module, args, output):
            y = output.detach().float()
            if module.bias is not None:
                y = y - module.bias.float()
            out[name].append(y.reshape(-1, y.shape[-1]).cpu())
        return hook

    arch.forward_windows(dense, windows, batch_size, hooks={modules[n]: grab(n) for n in names})
    return {n: torch.cat(parts) for n, parts in out.items()}


def _gather(seen: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The walk's ``collect`` for the refit: every batch's inputs, in window order (they pair
    with the dense targets token by token, and the last windows are held out)."""
    return x if seen is None else torch.cat([seen, x])


def _statistics(h: torch.Tensor, y: torch.Tensor) -> Statistics:
    h, y = h.double(), y.double().to(h.device)
    return Statistics(h.T @ h, y.T @ h, float((y * y).sum()), h.shape[0])


@torch.no_grad()
def refit(pruned: nn.Module, dense: nn.Module, windows: torch.Tensor, damp: float = 0.1,
          names=None, which=("mlp", "attn"), batch_size: int = 4, check_fraction: float = 0.25,
          walk_batch_size: int | None = None) -> PruneHandle:
    """Refit the output projections of ``pruned`` to match ``dense`` on ``windows``; in place.

    Layer by layer, in the order the model runs them (the calibration walk of
    ``pruning.calibrate`` with every group handled on arrival): each projection
    is fitted to the inputs it receives *after* the projections before it were
    refit, which are the inputs it will see when the model runs.

    ``names``: which projections (default: those whose input width changed, see
    ``changed_projections``; pass ``list(output_projections(model))`` for all).
    With few calibration tokens per input dimension the fit can learn the
    calibration text instead of the layer: ``check_fraction`` of the windows
    (the last ones; at least one when there are 4 or more) is then kept out of
    the fit, and a projection is refit only if the refit lowers the error on
    *both* the windows it was fit on and the windows kept out.
    ``walk_batch_size``: windows per batch in the walk (default: all of them in one
    batch; fewer hold fewer activations at once, and each projection's inputs are
    gathered batch by batch before it is refit).
    Returns the undo handle; ``handle.info["errors"]`` has each projection's
    calibration error before and after (on the inputs it was fit to), and whether
    the refit was kept.
    """
    if not damp > 0:
        raise ValueError(f"damp={damp}: the ridge damping must be > 0 (0.01 is a good start).")
    if walk_batch_size is not None and (isinstance(walk_batch_size, bool) or not isinstance(walk_batch_size, int)
                                        or walk_batch_size < 1):
        raise ValueError(f"walk_batch_size={walk_batch_size!r}: give a whole number of windows >= 1, "
                         "or None for all of them in one batch.")
    names = changed_projections(pruned, dense, which) if names is None else list(names)
    windows = calibrate.check_windows(windows, pruned)
    n_check = int(windows.shape[0] * check_fraction) if windows.shape[0] >= 4 else 0
    n_fit = windows.shape[0] - n_check
    fit_tokens = n_fit * windows.shape[1]
    targets = dense_targets(dense, windows, names, which, batch_size)
    wanted = {id(m): n for n, m in output_projections(pruned, which).items() if n in names}
    handle = PruneHandle("refit output projections")
    errors = {}

    def refit_groups(index, layer, groups):
        for group in groups:
            for module in group.modules:
                n = wanted.get(id(module))
                if n is None:
                    continue
                h, y = group.stat, targets[n]
                stat = _statistics(h[:fit_tokens], y[:fit_tokens])
                W = arch.weight_matrix(module)
                new = solve(stat, damp, prior=W.double())  # ridge towards the kept weights
                before, after = stat.error(W), stat.error(new)
                keep = after < before
                row = {"before": before, "after": after if keep else before}
                if n_check:
                    check = _statistics(h[fit_tokens:], y[fit_tokens:])
                    row["check_before"], row["check_after"] = check.error(W), check.error(new)
                    keep = keep and row["check_after"] < row["check_before"]
                    row["after"] = after if keep else before
                row["refit"] = keep
                errors[n] = row
                if keep:
                    handle.save_tensor(module.weight.data)
                    W.copy_(new.to(W.dtype))  # Conv1D: a transposed view, writes through

    with restoring_on_error(handle):
        calibrate.walk(pruned, windows, _gather, refit_groups, on_arrival="all",
                       batch_size=walk_batch_size or windows.shape[0], batched_arrival=True)
    handle.info = {"kind": "refit", "damp": damp, "errors": errors, "fit_windows": n_fit,
                   "check_windows": n_check}
    return handle


@torch.no_grad()
def reconstruction_errors(pruned: nn.Module, dense: nn.Module, windows: torch.Tensor,
                          names=None, which=("mlp", "attn")) -> dict[str, float]:
    """Each projection's mean squared error against the dense output on ``windows`` (e.g. held out)."""
    names = changed_projections(pruned, dense, which) if names is None else list(names)
    stats = collect(pruned, dense, windows, names, which)
    modules = output_projections(pruned, which)
    return {n: stats[n].error(arch.weight_matrix(modules[n])) for n in names}
