"""Model-level recipes: one method name and one amount -> which weights, heads or neurons go.

The command line, the benchmark and the lessons share these, so "MLP 25%" means
the same cut everywhere: the same share of each layer, chosen by the same score.

Which units a structured method removes is decided by a score (``SCORES``). The
default is data-aware: a neuron's or a head's measured contribution to the layer output
on calibration text (for a neuron, its down-projection column norm times its RMS
activation; lesson 4 teaches the mean |activation|, which the contribution beats on
SmolLM2, see ``pruning.mlp``), a layer's block influence. The free weight-norm score
stays available by name, but it is never chosen silently: lesson 4 shows it ruining
SmolLM2 (25% of the MLP neurons: perplexity 21.82 by activation, 1,520,526 by weight norm).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import arch, metrics
from ..core.names import (CALIBRATED, METHODS, SCORE_MEANING, SCORES, STRUCTURED,  # noqa: F401 (re-exported)
                          UNSTRUCTURED, check_method, check_score, needs_calibration)
from .heads import (head_importance_ablation, head_importance_contribution, head_importance_weight_norm,
                    least_important_groups, least_important_heads, remove_heads)
from .layers import block_influence, layers_for_fraction, least_important_layers, remove_layers
from .masks import check_sparsity, magnitude_prune
from .mlp import (least_important_neurons, neuron_importance_activation, neuron_importance_contribution,
                  neuron_importance_weight_norm, remove_neurons)
from .sparsegpt import sparsegpt_prune
from .undo import PruneHandle
from .wanda import wanda_prune


def importance(model: nn.Module, method: str, score: str | None = None, calib: torch.Tensor | None = None):
    """The importance table ``score`` gives the units of a structured ``method`` (lowest goes first).

    heads: layers x heads; mlp: one tensor per layer; layers: one value per layer.
    """
    score = check_score(method, score)
    if score is None:
        raise ValueError(f"method {method!r} zeroes single weights: it has no heads, neurons or layers to score.")
    if score == "weight-norm":
        return head_importance_weight_norm(model) if method == "heads" else neuron_importance_weight_norm(model)
    if calib is None:
        raise ValueError(f"the {score!r} score of {method} reads calibration text: give calib=windows.calib "
                         "(the command line: --n-calib windows), or choose the data-free score 'weight-norm' "
                         "(scores=... from head_importance_weight_norm / neuron_importance_weight_norm; "
                         "lesson 4 shows what it can cost).")
    if score == "contribution":
        return (head_importance_contribution(model, calib) if method == "heads"
                else neuron_importance_contribution(model, calib))
    if score == "ablation":
        return head_importance_ablation(model, calib)
    if score == "activation":
        return neuron_importance_activation(model, calib)
    return block_influence(model, calib)


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def heads_request(model: nn.Module, fraction: float, scores=None, calib=None) -> dict[int, list[int]]:
    """The least important heads, ``fraction`` of each layer's heads.

    ``scores``: a layers x heads importance table; by default each head's measured
    contribution on ``calib`` (``head_importance_contribution``; ``importance`` names
    the others, e.g. the data-free weight norm).

    With grouped-query attention every KV group must keep as many query heads as
    the others, so the same number goes from every group: round(fraction x
    group size) per group (at least one if fraction > 0, and each group keeps one).
    SmolLM2 (groups of 3): 25% -> 1 per group (33%), 50% -> 2 per group (67%).
    """
    fraction = check_sparsity(fraction)
    shape = arch.attention_shape(model, 0)
    layers = len(arch.decoder_layers(model))
    if any(arch.attention_shape(model, i) != shape for i in range(layers)):
        raise ValueError("layers have different head counts (already pruned?): "
                         "prune heads of a fresh model.")
    if fraction == 0:
        return {}
    if shape.group_size > 1:
        per_group = min(max(_round_half_up(fraction * shape.group_size), 1), shape.group_size - 1)
        count = per_group * shape.n_kv_heads
    else:
        count = min(max(_round_half_up(fraction * shape.n_heads), 1), shape.n_heads - 1)
    scores = importance(model, "heads", calib=calib) if scores is None else scores
    return least_important_heads(scores, count=count, model=model)


def neurons_request(model: nn.Module, fraction: float, scores=None, calib=None) -> dict[int, list[int]]:
    """The least important MLP neurons, ``fraction`` of every layer.

    ``scores``: per-layer importances; by default each neuron's measured contribution on
    ``calib`` (``neuron_importance_contribution``; ``importance`` names the others).
    """
    fraction = check_sparsity(fraction)
    scores = importance(model, "mlp", calib=calib) if scores is None else scores
    return least_important_neurons(scores, fraction)


def uniform_heads_request(model: nn.Module, per_group: int, scores=None, calib=None) -> dict[int, list[int]]:
    """``per_group`` query heads out of every KV group of every layer (each layer, each
    group picks its own weakest by ``scores``): the same shapes everywhere, so the
    result saves as a standard checkpoint (``io.export_pretrained``). Without GQA a
    "group" is one head's own group: ``per_group`` heads go from each layer."""
    shape = arch.attention_shape(model, 0)
    limit = shape.group_size - 1 if shape.group_size > 1 else shape.n_heads - 1
    if isinstance(per_group, bool) or not isinstance(per_group, int) or not 0 <= per_group <= limit:
        raise ValueError(f"per_group={per_group!r}: give a whole number in 0..{limit} (every "
                         f"{'group' if shape.group_size > 1 else 'layer'} keeps a head).")
    if per_group == 0:
        return {}
    scores = importance(model, "heads", calib=calib) if scores is None else scores
    count = per_group * shape.n_kv_heads if shape.group_size > 1 else per_group
    return least_important_heads(scores, count=count, model=model)


