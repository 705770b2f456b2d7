"""The layer-by-layer calibration walk shared by Wanda and SparseGPT.

Both methods need, for every weight matrix, statistics of the *inputs* that
matrix sees on real text, and both prune one decoder layer at a time so that
layer ``i`` is calibrated on what the already-pruned layers ``0..i-1`` produce:

1. ``capture_layer_inputs``: run the model once with every decoder layer
   replaced by a stub that only records its arguments. That gives the hidden
   states entering layer 0 and the exact extra arguments each layer receives
   (rotary ``position_embeddings``, attention mask...), whatever the family:
   Gemma3, for instance, hands sliding-window layers a different rotary table
   and mask than global ones, and we replay exactly what it passed.
2. ``input_groups``: a probe on a few tokens finds which linears read the same
   input tensor (q/k/v; gate/up): they share one statistic, computed once.
3. ``walk``: for each layer,
   a. forward pre-hooks fold each batch of inputs into a statistic (``collect``);
   b. ``prune_layer`` gets the layer's groups and edits the weights;
   c. the layer runs again, now pruned, to produce the next layer's inputs;
   groups chosen with ``on_arrival`` are calibrated and pruned only in this
   second pass, on the input the pruned layer really feeds them (with several
   batches, each in a calibration pass of its own first).

Only one layer's inputs are held in memory at a time (plus one batch of work).

Precision. The walk is chaotic in float32: which weights a layer prunes depends on
statistics that differ between CPU kinds in their last bits (AVX2 and AVX-512 sum in
other orders); a weight pruned on one machine and kept on the other changes that
layer's outputs far more than the rounding did, so the next layer's statistics
differ more, and so on (measured on SmolLM2 with Wanda at 50%: 0.27% of the masks
differed by the last layer and perplexity moved by 1%). On the CPU the walk therefore
runs every layer's forward passes in float64, on a float64 shadow of the layer (the
model's own weights stay float32 and are the ones pruned): the statistics then agree
between machines to ~1e-15, and so do the masks. On a GPU, where float64 is slow, it
runs in the model's dtype (``exact=False``). An offloaded layer's shadow lives only
while that layer is walked: one layer in float64 beside the offloaded model.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..core import arch
from ..core.cancel import checkpoint
from ..core.progress import bar
from .masks import achieved_sparsity
from . import offload
from .offload import layer_on_device
from .undo import PruneHandle, restoring_on_error


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (its outputs are not needed)."""


@dataclass
class LayerCall:
    """What one decoder layer received for one batch, minus the hidden states."""

    args: tuple
    kwargs: dict


