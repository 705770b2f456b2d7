"""How much to prune where: per-layer sensitivity, and sparsity allocated by outliers.

Uniform pruning takes the same fraction from every decoder layer. Layers are not
equal, though: prune one layer alone and measure the perplexity, layer by layer,
at a few sparsities (``sensitivity_scan``), and some layers hurt far more than
others. An allocation gives each layer l its own sparsity s_l; it is a fair rival
of uniform pruning when the *total* is the same,

    sum_l n_l * s_l / sum_l n_l = target     (n_l: prunable weights of layer l).

OWL (Yin et al., 2024, "Outlier Weighed Layerwise sparsity") sets s_l from the
share of outliers in a layer. With Wanda's score A_ij = |W_ij| * ||X_j||_2, a layer's
outlier share D_l is the fraction of its scores above M times the layer's mean
score (M = 5 in the paper). Layers with many outliers carry the features the
model relies on, so they are pruned less:

    s_l = target + lam - 2 * lam * (D_l - min D) / (max D - min D)

then shifted so that the total is exactly ``target`` (``owl_sparsities``);
``lam`` bounds how far a layer strays from the target (0.08 in the paper).
``prune_layers`` applies any allocation with magnitude or Wanda scores and
returns the undo handle every prune in the course returns.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core import arch, metrics
from . import calibrate, wanda
from .masks import apply_masks, check_sparsity, topk_mask
from .undo import PruneHandle


def layer_modules(model: nn.Module) -> list[dict[str, nn.Module]]:
    """The prunable Linear layers of each decoder layer, by full name."""
    return [calibrate.layer_modules(model, i) for i in range(len(arch.decoder_layers(model)))]


def layer_sizes(model: nn.Module) -> np.ndarray:
    """Prunable weights per decoder layer (the n_l of the total)."""
    return np.array([sum(arch.weight_matrix(m).numel() for m in mods.values())
                     for mods in layer_modules(model)], dtype=np.float64)


def total_sparsity(model: nn.Module, sparsities: Sequence[float]) -> float:
    """The overall fraction an allocation prunes (weighted by each layer's size)."""
    sizes = layer_sizes(model)
    s = check_allocation(model, sparsities)
    return float((sizes * s).sum() / sizes.sum())


def check_allocation(model: nn.Module, sparsities) -> np.ndarray:
    """One sparsity in [0, 1) per decoder layer, or a clear error."""
    n = len(arch.decoder_layers(model))
    s = np.asarray(list(sparsities), dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"an allocation needs one sparsity per decoder layer: this model has {n} "
                         f"layers, got {s.shape[0] if s.ndim else 'a single number'}.")
    for i, v in enumerate(s):
        check_sparsity(float(v)) if v > 0 else None
        if not 0 <= v < 1:
            raise ValueError(f"layer {i}: sparsity {v} is outside [0, 1).")
    return s


@torch.no_grad()
def prune_layers(model: nn.Module, sparsities: Sequence[float], method: str = "magnitude",
                 calib_windows: torch.Tensor | None = None) -> PruneHandle:
    """Prune decoder layer l to ``sparsities[l]`` (per output row) by magnitude or Wanda scores."""
    s = check_allocation(model, sparsities)
    if method == "magnitude":
        masks = {}
        for i, mods in enumerate(layer_modules(model)):
            if s[i] > 0:
                for name, m in mods.items():
                    masks[name] = topk_mask(arch.weight_matrix(m).abs(), float(s[i]), "row")
        handle = apply_masks(model, masks, f"magnitude, per-layer allocation (total {total_sparsity(model, s):.0%})")
        handle.info.update(method="magnitude", allocation=s.tolist())
        return handle
    if method != "wanda":
        raise ValueError(f"method={method!r}: choose 'magnitude' or 'wanda'.")
    if calib_windows is None:
        raise ValueError("method='wanda' needs calib_windows (token ids, e.g. run.windows.calib).")
    calib_windows = calibrate.check_windows(calib_windows, model)
    handle = PruneHandle(f"wanda, per-layer allocation (total {total_sparsity(model, s):.0%})")

    def prune_layer(index, layer, groups):
        if s[index] == 0:
            return
        for group in groups:
            for module in group.modules:
                weight = arch.weight_matrix(module)
                keep = topk_mask(wanda.wanda_scores(weight, group.stat), float(s[index]), "row")
                handle.save_tensor(module.weight.data)
                weight.mul_(keep.to(weight.dtype))

    return calibrate.prune_walking(model, handle, calib_windows, wanda.collect_sq_norms, prune_layer,
                                   None, 8, "none", None, method="wanda", allocation=s.tolist())


def sensitivity_scan(model: nn.Module, windows: torch.Tensor, sparsities: Sequence[float],
                     layers: Sequence[int] | None = None) -> np.ndarray:
    """Perplexity with ONE layer magnitude-pruned, for each (layer, sparsity): rows = layers."""
    n = len(arch.decoder_layers(model))
    layers = range(n) if layers is None else layers
    out = np.zeros((len(layers), len(sparsities)))
    for r, layer in enumerate(layers):
        for c, sparsity in enumerate(sparsities):
            allocation = np.zeros(n)
            allocation[layer] = sparsity
            handle = prune_layers(model, allocation)
            try:
                out[r, c] = metrics.perplexity(model, windows)
            finally:
                handle.restore()
    return out


@torch.no_grad()
def outlier_shares(model: nn.Module, calib_windows: torch.Tensor, m: float = 5.0,
                   batch_size: int = 4) -> np.ndarray:
    """OWL's D_l: the fraction of Wanda scores above ``m`` x the layer's mean score, per layer."""
    calib_windows = calibrate.check_windows(calib_windows, model)
    per_layer = layer_modules(model)
    sq = {name: None for mods in per_layer for name in mods}
    modules = {name: mod for mods in per_layer for name, mod in mods.items()}

    def make_hook(name):
        def hook(_, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])
            sq[name] = wanda.collect_sq_norms(sq[name], x)
        return hook

    arch.forward_windows(model, calib_windows, batch_size,
                         pre_hooks={module: make_hook(name) for name, module in modules.items()})
    shares = []
    for mods in per_layer:
        scores = torch.cat([wanda.wanda_scores(arch.weight_matrix(mod), sq[name]).reshape(-1)
                            for name, mod in mods.items()])
        shares.append(float((scores > m * scores.mean()).float().mean()))
    return np.array(shares)


def owl_sparsities(model: nn.Module, shares: Sequence[float], target: float, lam: float = 0.08) -> np.ndarray:
    """Per-layer sparsities from outlier shares: more outliers, less pruning; total = ``target``."""
    d = np.asarray(shares, dtype=np.float64)
    span = d.max() - d.min()
    scaled = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    s = target + lam - 2 * lam * scaled
    sizes = layer_sizes(model)
    s = s + (target - (sizes * s).sum() / sizes.sum())  # exactly the target in total
    return np.clip(s, 0.0, 0.99)
