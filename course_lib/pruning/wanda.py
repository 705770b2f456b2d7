"""Wanda: pruning by Weights AND Activations (Sun, Liu, Bair & Kolter, 2023).

The error a pruned weight causes on the layer's output is |W_ij| * |x_j|, so Wanda
scores every weight by

    S_ij = |W_ij| * ||X_j||_2

where ||X_j||_2 is the norm of input channel j over all calibration tokens. A
small weight on a channel that carries huge activations (LLMs have a few such
"outlier" channels) is worth keeping; magnitude pruning would drop it. Weights
are compared *within each output row* (each output loses the same fraction),
or within every group of M inputs for N:M patterns. No weight is updated.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import arch
from . import calibrate
from .masks import check_target, describe, scores_to_mask
from .undo import PruneHandle


def collect_sq_norms(stat, x: torch.Tensor) -> torch.Tensor:
    """Running sum over tokens of x_j^2 for each input channel j (x: tokens x in_features), in float64."""
    sq = x.double().pow(2).sum(dim=0)
    return sq if stat is None else stat.add_(sq)


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 for an (out, in) weight and the per-channel sums of squares."""
    return weight.abs().float() * sq_norms.sqrt().unsqueeze(0)


def wanda_prune(model: nn.Module, calib_windows: torch.Tensor, sparsity: float = 0.5, pattern=None,
                batch_size: int = 8, on_arrival: str = "none", keep_masks: bool = True,
                progress=None) -> PruneHandle:
    """Prune every decoder Linear/Conv1D with Wanda scores; returns an undo handle.

    ``calib_windows``: (n, seq_len) token ids, e.g. ``data.windows_for(tok, name).calib``.
    ``pattern="2:4"`` gives N:M sparsity (then the sparsity is 1 - N/M).
    ``batch_size`` / ``on_arrival``: how the layers are walked, see ``calibrate.walk``.
    """
    sparsity, pattern = check_target(model, sparsity, pattern)
    calib_windows = calibrate.check_windows(calib_windows, model)
    handle = PruneHandle(describe("wanda", sparsity, pattern))
    masks = {}

    def prune_layer(index, layer, groups):
        full_name = {id(m): name for name, m in calibrate.layer_modules(model, index).items()}
        for group in groups:  # q/k/v share one statistic, but each matrix gets its own mask
            for module in group.modules:
                weight = arch.weight_matrix(module)
                keep = scores_to_mask(wanda_scores(weight, group.stat), sparsity, "row", pattern)
                handle.save_tensor(module.weight.data)
                weight.mul_(keep.to(weight.dtype))
                if keep_masks:
                    masks[full_name[id(module)]] = keep

    return calibrate.prune_walking(model, handle, calib_windows, collect_sq_norms, prune_layer,
                                   masks if keep_masks else None, batch_size, on_arrival, progress,
                                   method="wanda", requested=sparsity, scope="row", pattern=pattern)