@dataclass
class InputGroup:
    """Linear modules of one layer that read the same input tensor, and its statistic."""

    names: list[str]           # relative to the layer, e.g. ["self_attn.q_proj", "self_attn.k_proj", ...]
    modules: list[nn.Module]
    stat: Any = None           # whatever ``collect`` built from the inputs


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, windows: torch.Tensor, batch_size: int):
    """Hidden states entering layer 0 (one tensor per batch) and every layer's extra arguments.

    Returns ``(hidden, calls)`` where ``calls[i][b]`` is layer ``i``'s ``LayerCall`` for batch ``b``.
    """
    layers = arch.decoder_layers(model)
    device = next(model.parameters()).device
    hidden, calls = [], [[] for _ in layers]

    def stub(index):
        def forward(hidden_states, *args, **kwargs):
            calls[index].append(LayerCall(args, kwargs))
            if index == 0:
                hidden.append(hidden_states)
            if index == len(layers) - 1:
                raise _Stop  # the final norm and lm_head are not needed
            return hidden_states  # skip the work: only the arguments matter here
        return forward

    # An instance attribute shadows the class's forward; keep any that was there (accelerate sets one).
    previous = [layer.__dict__.get("forward") for layer in layers]
    for i, layer in enumerate(layers):
        layer.forward = stub(i)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(windows[start:start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        for layer, forward in zip(layers, previous):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    return hidden, calls


def _as_tensor(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])  # (batch, seq, features) -> (tokens, features)


@torch.no_grad()
def input_groups(model: nn.Module, windows: torch.Tensor) -> list[list[str]]:
    """Names of one layer's linears grouped by the input tensor they read, in call order.

    Found by a probe: layer 0 runs on a few tokens with hooks noting which module
    receives which tensor. For a Llama layer: [[q, k, v], [o], [gate, up], [down]].
    """
    hidden, calls = capture_layer_inputs(model, windows[:1, :16], 1)
    layer = arch.decoder_layers(model)[0]
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def record(name):
        def hook(_, inputs):
            for tensor, names in seen:
                if tensor is inputs[0]:  # the very same tensor object: a shared input
                    names.append(name)
                    return
            seen.append((inputs[0], [name]))
        return hook

    linears = [(n, m) for n, m in layer.named_modules() if arch.is_linear(m)]
    with _pre_hooks([m for _, m in linears], [record(n) for n, _ in linears]):
        layer(hidden[0], *calls[0][0].args, **calls[0][0].kwargs)
    return [names for _, names in seen]


def _layer_groups(layer: nn.Module, index: int, names: list[list[str]]) -> list[InputGroup]:
    modules = {n: m for n, m in layer.named_modules() if arch.is_linear(m)}
    if sorted(modules) != sorted(n for group in names for n in group):
        raise ValueError(f"decoder layer {index} has linears {sorted(modules)}, unlike layer 0: "
                         "the calibration walk needs every layer built alike.")
    return [InputGroup(list(group), [modules[n] for n in group]) for group in names]


ON_ARRIVAL = ("none", "last", "all")


@torch.no_grad()
def walk(model: nn.Module, windows: torch.Tensor, collect: Callable[[Any, torch.Tensor], Any],
         prune_layer: Callable[[int, nn.Module, list[InputGroup]], None], batch_size: int = 8,
         on_arrival: str = "none", return_hidden: bool = False,
         progress: Callable[[int, int], None] | None = None, handle: PruneHandle | None = None,
         batched_arrival: bool = False, exact: bool | None = None):
    """Calibrate and prune the decoder one layer at a time.

    ``collect(stat, x)`` folds a (tokens, in_features) input batch into a statistic
    (``stat`` is None for the first batch) and returns it; ``prune_layer(index,
    layer, groups)`` edits the weights of those groups.

    Every layer gets a *calibration pass* (dense weights: statistics of each
    group's input), then the groups are pruned, then an *output pass* (pruned
    weights) makes the next layer's inputs. ``on_arrival`` says which groups are
    instead calibrated and pruned during the output pass, the moment their input
    arrives, i.e. on what the already-pruned groups before them produce:
    - ``"none"``: as the reference implementations; ``batch_size`` windows at a time;
    - ``"last"``: the layer's last projection (down_proj, GPT-2's mlp.c_proj); the
      calibration pass can then stop before the MLP (about 30% less compute);
    - ``"all"``: no calibration pass at all (half the compute).
    With ``"last"`` or ``"all"`` all windows go through as one batch (memory for
    every calibration token at once), since a group needs all its inputs before
    it is pruned. ``batched_arrival=True`` keeps ``batch_size`` windows per batch
    instead: each arriving group then gets a calibration pass of its own over
    every batch (the layer runs up to that group once more), so ``collect`` must
    fold every batch into its statistic, as it does in the calibration pass.

    ``exact`` (default: on the CPU) runs each layer's passes in float64 on a shadow
    copy, so the statistics do not depend on the CPU's rounding (module docstring).

    With ``return_hidden`` the last layer's outputs (one tensor per batch) are
    returned, e.g. to compare with a full forward pass. ``progress(index, n_layers)``
    is called after each layer; on a terminal a tqdm bar also shows "layer i of n"
    (``core.progress``: never in notebooks or in ``--json`` mode).

    An offloaded model (accelerate ``device_map`` with layers on CPU or disk) has
    each layer brought to its execution device only while it is walked, and its
    pruned weights written back to the offload store (see ``offload``); ``handle``
    then records how to restore them from there.
    """
    if on_arrival not in ON_ARRIVAL:
        raise ValueError(f"on_arrival={on_arrival!r}: choose one of {', '.join(map(repr, ON_ARRIVAL))}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give a whole number of windows >= 1.")
    layers = arch.decoder_layers(model)
    group_names = input_groups(model, windows)
    n_dense = {"none": len(group_names), "last": len(group_names) - 1, "all": 0}[on_arrival]
    if on_arrival != "none" and not batched_arrival:
        batch_size = windows.shape[0]
    hidden, calls = capture_layer_inputs(model, windows, batch_size)
    if exact is None:  # float64 costs little on a CPU; on a GPU it does
        exact = _device(model).type == "cpu"
    if exact:
        hidden, calls = _double(hidden), _double(calls)

    shown = bar(total=len(layers), desc="calibration walk, layer", unit="layer")
    for index, layer in enumerate(layers):
        checkpoint()  # a live explorer may stop the walk here (the caller's handle restores)
        shown.set_description(f"calibration walk, layer {index + 1} of {len(layers)}")
        with layer_on_device(layer, handle):
            hidden = _walk_layer(index, layer, hidden, calls, group_names, n_dense, collect,
                                 prune_layer, last=index == len(layers) - 1 and not return_hidden, exact=exact)
        shown.update(1)
        if progress is not None:
            progress(index, len(layers))
    shown.close()
    if return_hidden and exact:
        dtype = next(model.parameters()).dtype
        hidden = [h.to(dtype) for h in hidden]
    return hidden if return_hidden else None


def _device(model: nn.Module) -> torch.device:
    """Where the decoder runs: an offloaded model's parameters sit on ``meta``, its layers run on
    the device accelerate's map names (the CPU unless a GPU is in the map)."""
    device_map = getattr(model, "hf_device_map", None) or {}
    if any(str(d).startswith("cuda") or isinstance(d, int) for d in device_map.values()):
        return torch.device("cuda")
    device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device


def _double(obj):
    """``obj`` with every floating-point tensor in it (lists, tuples, dicts, LayerCalls) in float64."""
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, LayerCall):
        return LayerCall(_double(obj.args), _double(obj.kwargs))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_double(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _double(v) for k, v in obj.items()}
    return obj


