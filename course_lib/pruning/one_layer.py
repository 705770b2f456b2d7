"""One weight matrix at a time: the lesson's microscope for unstructured methods.

Every method prunes a layer so that ``W_pruned @ x`` stays close to ``W @ x`` on
real inputs ``x``. On one matrix we can measure exactly how close:

    error = ||(W - W_pruned) X^T||_F / ||W X^T||_F      (X: calibration inputs)

Magnitude pruning ignores ``X``; Wanda weighs each weight by its input's size;
SparseGPT also *changes the kept weights* to cancel the error of the pruned ones.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import arch
from .masks import parse_pattern, scores_to_mask
from .sparsegpt import sparsegpt_layer
from .wanda import wanda_scores

METHODS = ("magnitude", "wanda", "sparsegpt")


@torch.no_grad()
def module_inputs(model: nn.Module, module: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """The inputs ``module`` sees when the model reads ``windows``, as (tokens, in_features)."""
    seen = []

    def record(_, args):
        seen.append(args[0].reshape(-1, args[0].shape[-1]))
        raise arch.StopForward  # the layers after this one are not needed

    # every window in one batch, as the lesson's stored errors were measured
    arch.forward_windows(model, windows, max(len(windows), 1), pre_hooks={module: record})
    return torch.cat(seen).float()


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor) -> float:
    """Relative output error of the pruned matrix on these inputs (0 = identical outputs)."""
    reference = inputs @ weight.float().t()
    return float((inputs @ (weight.float() - pruned.float()).t()).norm() / reference.norm())


def prune_matrix(weight: torch.Tensor, inputs: torch.Tensor, method: str, sparsity: float = 0.5,
                 pattern=None) -> torch.Tensor:
    """A pruned copy of one (out, in) weight, by ``method``, using the inputs where it needs them."""
    pattern = parse_pattern(pattern)
    if method == "magnitude":
        return weight * scores_to_mask(weight.abs(), sparsity, "row", pattern)
    if method == "wanda":
        return weight * scores_to_mask(wanda_scores(weight, inputs.pow(2).sum(0)), sparsity, "row", pattern)
    if method == "sparsegpt":
        hessian = 2 * inputs.t() @ inputs / inputs.shape[0]
        return sparsegpt_layer(weight, hessian, sparsity, pattern)[0]
    raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}.")


def compare_methods(model: nn.Module, module_name: str, windows: torch.Tensor, sparsity: float = 0.5,
                    pattern=None) -> dict[str, float]:
    """Reconstruction error of each method on one named decoder matrix, same calibration inputs."""
    module = dict(model.named_modules())[module_name]
    inputs = module_inputs(model, module, windows)
    weight = arch.weight_matrix(module)
    return {m: reconstruction_error(weight, prune_matrix(weight, inputs, m, sparsity, pattern), inputs)
            for m in METHODS}
