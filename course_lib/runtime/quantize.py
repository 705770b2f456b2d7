"""int8 in PyTorch: what breaks a small model, what keeps it, and what runs faster here.

Quantizing a weight matrix W to int8 stores q = round(W / s) in [-127, 127] and
one float scale s per group; the product x W^T becomes (x q^T) s. Two choices
decide quality and speed:

- **Which scales.** One scale per tensor is set by the tensor's largest value;
  every smaller value is rounded to a step of max|W| / 127. One scale per output
  row (or per block of 32 weights) follows the values much more closely.
- **Activations too, or weights only.** *Dynamic* quantization also rounds the
  activations x to int8 at each call, so the product runs as an int8 GEMM (fast).
  But LLM activations have *outlier channels*: a few features 100x larger than
  the rest. With one scale for the whole activation tensor the step is
  max|x| / 127 and the ordinary features round to zero: quality collapses.
  *Weight-only* quantization keeps x in float (the weights are dequantized on
  the fly): no outlier problem, but no int8 GEMM either, so the speed comes only
  from reading fewer bytes (decode, memory-bound), if the kernel is good.

``activation_outlier_ratio`` measures max|x| / mean|x| at the input of every
projection on calibration text: the projections with the largest ratio are the
ones per-tensor dynamic quantization hurts, and ``quantized_copy(...,
keep_float=...)`` leaves them in float32.

Schemes (all return a *copy*; the float model is never changed):
- ``"dynamic"``: ``torch.ao.quantization.quantize_dynamic``, per-tensor int8
  weights and activations (fbgemm int8 GEMMs on x86). Deprecated in torch 2.13 in
  favour of torchao, but it is the path with fast int8 CPU kernels here.
- ``"torchao-int8-weight"``: torchao ``Int8WeightOnlyConfig`` (per-row scales).
- ``"torchao-int8-dynamic"``: torchao ``Int8DynamicActivationInt8WeightConfig``
  (per-row weights, per-token activations: the outliers of one token only cost
  that token).
The tied ``lm_head`` stays float in every scheme (it shares its matrix with the embedding).

**Quality measured in float64** (``simulated_copy``). A model that per-tensor int8 has
broken is chaotic: the last-bit differences between CPU kinds (FBGEMM runs other int8
kernels on AVX2 than on AVX-512, and float32's own rounding differs) flip activation
codes, and 30 layers amplify the flips into percent of perplexity (SmolLM2, int8 in every
projection: 91.85 with the CPU capped at AVX2, 106.89 on AVX-512). ``simulated_copy``
computes the same scheme, the same codes and scales as ``"dynamic"`` (weights: one
symmetric scale per tensor, max|W| / 127.5, codes in [-128, 127]; activations: one
affine scale per call, (max - min) / 127 over the tensor with 0 in its range, codes in
[0, 127] as torch.ao's ``reduce_range`` keeps them), in float64 everywhere: every
machine prints the same perplexity. The kernel's own result is this plus its rounding;
its speed is measured on the kernel.
"""
from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..core import arch
from .optional import require

if TYPE_CHECKING:
    from ..pruning.undo import PruneHandle

SCHEMES = ("dynamic", "torchao-int8-weight", "torchao-int8-dynamic")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"quantization scheme {scheme!r} is unknown: use one of {SCHEMES}.")
    return scheme


def decoder_linear_names(model: nn.Module) -> list[str]:
    """Names of the decoder's projection layers (attention and MLP), in order; not the lm_head."""
    return list(arch.prunable_linears(model))


