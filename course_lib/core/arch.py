"""One place that knows where things live inside each model family.

Every pruning kernel asks these functions for "the decoder layers", "the query
projection of layer 3" or "how many KV heads", so the kernels are written once
for GPT-2, Llama (SmolLM2, TinyLlama), Qwen2 and Gemma3.

Two layouts exist:
- ``gpt2``: fused ``c_attn`` (q, k and v stacked) and ``c_proj``; MLP ``c_fc`` /
  ``c_proj``. GPT-2 uses ``Conv1D``, whose weight is stored transposed
  (in_features x out_features).
- ``llama``: separate ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``; gated MLP
  ``gate_proj`` / ``up_proj`` / ``down_proj``. Llama, Qwen2, Mistral and Gemma3
  share it (Qwen2 adds q/k/v biases, Gemma3 adds per-head q/k norms).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def family(model: nn.Module) -> str:
    """``"gpt2"`` or ``"llama"``: which of the two layouts above the model uses."""
    base = getattr(model, "transformer", None)
    if base is not None and hasattr(base, "h"):
        return "gpt2"
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return "llama"
    raise TypeError(
        f"{type(model).__name__} is not a layout the course knows: expected a GPT-2 style "
        "model (model.transformer.h) or a Llama style one (model.model.layers)."
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks, in order."""
    return model.transformer.h if family(model) == "gpt2" else model.model.layers


def attention(layer: nn.Module) -> nn.Module:
    return layer.attn if hasattr(layer, "attn") else layer.self_attn


def mlp(layer: nn.Module) -> nn.Module:
    return layer.mlp


def is_linear(module: nn.Module) -> bool:
    """A weight matrix the pruning kernels may touch (Linear or GPT-2's Conv1D)."""
    return isinstance(module, (nn.Linear, Conv1D))


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features), whatever the storage.

    For Conv1D this is a transposed *view*: writing into it writes the parameter.
    """
    if isinstance(module, Conv1D):
        return module.weight.data.t()
    return module.weight.data


def prunable_linears(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear/Conv1D inside the decoder blocks, by full module name.

    Embeddings and the lm_head are left out on purpose: pruning them is a
    different lesson (and the lm_head is tied to the embedding in most models).
    """
    prefix = "transformer.h" if family(model) == "gpt2" else "model.layers"
    return {
        name: module
        for name, module in model.named_modules()
        if name.startswith(prefix + ".") and is_linear(module)
    }


@dataclass(frozen=True)
class AttentionShape:
    """Head counts of one attention block, read from its weight shapes."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads that share one key/value head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads


def head_dim(model: nn.Module) -> int:
    config = model.config
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    return config.hidden_size // config.num_attention_heads


def attention_shape(model: nn.Module, layer_index: int) -> AttentionShape:
    """Heads of one layer, read from the weights (they differ per layer after pruning)."""
    layer = decoder_layers(model)[layer_index]
    attn = attention(layer)
    d = head_dim(model)
    if family(model) == "gpt2":
        n = attn.c_proj.weight.shape[0] // d  # Conv1D: (in = heads*d, out = hidden)
        return AttentionShape(n, n, d)
    return AttentionShape(attn.q_proj.out_features // d, attn.k_proj.out_features // d, d)


def mlp_width(model: nn.Module, layer_index: int) -> int:
    """Hidden neurons of one MLP block."""
    block = mlp(decoder_layers(model)[layer_index])
    if family(model) == "gpt2":
        return block.c_fc.weight.shape[1]
    return block.up_proj.out_features


def lm_head_shape(model: nn.Module) -> tuple[int, int]:
    weight = model.get_output_embeddings().weight
    return tuple(weight.shape)


def check_token_ids(model: nn.Module, windows: torch.Tensor, what: str = "the windows") -> None:
    """Refuse token ids the model's embedding has no row for (torch's IndexError says little).

    It happens when windows made with one model's tokenizer are fed to another model.
    """
    vocab = model.get_input_embeddings().num_embeddings
    if windows.numel() and (int(windows.max()) >= vocab or int(windows.min()) < 0):
        bad = int(windows.max()) if int(windows.max()) >= vocab else int(windows.min())
        raise ValueError(f"{what} hold token id {bad}, but {type(model).__name__} has a vocabulary "
                         f"of {vocab} (ids 0..{vocab - 1}): they were made with another model's "
                         "tokenizer. Make them with this model's: data.windows_for(tokenizer, name).")