class _Shadow:
    """A float64 copy of one decoder layer that runs its passes; the layer's own float32
    weights are the ones pruned, and each pruned module is copied into the shadow again
    before the shadow uses it."""

    def __init__(self, layer: nn.Module):
        self.layer = copy.deepcopy(layer).double()
        mine = dict(layer.named_modules())
        self.twin = {id(mine[name]): module for name, module in self.layer.named_modules()}

    def of(self, module: nn.Module) -> nn.Module:
        return self.twin[id(module)]

    def refresh(self, modules) -> None:
        for module in modules:
            for name, tensor in module.named_parameters(recurse=False):
                getattr(self.of(module), name).data.copy_(tensor.data)


def _walk_layer(index, layer, hidden, calls, group_names, n_dense, collect, prune_layer, last, exact=False):
    """One layer of ``walk``: calibrate, prune, and return the next layer's inputs."""
    groups = _layer_groups(layer, index, group_names)
    dense, arriving = groups[:n_dense], groups[n_dense:]
    shadow = _Shadow(layer) if exact else None
    runner = shadow.layer if exact else layer
    seen = (lambda module: shadow.of(module)) if exact else (lambda module: module)  # who reads the input

    def prune(chosen):
        prune_layer(index, layer, chosen)
        if exact:
            shadow.refresh(m for g in chosen for m in g.modules)

    def run(b, x):
        return _as_tensor(runner(x, *calls[index][b].args, **calls[index][b].kwargs))

    def calibrate_and_prune(chosen):
        # a. calibration pass: statistics of each chosen group's input, every batch
        def accumulate(group):
            def hook(_, inputs):
                group.stat = collect(group.stat, _flat(inputs[0]))
                if group is chosen[-1]:
                    raise _Stop  # the rest of the layer is not needed for statistics
            return hook
        with _pre_hooks([seen(g.modules[0]) for g in chosen], [accumulate(g) for g in chosen]):
            for b, x in enumerate(hidden):
                try:
                    run(b, x)
                except _Stop:
                    pass
        # b. prune these groups
        prune(chosen)

    if dense:  # on the dense layer
        calibrate_and_prune(dense)
    if len(hidden) > 1:  # several batches (batched_arrival): a pass per arriving group, in order
        for group in arriving:
            calibrate_and_prune([group])
        arriving = []

    # c. output pass: the pruned layer's outputs are the next layer's inputs
    def prune_on_arrival(group):
        def hook(_, inputs):
            group.stat = collect(None, _flat(inputs[0]))
            prune([group])  # before the module (and its siblings) run
        return hook
    if not last or arriving:
        with _pre_hooks([seen(g.modules[0]) for g in arriving], [prune_on_arrival(g) for g in arriving]):
            hidden = [run(b, x) for b, x in enumerate(hidden)]
    return hidden