@torch.no_grad()
def activation_outlier_ratio(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> dict[str, float]:
    """max|x| / mean|x| of the input x of every decoder projection, over ``windows``.

    A per-tensor int8 scale is max|x| / 127, so a ratio r leaves the typical
    value about 127 / r steps: at r = 127 it rounds to zero or one step.
    """
    names = decoder_linear_names(model)
    modules = dict(model.named_modules())
    peak = {n: 0.0 for n in names}
    total = {n: 0.0 for n in names}
    count = {n: 0 for n in names}

    def make_hook(name):
        def hook(module, args):
            x = args[0].detach().float().abs()
            peak[name] = max(peak[name], float(x.max()))
            total[name] += float(x.sum())
            count[name] += x.numel()
        return hook

    arch.forward_windows(model, windows, batch_size, pre_hooks={modules[n]: make_hook(n) for n in names})
    return {n: peak[n] / max(total[n] / max(count[n], 1), 1e-12) for n in names}


def most_sensitive(ratios: dict[str, float], count: int) -> list[str]:
    """The ``count`` projections with the largest outlier ratio, largest first."""
    if count < 0:
        raise ValueError(f"count={count}: need 0 or more projections to keep in float.")
    return sorted(ratios, key=ratios.get, reverse=True)[:count]


def _quantized_projections(model: nn.Module, keep_float) -> list[str]:
    """The decoder projections to quantize: all but ``keep_float`` (which must name some of them)."""
    names = decoder_linear_names(model)
    unknown = sorted(set(keep_float) - set(names))
    if unknown:
        raise ValueError(f"keep_float names {unknown[:3]} are not decoder projections of this model "
                         f"(e.g. {names[:2]}).")
    return [n for n in names if n not in set(keep_float)]


def quantized_copy(model: nn.Module, scheme: str = "dynamic", keep_float=()) -> nn.Module:
    """A quantized copy of ``model``'s decoder projections; ``keep_float`` names stay float32."""
    check_scheme(scheme)
    if scheme.startswith("torchao"):
        quantization = require("torchao.quantization", "torchao", what=f"the {scheme!r} scheme")
    chosen = _quantized_projections(model, keep_float)
    twin = copy.deepcopy(model).cpu().float().eval()
    if scheme == "dynamic":
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize_dynamic(twin, {n: default_dynamic_qconfig for n in chosen},
                                    dtype=torch.qint8, inplace=False)
    config = (quantization.Int8WeightOnlyConfig() if scheme == "torchao-int8-weight"
              else quantization.Int8DynamicActivationInt8WeightConfig())
    wanted = set(chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantization.quantize_(twin, config, filter_fn=lambda module, fqn: fqn in wanted)
    return twin


class SimulatedDynamicInt8(nn.Module):
    """``nn.Linear`` as the ``"dynamic"`` scheme computes it, in float64 (see the module doc)."""

    ACTIVATION_LEVELS = 127  # torch.ao's dynamic Linear calls its kernel with reduce_range: 7-bit codes

    def __init__(self, linear: nn.Module):
        super().__init__()
        weight = arch.weight_matrix(linear).detach().double()  # (out, in), GPT-2's Conv1D too
        self.weight_scale = max(float(weight.abs().max()) / 127.5, torch.finfo(torch.float32).eps)
        self.register_buffer("codes", torch.clamp(torch.round(weight / self.weight_scale), -128, 127))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (high - low) / self.ACTIVATION_LEVELS or 0.1  # an all-zero input: any scale
        zero = min(max(round(-low / scale), 0), self.ACTIVATION_LEVELS)
        codes = torch.clamp(torch.round(x / scale) + zero, 0, self.ACTIVATION_LEVELS)
        out = ((codes - zero) * scale) @ (self.codes * self.weight_scale).t()
        return out if self.bias is None else out + self.bias


def simulated_copy(model: nn.Module, keep_float=()) -> nn.Module:
    """A float64 copy of ``model`` whose decoder projections compute the ``"dynamic"`` int8
    scheme exactly (``keep_float`` names stay float): its quality, the same on every CPU."""
    chosen = _quantized_projections(model, keep_float)
    twin = copy.deepcopy(model).cpu().double().eval()
    modules = dict(twin.named_modules())
    for name in chosen:
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, SimulatedDynamicInt8(modules[name]))
    return twin


def quantized_names(model: nn.Module) -> list[str]:
    """Names of the modules whose weights are stored quantized (int8 modules or int8 tensors)."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):  # torch.ao's int8 Linear
            out.append(name)
            continue
        weight = module.__dict__.get("_parameters", {}).get("weight")
        if weight is not None and type(weight.data) is not torch.Tensor:  # torchao's Int8Tensor
            out.append(name)
    return out


def quantize_in_place(model: nn.Module, names) -> "PruneHandle":
    """Swap the named projections for torch.ao's dynamic int8 ``Linear``; ``restore()`` swaps back.

    The live explorer's step: the float modules are kept by the handle, so the
    model returns bit for bit to float32.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import default_dynamic_qconfig

    from ..core.cancel import checkpoint
    from ..pruning.undo import PruneHandle, restoring_on_error

    handle = PruneHandle("int8 dynamic")
    modules = dict(model.named_modules())
    with warnings.catch_warnings(), restoring_on_error(handle):  # a failure half-way swaps back
        warnings.simplefilter("ignore")
        for name in names:
            checkpoint()  # a live explorer may stop here
            linear = modules[name]
            linear.qconfig = default_dynamic_qconfig
            try:
                swapped = DynamicLinear.from_float(linear)
            finally:
                del linear.qconfig
            parent_name, _, child = name.rpartition(".")
            handle.set_attr(modules[parent_name], child, swapped)
    return handle
