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

    W' = argmin_W  sum_t ||W h_t - y_t||^2 + lambda ||W||^2
       = C (G + lambda I)^-1,      G = sum_t h_t h_t^T  (k x k),  C = sum_t y_t h_t^T.

``G`` is the same input Gram matrix (the "Hessian" ``2XX^T``) that SparseGPT
inverts; the difference is only the shape of the solution. SparseGPT keeps the
full matrix and, when it drops one weight, pushes the error onto the remaining
weights of the row through ``G^-1``; here a whole block of columns goes at once
and we solve for all the remaining columns in one step, on a smaller matrix. If
the pruned model's inputs equal the dense model's (one layer pruned, nothing
upstream changed), ``C = W G_full[:, K]`` and the solution is
``W' = W_K + W_D G_DK G_KK^-1``: each dropped column is redistributed onto the
kept columns in proportion to how well they predict it -- exactly the OBS update.

Because the inputs come from the *pruned* model and the targets from the *dense*
one, the refit also soaks up drift from layers pruned earlier.

The damping ``lambda = damp * mean(diag G)`` keeps ``G`` invertible (dead units)
and the refit from overfitting the calibration tokens. Ridge can, in principle,
fit the calibration data slightly worse than the original ``W_K``; the
reconstruction error of both is computed from the same statistics and the
original is kept where the refit is not better, so the calibration error never
increases. With few tokens per input dimension (8 x 128 tokens for ``o_proj``'s
384 inputs, measured on SmolLM2) the fit learns the calibration tokens rather
than the layer and the error on other text *rises*; so a quarter of the windows
is kept out of the fit, and a projection is refit only where the refit also
lowers the error on those. ``restore()`` on the returned handle puts every
original weight back.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import arch
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

    hooks = [p_mods[n].register_forward_pre_hook(grab_input(n)) for n in names]
    hooks += [d_mods[n].register_forward_hook(grab_target(n)) for n in names]
    device = next(pruned.parameters()).device
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size].to(device)
            dense(batch, use_cache=False)
            pruned(batch, use_cache=False)
            for n in names:
                h, y = inputs.pop(n), targets.pop(n)
                if n not in stats:
                    stats[n] = Statistics(torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64,
                                                      device=h.device),
                                          torch.zeros(y.shape[1], h.shape[1], dtype=torch.float64,
                                                      device=h.device), 0.0, 0)
                s = stats[n]
                s.G += h.T @ h
                s.C += y.T @ h
                s.yy += float((y * y).sum())
                s.tokens += h.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return stats


def solve(stat: Statistics, damp: float = 0.01) -> torch.Tensor:
    """``C (G + lambda I)^-1`` with ``lambda = damp * mean(diag G)`` (float64, Cholesky)."""
    G = stat.G
    lam = damp * float(torch.diag(G).mean()) + 1e-12
    A = G + lam * torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    L = torch.linalg.cholesky(A)
    # W' A = C  <=>  A W'^T = C^T  (A symmetric)
    return torch.cholesky_solve(stat.C.T, L).T


def changed_projections(pruned: nn.Module, dense: nn.Module, which=("mlp", "attn")) -> list[str]:
    """Output projections whose input width differs from the dense model's (neurons/heads removed)."""
    _check_pair(pruned, dense)
    p_mods, d_mods = output_projections(pruned, which), output_projections(dense, which)
    return [n for n in p_mods if _in_features(p_mods[n]) != _in_features(d_mods[n])]


@torch.no_grad()
def refit(pruned: nn.Module, dense: nn.Module, windows: torch.Tensor, damp: float = 0.01,
          names=None, which=("mlp", "attn"), batch_size: int = 4, check_fraction: float = 0.25) -> PruneHandle:
    """Refit the output projections of ``pruned`` to match ``dense`` on ``windows``; in place.

    ``names``: which projections (default: those whose input width changed, see
    ``changed_projections``; pass ``list(output_projections(model))`` for all).
    With few calibration tokens per input dimension the fit can learn the
    calibration text instead of the layer: ``check_fraction`` of the windows
    (the last ones; at least one when there are 4 or more) is then kept out of
    the fit, and a projection is refit only if the refit lowers the error on
    *both* the windows it was fit on and the windows kept out.
    Returns the undo handle; ``handle.info["errors"]`` has each projection's
    calibration error before and after, and whether the refit was kept.
    """
    if not damp > 0:
        raise ValueError(f"damp={damp}: the ridge damping must be > 0 (0.01 is a good start).")
    names = changed_projections(pruned, dense, which) if names is None else list(names)
    n_check = int(windows.shape[0] * check_fraction) if windows.shape[0] >= 4 else 0
    fit_windows = windows[:windows.shape[0] - n_check]
    stats = collect(pruned, dense, fit_windows, names, which, batch_size)
    checks = collect(pruned, dense, windows[windows.shape[0] - n_check:], names, which,
                     batch_size) if n_check else {}
    modules = output_projections(pruned, which)
    handle = PruneHandle("refit output projections")
    errors = {}
    with restoring_on_error(handle):
        for n in names:
            module, stat = modules[n], stats[n]
            W = arch.weight_matrix(module)
            new = solve(stat, damp)
            before, after = stat.error(W), stat.error(new)
            keep = after < before
            row = {"before": before, "after": after if keep else before}
            if n in checks:
                row["check_before"], row["check_after"] = checks[n].error(W), checks[n].error(new)
                keep = keep and row["check_after"] < row["check_before"]
                row["after"] = after if keep else before
            row["refit"] = keep
            errors[n] = row
            if keep:
                handle.save_tensor(module.weight.data)
                W.copy_(new.to(W.dtype))  # Conv1D: a transposed view, writes through
    handle.info = {"kind": "refit", "damp": damp, "errors": errors, "fit_windows": len(fit_windows),
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
