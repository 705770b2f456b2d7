"""The kit shared by every structured prune: requests, slices, and what a module keeps.

Removing heads (``heads``), MLP neurons (``mlp``) or anything else block-shaped
comes down to the same three steps, written once here:

- **validate the request** ``{layer_index: [unit indices]}`` (``check_request``):
  integer indices, each once, inside the layer as it is *now* -- a clear error
  otherwise, naming the value and the valid range;
- **cut the matrices** (``slice_linear``): a new, smaller Linear/Conv1D holding
  only the kept output rows and/or input columns (and the bias entries of the kept
  outputs), the original left untouched so the prune handle can swap it back.
  A unit of width ``size`` (a head: ``head_dim``; a neuron: 1) occupies the
  positions ``block_indices([unit], size)``;
- **remember what is kept** (``current_kept``, ``record_kept``): which units of
  the *original* model a module still holds, written through the handle (so
  ``restore`` resets it); ``io`` saves and rebuilds pruned models from it.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Callable

import numpy as np
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..core import arch
from .undo import PruneHandle


# ---------------------------------------------------------------- requests --

def _as_index(value, what: str) -> int:
    """An int index (Python or numpy/torch integer), refusing floats and bools."""
    if isinstance(value, bool):
        raise TypeError(f"{what} {value!r} is a bool; give an integer index.")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} {value!r} is not an integer index "
                        f"(got {type(value).__name__}); give a whole number, e.g. 0.") from None


def check_request(model: nn.Module, request, unit: str,
                  count_of: Callable[[int], int]) -> dict[int, list[int]]:
    """Validate ``{layer: [indices]}`` and return it with sorted int lists.

    ``unit`` ("head", "neuron") and ``count_of(layer) -> how many exist`` make the
    error messages concrete. Empty lists are allowed (nothing to do there).
    """
    if not isinstance(request, Mapping):
        raise TypeError(f"{unit}s must be given as {{layer_index: [{unit} indices]}}, "
                        f"e.g. {{0: [1, 2]}}; got {type(request).__name__}.")
    n_layers = len(arch.decoder_layers(model))
    clean: dict[int, list[int]] = {}
    for raw_layer, raw_indices in request.items():
        layer = _as_index(raw_layer, "layer index")
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has {n_layers} decoder "
                             f"layers; use a layer index in 0..{n_layers - 1} (negative indices "
                             "are not accepted).")
        if layer in clean:
            raise ValueError(f"layer {layer} appears twice in the request; merge its lists.")
        if isinstance(raw_indices, (torch.Tensor, np.ndarray)):
            raw_indices = raw_indices.tolist()
        if isinstance(raw_indices, (str, bytes)) or not isinstance(raw_indices, (Sequence, set, frozenset)):
            raise TypeError(f"layer {layer}: expected a list of {unit} indices, "
                            f"got {type(raw_indices).__name__} {raw_indices!r}; write a list, "
                            f"e.g. {{{layer}: [0, 1]}}.")
        n = count_of(layer)
        seen: set[int] = set()
        for raw in raw_indices:
            i = _as_index(raw, f"{unit} index")
            if i < 0:
                raise ValueError(f"layer {layer}: {unit} index {i} is negative; use an index "
                                 f"in 0..{n - 1} ({unit}s are counted from 0 in this layer).")
            if i >= n:
                raise ValueError(f"layer {layer}: {unit} index {i} is out of range; this layer "
                                 f"has {n} {unit}s: use indices in 0..{n - 1}.")
            if i in seen:
                raise ValueError(f"layer {layer}: {unit} index {i} is listed twice; "
                                 "give each index once.")
            seen.add(i)
        clean[layer] = sorted(seen)
    return clean


# ------------------------------------------------------------------ slices --

def block_indices(indices: Sequence[int], size: int, device) -> torch.Tensor:
    """Positions of blocks ``indices`` of width ``size``: [i*size, ..., i*size+size-1, ...]."""
    idx = torch.as_tensor(list(indices), dtype=torch.long, device=device)
    return (idx[:, None] * size + torch.arange(size, device=device)).reshape(-1)


@torch.no_grad()
def slice_linear(module: nn.Module, keep_out: torch.Tensor | None = None,
                 keep_in: torch.Tensor | None = None) -> nn.Module:
    """A new, smaller copy of a Linear/Conv1D holding only the kept outputs/inputs.

    ``keep_out`` / ``keep_in`` are index tensors (None keeps all). The bias
    belongs to the outputs, so it follows ``keep_out``. The original module is
    left untouched (the handle swaps it back on restore).
    """
    weight = arch.weight_matrix(module)  # (out, in), whatever the storage
    if keep_out is not None:
        weight = weight.index_select(0, keep_out.to(weight.device))
    if keep_in is not None:
        weight = weight.index_select(1, keep_in.to(weight.device))
    bias = module.bias
    if bias is not None:
        bias = bias.data if keep_out is None else bias.data.index_select(0, keep_out.to(bias.device))
    out_features, in_features = weight.shape
    trainable = module.weight.requires_grad
    if isinstance(module, Conv1D):
        new = Conv1D(out_features, in_features)
        new.weight = nn.Parameter(weight.t().contiguous().clone(), requires_grad=trainable)
        new.bias = nn.Parameter(bias.clone(), requires_grad=trainable)
    elif isinstance(module, nn.Linear):
        new = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
        new.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=trainable)
        if bias is not None:
            new.bias = nn.Parameter(bias.clone(), requires_grad=trainable)
    else:
        raise TypeError(f"cannot slice {type(module).__name__}: only nn.Linear and Conv1D.")
    new.train(module.training)
    return new


# ------------------------------------------------------------ what is kept --

def current_kept(module: nn.Module, attr: str, n: int) -> list[int]:
    """Original indices this module still holds (all of them before any removal)."""
    kept = getattr(module, attr, None)
    return list(range(n)) if kept is None else list(kept)


def record_kept(handle: PruneHandle, module: nn.Module, attr: str, kept: list[int]) -> None:
    """Remember (undoably) which original heads/neurons a module keeps."""
    if not hasattr(module, attr):
        # PruneHandle.set_attr needs an old value to put back: None = "nothing removed".
        setattr(module, attr, None)
    handle.set_attr(module, attr, kept)