@contextmanager
def _pre_hooks(modules, hooks):
    handles = [m.register_forward_pre_hook(h) for m, h in zip(modules, hooks)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def layer_modules(model: nn.Module, index: int) -> dict[str, nn.Module]:
    """Full name -> module for the prunable linears of decoder layer ``index``."""
    prefix = ("transformer.h." if arch.family(model) == "gpt2" else "model.layers.") + f"{index}."
    return {name: m for name, m in arch.prunable_linears(model).items() if name.startswith(prefix)}


def check_windows(windows, model: nn.Module | None = None) -> torch.Tensor:
    """Calibration windows must be a (n, seq_len) LongTensor of ``model``'s token ids."""
    if hasattr(windows, "calib") and isinstance(windows.calib, torch.Tensor):
        raise TypeError("calib_windows is a data.Windows: pass its .calib tensor "
                        "(e.g. windows.calib), the calibration token windows.")
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
        raise TypeError(f"calib_windows must be a (n_windows, seq_len) LongTensor of token ids, got "
                        f"{type(windows).__name__}"
                        + (f" of shape {tuple(windows.shape)} and dtype {windows.dtype}"
                           if isinstance(windows, torch.Tensor) else "")
                        + ". Use data.windows_for(tokenizer, name).calib.")
    if windows.shape[0] == 0:
        raise ValueError("calib_windows holds no window: calibration needs at least one.")
    if model is not None:
        arch.check_token_ids(model, windows, "calib_windows")
    return windows


def prune_walking(model: nn.Module, handle: PruneHandle, calib_windows: torch.Tensor, collect,
                  prune_layer, masks: dict | None, batch_size: int, on_arrival: str, progress,
                  **info) -> PruneHandle:
    """``walk`` with the promise every calibrated pruner makes: all or nothing.

    Any error (a bad argument, Ctrl-C mid-calibration) restores every weight before it
    reaches the caller; the summary (``info`` + masks + achieved sparsity) is written
    inside the same guard, so no interrupt leaves a pruned model without its handle.
    """
    with restoring_on_error(handle):
        walk(model, calib_windows, collect, prune_layer, batch_size=batch_size,
             on_arrival=on_arrival, progress=progress, handle=handle)
        sparsity = (offload.achieved_sparsity(model) if offload.is_offloaded(model)
                    else achieved_sparsity(arch.prunable_linears(model).values()))
        handle.info.update(info, masks=masks, sparsity=sparsity)
    return handle
