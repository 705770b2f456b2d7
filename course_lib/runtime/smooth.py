"""SmoothQuant: move the activations' outlier channels into the weights, so int8 activations work.

Why int8 *activations* need the outliers handled. An int8 matrix product rounds
both operands: W per output channel (one scale per column of W^T, fine) and the
activations x per call, with one scale for the whole tensor (ONNX Runtime's
``DynamicQuantizeMatMul``, torch's ``quantize_dynamic``): the step is
max|x| / 127 (or the range / 255). A small LLM's inputs to its projections have a
few *channels* (features) that are 10-100x larger than the rest on every token;
they set the step, and the ordinary channels keep only a handful of int8 levels.
On SmolLM2 (ship's pruned model) per-channel int8 weights with per-tensor int8
activations in every MatMul raise the perplexity from 17.1 to 27.5 (``bench/results.md``).

What the migration does. For any positive vector s over the input channels,

    X W^T = (X diag(s)^-1) (W diag(s))^T,

exactly, in real arithmetic. Dividing channel j of the activations by s_j and
multiplying column j of the weights by s_j leaves the product as it was, but
moves the range: with s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (SmoothQuant,
Xiao et al. 2023) the activations' channel peaks become max|X_j|^(1-alpha) *
max|W_j|^(1-alpha) and the weights' max|X_j|^alpha * max|W_j|^alpha: at alpha = 0.5
both carry the square root of the product, the outliers are shared between the two
operands instead of crushing one. The weights' rounding is per output channel, so
they absorb the larger columns cheaply; the activations lose their outliers.

Nothing is computed at run time: diag(s)^-1 is folded into whatever produces X.

- q/k/v (and gate/up) read ``RMSNorm(h) = h / rms(h) * g``: divide the norm's gain g
  by s, multiply the columns of q, k, v (gate, up) by the same s (one s for the
  three, since they read the same X).
- down_proj reads ``act(gate(x)) * up(x)``: divide the *rows* of up_proj (and its
  bias) by s; the product with act(gate) is linear in up, so the input of
  down_proj is divided by s.
- o_proj reads the attention output, a per-head weighted sum of V rows: divide the
  rows of v_proj (and its bias) by s. With grouped-query attention several query
  heads read the same KV head, so s may depend only on (KV head, dim): it is taken
  from the peaks of every query head in the group, the same s for each.
- the lm_head reads the final norm: divide its gain by s, multiply the lm_head's
  columns. A tied lm_head (the embedding's matrix) is untied first: the embedding
  must keep its rows.

So the float model's logits are unchanged (to float32 rounding: ``smoothed_copy`` is
checked to 1e-5 in tests/test_smooth.py); only its int8 rounding changes. The peaks
come from calibration text (``channel_peaks``), the same windows the pruning uses.
Families: the Llama layout with a multiplicative RMSNorm gain (Llama, SmolLM2,
TinyLlama, Qwen2, Mistral). Gemma's norms scale by (1 + g) and its MLP reads a norm
of its own; GPT-2 fuses q/k/v and has LayerNorm biases: both are refused by name.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core import arch
from ..core.names import SMOOTH_ALPHA, check_alpha

SMOOTHABLE = ("llama", "mistral", "qwen2")  # config.model_type: the folds below are exact for them
ALPHA = SMOOTH_ALPHA  # migration strength (core.names: the command line reads it without torch)
EPS = 1e-5  # floors for peaks and scales: a channel that never fired keeps s = EPS^alpha-ish, never 0


def check_smoothable(model: nn.Module) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SMOOTHABLE:
        raise ValueError(f"SmoothQuant folds are written for {SMOOTHABLE} (Llama layout, RMSNorm gain g): "
                         f"{type(model).__name__} (model_type {model_type!r}) is not one of them; ship it with "
                         "weight-only quantization ('nbits') instead.")


def smoothed_names(model: nn.Module) -> list[str]:
    """Every projection whose input channels are peaked: the decoder's and the lm_head."""
    return list(arch.prunable_linears(model)) + ["lm_head"]


