"""Cuts of exactly the same size: width against depth, compared fairly.

"Width or depth?" (Minitron, Muralidharan et al. 2024) is only a fair question when every
answer removes the same number of parameters. Count what each unit of a gated MLP /
grouped-query decoder layer holds (hidden size ``d``, MLP width ``f``, ``h`` query heads of
size ``e`` in ``g`` KV groups):

- a **decoder layer**: its query and output projections (``2 d h e``), its key and value
  projections (``2 d g e``), its MLP (``3 d f``) and two norms (``2 d``) (SmolLM2-135M:
  d = 576, h = 9, e = 64, g = 3, f = 1536: 3,540,096);
- an **MLP neuron**: its row of ``gate`` and of ``up``, its column of ``down``: ``3 d``
  (SmolLM2: 1,728);
- a **KV group**: its key and value heads (``2 e d``), its ``h/g`` query heads (``(h/g) e d``)
  and their columns of ``o_proj`` (``(h/g) e d``) (SmolLM2: 64 x 576 x (2 + 3 + 3) = 294,912).

A budget of ``k`` whole layers is the unit here (depth can only move in layers). Width
spends the same parameters in neurons: ``k x layer / neuron`` of them, which is a whole
number when ``neuron`` divides it (SmolLM2: 3 layers = 10,620,288 = 6,146 x 1,728 exactly;
otherwise the nearest count below, never more, and ``Cut.parameters`` says what was
removed). Four cuts of the same budget:

- ``depth``: the ``k`` layers of least block influence (``layers.block_influence``);
- ``width (MLP)``: neurons only, the same share from every layer to within one neuron
  (``mlp.neurons_for_parameters``: the lowest measured contributions go,
  ``mlp.neuron_importance_contribution``);
- ``width (attention + MLP)``: one KV group from every layer (least contribution,
  ``heads.head_importance_contribution``), the rest of the budget in neurons;
- ``depth + width``: ``k // 2`` layers, the rest in neurons of the layers that stay.

Every score (``SCORES``: the command line's defaults, through ``recipes.importance``) is
measured once on the dense model; the cuts are then requests in the dense
model's own indices, applied in an order that keeps them valid (heads and neurons first,
whole layers last: removing a layer renumbers the ones after it).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core import arch, metrics
from ..core.names import STRUCTURED, check_score
from . import heads as H
from . import layers as Lyr
from . import mlp as M
from .recipes import importance
from .undo import PruneHandle

FAMILIES = ("depth", "width (MLP)", "width (attention + MLP)", "depth + width")
# the scores that choose what goes: the command line's defaults, so a cut here is the cut ``prune`` makes
SCORES = {method: check_score(method) for method in STRUCTURED}


@dataclass
class Cut:
    """One way to spend the budget, in the dense model's layer indices."""

    name: str
    layers: list[int] = field(default_factory=list)  # whole decoder layers removed
    heads: dict[int, list[int]] = field(default_factory=dict)  # {layer: query heads} of whole KV groups
    neurons: dict[int, list[int]] = field(default_factory=dict)  # {layer: MLP neurons}
    parameters: int = 0  # removed, counted on the pruned model

    def describe(self) -> str:
        parts = []
        if self.layers:
            parts.append(f"{len(self.layers)} layers")
        if self.heads:
            parts.append(f"{sum(map(len, self.heads.values()))} query heads in whole KV groups")
        if self.neurons:
            parts.append(f"{sum(map(len, self.neurons.values())):,} MLP neurons")
        return " + ".join(parts) + f" = {self.parameters:,} parameters"


def layer_parameters(model: nn.Module, layer: int = 0) -> int:
    """Parameters of one decoder layer (every matrix, bias and norm in it)."""
    return sum(p.numel() for p in arch.decoder_layers(model)[layer].parameters())


def apply(model: nn.Module, cut: Cut) -> list[PruneHandle]:
    """Prune ``model`` in place by ``cut``; the handles restore it (in reverse order)."""
    handles = []
    if cut.heads:
        handles.append(H.remove_heads(model, cut.heads))
    if cut.neurons:
        handles.append(M.remove_neurons(model, cut.neurons))
    if cut.layers:  # last: removing a layer renumbers the layers after it
        handles.append(Lyr.remove_layers(model, cut.layers))
    return handles


def _neurons_in(model: nn.Module, scores, parameters: int, layers: list[int]) -> dict[int, list[int]]:
    """``mlp.neurons_for_parameters`` over ``layers`` only, in the dense model's indices."""
    request = M.neurons_for_parameters(model, [scores[i] for i in layers], parameters)
    return {layers[position]: chosen for position, chosen in request.items()}


def _counted(model: nn.Module, cut: Cut) -> Cut:
    """``cut`` with ``parameters`` counted: applied to ``model``, counted, restored exactly."""
    before = metrics.parameter_count(model)
    handles = apply(model, cut)
    cut.parameters = before - metrics.parameter_count(model)
    for handle in reversed(handles):
        handle.restore()
    return cut


def equal_cuts(model: nn.Module, calib: torch.Tensor, n_layers: int) -> dict[str, Cut]:
    """The four cuts of ``FAMILIES``, each removing the parameters of ``n_layers`` whole layers
    (to within one neuron below: ``Cut.parameters`` holds the count). ``model`` is left as it was."""
    total = len(arch.decoder_layers(model))
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 2 <= n_layers < total:
        raise ValueError(f"n_layers={n_layers!r}: the budget is a whole number of layers between 2 and "
                         f"{total - 1} (depth + width spends half of it on layers, so at least 2).")
    influence, contribution, neuron_scores = (importance(model, method, SCORES[method], calib)
                                              for method in ("layers", "heads", "mlp"))
    budget = n_layers * layer_parameters(model)
    everywhere = list(range(total))
    cuts = {"depth": Cut("depth", layers=sorted(Lyr.least_important_layers(influence, n_layers))),
            "width (MLP)": Cut("width (MLP)", neurons=_neurons_in(model, neuron_scores, budget, everywhere))}
    groups = H.least_important_groups(contribution, 1, model)
    with_groups = _counted(model, Cut("groups", heads=groups))
    cuts["width (attention + MLP)"] = Cut("width (attention + MLP)", heads=groups, neurons=_neurons_in(
        model, neuron_scores, budget - with_groups.parameters, everywhere))
    half = sorted(Lyr.least_important_layers(influence, n_layers // 2))
    kept = [i for i in everywhere if i not in half]
    cuts["depth + width"] = Cut("depth + width", layers=half, neurons=_neurons_in(
        model, neuron_scores, budget - (n_layers // 2) * layer_parameters(model), kept))
    return {name: _counted(model, cut) for name, cut in cuts.items()}


def pruned_copies(model: nn.Module, cuts: dict[str, Cut]) -> dict[str, nn.Module]:
    """A pruned deep copy of ``model`` per cut (the dense model untouched)."""
    out = {}
    for name, cut in cuts.items():
        twin = copy.deepcopy(model)
        for handle in apply(twin, cut):
            handle.make_permanent()
        out[name] = twin
    return out
