"""Depth pruning: remove whole decoder layers.

A decoder layer *adds* to the residual stream: ``h_out = h_in + attn(...) + mlp(...)``.
Removing the layer therefore leaves ``h_out = h_in``: the stream passes through
unchanged and every later layer reads what the removed one received. That is
the whole method, and it is the cleanest structured cut there is: a model with
``L - k`` layers runs ``(L - k) / L`` of the decoder's work per token, on plain
dense kernels, with nothing to slice inside any matrix.

Which layers? Two scores, both measured on calibration text:

- **block influence** (ShortGPT, Men et al. 2024): how much the layer turns the
  hidden state, ``BI_l = 1 - mean_tokens cos(h_in, h_out)``. A layer whose output
  points where its input pointed mostly rescales the stream; removing it changes
  little. One forward pass scores every layer.
- **perplexity when skipped** (the costly reference): run the model once per layer
  with that layer replaced by the identity (``with skipping(model, [l]):``) and
  record the perplexity increase. ``L`` evaluations, but it measures exactly what
  we care about.

``least_important_layers`` picks the ``k`` lowest-scoring layers; ``contiguous_block``
picks the ``k`` consecutive layers whose summed score is lowest (the "deeper layers
are redundant" recipe, Gromov et al. 2024: the block usually sits near the end).

After ``remove_layers`` the model is a normal, smaller model:

- the ``ModuleList`` holds only the kept layers (their weights untouched);
- ``config.num_hidden_layers`` and every per-layer list of the config (Gemma3's
  and Qwen2's ``layer_types``: which layers use sliding-window attention) keep
  only the kept entries, so masks and rotary tables still go to the right layer;
- each attention's ``layer_idx`` (and the layer's own, where it has one) is
  renumbered ``0..L-k-1``: the KV cache is a list indexed by ``layer_idx``, and a
  stale index would make ``generate()`` read another layer's keys, or find an
  empty slot 0 and restart the positions;
- ``io.export_pretrained`` writes it and a plain ``AutoModelForCausalLM.from_pretrained``
  loads it back, no course code needed.

Every change goes through a ``PruneHandle``: ``restore()`` puts the original
layer list, indices and config back, bit for bit.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
from torch import nn

from ..core import arch, data
from .undo import PruneHandle, restoring_on_error

KEPT_LAYERS_ATTR = "course_kept_layers"
# config keys that are per-layer lists under another name than a list of length L
_NOT_PER_LAYER = {"architectures", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens"}


def _container(model: nn.Module) -> nn.Module:
    """The module that owns the decoder ``ModuleList`` (``transformer`` or ``model``)."""
    return model.transformer if arch.family(model) == "gpt2" else model.model


def _list_attr(model: nn.Module) -> str:
    return "h" if arch.family(model) == "gpt2" else "layers"


def _check_layers(model: nn.Module, layers) -> list[int]:
    n = len(arch.decoder_layers(model))
    try:
        chosen = sorted({int(i) for i in layers})
    except (TypeError, ValueError) as err:
        raise ValueError(f"layers={layers!r}: give a list of layer indices (0..{n - 1}).") from err
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer indices {bad} do not exist: the model has {n} decoder layers "
                         f"(0..{n - 1}), counted as it is now.")
    if len(chosen) >= n:
        raise ValueError(f"removing all {n} decoder layers would leave no model: remove at most "
                         f"{n - 1}.")
    return chosen


def kept_layers(model: nn.Module) -> list[int]:
    """Original indices of the decoder layers still present."""
    n = len(arch.decoder_layers(model))
    return list(getattr(model, KEPT_LAYERS_ATTR, range(n)))


# ------------------------------------------------------------------ removal --

@torch.no_grad()
def remove_layers(model: nn.Module, layers: Sequence[int]) -> PruneHandle:
    """Remove decoder layers ``layers`` (indices as the model is now); returns the undo handle.

    See the module docstring for everything that is updated besides the layer list.
    """
    chosen = _check_layers(model, layers)
    config = model.config
    if arch.family(model) == "gpt2" and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("this GPT-2 scales attention by 1/(layer_idx+1) "
                         "(scale_attn_by_inverse_layer_idx=True): a renumbered layer would get "
                         "another scale when reloaded. Depth pruning supports models without it.")
    old = arch.decoder_layers(model)
    n = len(old)
    keep = [i for i in range(n) if i not in set(chosen)]
    handle = PruneHandle("remove layers")
    original = kept_layers(model)
    with restoring_on_error(handle):
        handle.set_attr(_container(model), _list_attr(model), nn.ModuleList([old[i] for i in keep]))
        for new_index, i in enumerate(keep):
            for module in old[i].modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    handle.set_attr(module, "layer_idx", new_index)
        handle.set_attr(config, "num_hidden_layers", len(keep))
        sliced = []
        for key, value in list(config.to_dict().items()):
            if key in _NOT_PER_LAYER or not isinstance(value, (list, tuple)) or len(value) != n:
                continue
            handle.set_attr(config, key, type(value)(value[i] for i in keep))
            sliced.append(key)
        handle.set_attr(model, KEPT_LAYERS_ATTR, [original[i] for i in keep])
    handle.info = {"kind": "layers", "removed": chosen, "kept_original_layers": [original[i] for i in keep],
                   "config_lists_sliced": sliced}
    return handle


# --------------------------------------------------------------- importance --

def _hidden_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def block_influence(model: nn.Module, windows, batch_size: int = 4) -> torch.Tensor:
    """Per layer, ``1 - mean cos(h_in, h_out)`` over every calibration token (higher = more important)."""
    windows = data.windows_tensor(windows)
    arch.check_token_ids(model, windows, "the calibration windows")
    layers = arch.decoder_layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)

    def make_hook(i):
        def hook(module, args, kwargs, output):
            x, y = _hidden_in(args, kwargs).float(), _hidden_out(output).float()
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
            sums[i] += (1 - cos).double().sum().cpu()
        return hook

    tokens = arch.forward_windows(model, windows, batch_size,
                                  kwargs_hooks={layer: make_hook(i) for i, layer in enumerate(layers)})
    return (sums / tokens).float()


def _identity(*args, **kwargs):
    """A decoder layer that changes nothing: returns the hidden states it was given."""
    return _hidden_in(args, kwargs)


@contextmanager
def skipping(model: nn.Module, layers: Sequence[int]):
    """Run ``model`` with ``layers`` replaced by the identity (the residual stream passes through).

    Nothing is removed or renumbered: this is the reference that ``remove_layers``
    must reproduce. Use it without a KV cache (``use_cache=False``).
    """
    chosen = _check_layers(model, layers) if layers else []
    stack = arch.decoder_layers(model)
    previous = {}
    for i in chosen:
        layer = stack[i]
        previous[i] = layer.__dict__.get("forward")

        layer.forward = _identity
    try:
        yield model
    finally:
        for i, old in previous.items():
            if old is None:
                del stack[i].forward
            else:
                stack[i].forward = old


def least_important_layers(scores, k: int) -> list[int]:
    """The ``k`` layers with the lowest scores (sorted by index)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if not 0 <= k < scores.numel():
        raise ValueError(f"k={k}: remove between 0 and {scores.numel() - 1} of the "
                         f"{scores.numel()} layers.")
    return sorted(torch.argsort(scores, stable=True)[:k].tolist())