@torch.no_grad()
def channel_peaks(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> dict[str, torch.Tensor]:
    """max over tokens of |x_j|, per input channel j, at the input of every projection (and the lm_head)."""
    check_smoothable(model)
    modules = dict(model.named_modules())
    peaks: dict[str, torch.Tensor] = {}

    def make_hook(name):
        def hook(module, args):
            x = args[0].detach()
            peak = x.abs().reshape(-1, x.shape[-1]).amax(0).float().cpu()
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
        return hook

    arch.forward_windows(model, windows, batch_size,
                         pre_hooks={modules[n]: make_hook(n) for n in smoothed_names(model)})
    return peaks


def migration_scales(peak: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max_i |W_ij|^(1-alpha), the max over every weight reading X."""
    weight_peak = torch.stack([w.detach().abs().amax(0).float().cpu() for w in weights]).amax(0)
    s = peak.clamp(min=EPS) ** alpha / weight_peak.clamp(min=EPS) ** (1 - alpha)
    return s.clamp(min=EPS)


def _fold_into_inputs(s: torch.Tensor, readers: list[nn.Linear]) -> None:
    for linear in readers:  # W diag(s): column j times s_j
        linear.weight.mul_(s.to(linear.weight))


def _divide_rows(linear: nn.Linear, s: torch.Tensor) -> None:
    linear.weight.div_(s.to(linear.weight)[:, None])
    if linear.bias is not None:
        linear.bias.div_(s.to(linear.bias))


@torch.no_grad()
def smoothed_copy(model: nn.Module, peaks: dict[str, torch.Tensor], alpha: float = ALPHA,
                  skip: tuple[str, ...] = ()) -> nn.Module:
    """A copy of ``model`` with every projection's input smoothed (the float function unchanged).

    ``peaks``: ``channel_peaks`` on calibration text. ``skip``: folds left out, by kind
    (``"qkv"``, ``"mlp"``, ``"down"``, ``"o"``, ``"lm_head"``). The lm_head is untied from the
    embedding (``config.tie_word_embeddings`` set False) when it is smoothed.
    """
    check_smoothable(model)
    alpha = check_alpha(alpha)
    kinds = ("qkv", "mlp", "down", "o", "lm_head")
    unknown = sorted(set(skip) - set(kinds))
    if unknown:
        raise ValueError(f"skip={unknown}: the folds are {kinds}.")
    missing = sorted(set(smoothed_names(model)) - set(peaks))
    if missing:
        raise ValueError(f"no activation peaks for {missing[:3]} ({len(missing)} projections): "
                         "measure them on this model with channel_peaks(model, windows).")
    twin = copy.deepcopy(model)
    for i, layer in enumerate(arch.decoder_layers(twin)):
        attn, mlp, prefix = arch.attention(layer), arch.mlp(layer), f"model.layers.{i}."
        if "qkv" not in skip:
            s = migration_scales(peaks[prefix + "self_attn.q_proj"],
                                 [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], alpha)
            layer.input_layernorm.weight.div_(s.to(layer.input_layernorm.weight))
            _fold_into_inputs(s, [attn.q_proj, attn.k_proj, attn.v_proj])
        if "mlp" not in skip:
            s = migration_scales(peaks[prefix + "mlp.gate_proj"], [mlp.gate_proj.weight, mlp.up_proj.weight], alpha)
            layer.post_attention_layernorm.weight.div_(s.to(layer.post_attention_layernorm.weight))
            _fold_into_inputs(s, [mlp.gate_proj, mlp.up_proj])
        if "down" not in skip:
            s = migration_scales(peaks[prefix + "mlp.down_proj"], [mlp.down_proj.weight], alpha)
            _divide_rows(mlp.up_proj, s)
            _fold_into_inputs(s, [mlp.down_proj])
        if "o" not in skip:
            shape = arch.attention_shape(twin, i)
            kv, group, dim = shape.n_kv_heads, shape.group_size, shape.head_dim
            # o_proj's input channel (query head h, dim d) is V's (KV head h // group, d): one s per (KV head, d)
            peak = peaks[prefix + "self_attn.o_proj"].reshape(kv, group, dim).amax(1)
            weight_peak = attn.o_proj.weight.detach().abs().amax(0).float().cpu().reshape(kv, group, dim).amax(1)
            s = (peak.clamp(min=EPS) ** alpha / weight_peak.clamp(min=EPS) ** (1 - alpha)).clamp(min=EPS)
            _divide_rows(attn.v_proj, s.reshape(-1))
            _fold_into_inputs(s[:, None, :].expand(kv, group, dim).reshape(-1), [attn.o_proj])
    if "lm_head" not in skip:
        head = twin.get_output_embeddings()
        if head.weight is twin.get_input_embeddings().weight:
            head.weight = nn.Parameter(head.weight.detach().clone())
        twin.config.tie_word_embeddings = False
        s = migration_scales(peaks["lm_head"], [head.weight], alpha)
        norm = twin.model.norm
        norm.weight.div_(s.to(norm.weight))
        _fold_into_inputs(s, [head])
    return twin