def uniform_groups_request(model: nn.Module, n_groups: int, scores=None, calib=None) -> dict[int, list[int]]:
    """``n_groups`` whole KV groups (a KV head and its query heads) out of every layer,
    each layer choosing its own weakest: uniform, so it saves as a standard checkpoint."""
    scores = importance(model, "heads", calib=calib) if scores is None else scores
    return least_important_groups(scores, n_groups, model)


def uniform_neurons_request(model: nn.Module, fraction: float, scores=None, calib=None) -> dict[int, list[int]]:
    """The same number of MLP neurons, round(fraction x width), out of every layer (each
    layer's weakest by its own scores): uniform, so it saves as a standard checkpoint."""
    widths = {arch.mlp_width(model, i) for i in range(len(arch.decoder_layers(model)))}
    if len(widths) > 1:
        raise ValueError(f"layers have different MLP widths {sorted(widths)} (already pruned?): "
                         "a uniform cut starts from equal widths.")
    return neurons_request(model, fraction, scores, calib)


def prune_with(model: nn.Module, method: str, sparsity: float, pattern=None,
               calib: torch.Tensor | None = None, score: str | None = None) -> PruneHandle:
    """Prune ``model`` in place with one of ``METHODS``; returns the undo handle.

    heads/mlp: ``sparsity`` is the fraction of heads/neurons removed per layer;
    layers: the fraction of decoder layers removed. ``score`` (structured methods,
    one of ``SCORES[method]``) decides which go: by default the data-aware one, read
    from ``calib``. ``handle.info["score"]`` names the score used.
    """
    method, pattern = check_method(method, pattern)
    score = check_score(method, score)
    if method in STRUCTURED:
        sparsity = check_sparsity(sparsity)
    if needs_calibration(method, score) and calib is None:
        raise ValueError(f"method {method!r}" + (f" with the {score!r} score" if score else "")
                         + " needs calibration windows (calib=windows.calib)"
                         + (": or score='weight-norm', data-free." if score and "weight-norm" in SCORES[method]
                            else "."))
    if method == "magnitude":
        return magnitude_prune(model, sparsity, pattern=pattern, keep_masks=False)
    if method == "wanda":
        return wanda_prune(model, calib, sparsity, pattern=pattern, keep_masks=False)
    if method == "sparsegpt":
        return sparsegpt_prune(model, calib, sparsity, pattern=pattern, keep_masks=False)
    if method == "layers":  # fraction of the decoder layers, least block influence first
        handle = remove_layers(model, least_important_layers(importance(model, method, score, calib),
                                                             layers_for_fraction(model, sparsity)))
    elif method == "heads":
        handle = remove_heads(model, heads_request(model, sparsity, importance(model, method, score, calib)))
    else:
        handle = remove_neurons(model, neurons_request(model, sparsity, importance(model, method, score, calib)))
    handle.info["score"] = score
    return handle


def structure_count(model: nn.Module, method: str) -> int:
    """Total heads (method 'heads') or MLP neurons ('mlp') over all layers; or the layers ('layers')."""
    layers = range(len(arch.decoder_layers(model)))
    if method == "layers":
        return len(layers)
    if method == "heads":
        return sum(arch.attention_shape(model, i).n_heads for i in layers)
    return sum(arch.mlp_width(model, i) for i in layers)


def achieved(dense: nn.Module, pruned: nn.Module, method: str) -> float:
    """Zeros among decoder weights (unstructured), or the fraction of heads/neurons removed."""
    if method in STRUCTURED:
        return 1 - structure_count(pruned, method) / structure_count(dense, method)
    return metrics.total_sparsity(pruned)