def contiguous_block(scores, k: int) -> list[int]:
    """The ``k`` consecutive layers with the lowest summed score (the first such block on ties)."""
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if not 0 <= k < scores.numel():
        raise ValueError(f"k={k}: remove between 0 and {scores.numel() - 1} of the "
                         f"{scores.numel()} layers.")
    if k == 0:
        return []
    sums = torch.stack([scores[s:s + k].sum() for s in range(scores.numel() - k + 1)])
    start = int(torch.argmin(sums))
    return list(range(start, start + k))


def layers_for_fraction(model: nn.Module, fraction: float) -> int:
    """How many layers ``fraction`` of the decoder is (rounded half up; at least one if > 0)."""
    n = len(arch.decoder_layers(model))
    k = int(fraction * n + 0.5)
    if fraction > 0:
        k = max(k, 1)
    return min(k, n - 1)


def layers_request(model: nn.Module, fraction: float, windows=None, contiguous: bool = False) -> list[int]:
    """The layers to remove for ``fraction`` of the decoder, by block influence on ``windows``.

    Without windows, the last ``k`` layers before the final one are taken (data-free fallback).
    """
    k = layers_for_fraction(model, fraction)
    if windows is None:
        n = len(arch.decoder_layers(model))
        return list(range(n - 1 - k, n - 1))
    scores = block_influence(model, windows)
    return contiguous_block(scores, k) if contiguous else least_important_layers(scores, k)
