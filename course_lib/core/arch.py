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
from typing import Callable

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


class StopForward(Exception):
    """Raised by a hook of ``forward_windows`` once it has what it needs: the rest of that
    batch's forward pass (later layers, the lm_head) is skipped."""


@torch.no_grad()
def forward_windows(model: nn.Module, windows: torch.Tensor, batch_size: int = 4,
                    pre_hooks: dict | None = None, hooks: dict | None = None,
                    kwargs_hooks: dict | None = None, paired: nn.Module | None = None,
                    after_batch: Callable[[], None] | None = None) -> int:
    """Run ``model`` over ``windows`` in batches (no KV cache), only for what hooks record.

    The one loop behind every score and statistic read from activations: each batch
    goes to the device of the model that reads it (``next(model.parameters()).device``),
    and every hook is removed afterwards whatever happens.

    - ``pre_hooks`` / ``hooks``: {module: fn} registered as forward pre-hooks
      ``fn(module, args)`` / forward hooks ``fn(module, args, output)``;
    - ``kwargs_hooks``: {module: fn} forward hooks that also see the keyword arguments,
      ``fn(module, args, kwargs, output)`` (a decoder layer receives its hidden states
      as ``hidden_states=`` in some families);
    - ``paired``: a second model run on the same batch just before ``model`` (a dense
      model whose outputs a pruned one is compared with); hooks may sit in either;
    - ``after_batch()``: called once both models have run a batch (fold what the hooks
      saw into running sums, then drop it);
    - a hook may raise ``StopForward`` to end that model's pass over the batch early.

    Returns the number of tokens run (``windows.numel()``).
    """
    handles = [m.register_forward_pre_hook(fn) for m, fn in (pre_hooks or {}).items()]
    handles += [m.register_forward_hook(fn) for m, fn in (hooks or {}).items()]
    handles += [m.register_forward_hook(fn, with_kwargs=True) for m, fn in (kwargs_hooks or {}).items()]
    runs = ([paired] if paired is not None else []) + [model]
    devices = [next(m.parameters()).device for m in runs]
    tokens = 0
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size]
            for m, device in zip(runs, devices):
                try:
                    m(batch.to(device), use_cache=False)
                except StopForward:
                    pass
            tokens += batch.numel()
            if after_batch is not None:
                after_batch()
    finally:
        for h in handles:
            h.remove()
    return tokens


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


@dataclass(frozen=True)
class Geometry:
    """Everything a lesson needs to name a part of the model, read from the model itself.

    Lessons derive every index, count, layer name and slice from this, so the same
    notebook runs on GPT-2, TinyLlama, Qwen2.5, SmolLM2 or Gemma-3 (and on their stand-ins).
    """

    family: str            # "gpt2" or "llama" (see the module docstring)
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_width: int
    vocab: int
    layer_prefix: str      # "transformer.h" or "model.layers"
    attn_projections: tuple[str, ...]   # ("c_attn", "c_proj") or ("q_proj", "k_proj", "v_proj", "o_proj")
    out_projection: str    # the projection that reads the concatenated heads
    mlp_projections: tuple[str, ...]    # ("c_fc", "c_proj") or ("gate_proj", "up_proj", "down_proj")
    attn_biases: bool      # q/k/v carry biases (GPT-2, Qwen2)
    tied_embeddings: bool
    layer_types: tuple[str, ...]        # per layer: "full_attention" or "sliding_attention"

    @property
    def group_size(self) -> int:
        """Query heads that share one KV head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    @property
    def gqa(self) -> bool:
        return self.n_kv_heads < self.n_heads

    @property
    def attn_name(self) -> str:
        return "attn" if self.family == "gpt2" else "self_attn"

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} does not exist: this model has layers 0..{self.n_layers - 1}")

    def attn_module(self, layer: int, part: str | None = None) -> str:
        """Full name of an attention projection: ``attn_module(3)`` -> ``model.layers.3.self_attn.o_proj``."""
        self._check_layer(layer)
        return f"{self.layer_prefix}.{layer}.{self.attn_name}.{part or self.out_projection}"

    def mlp_module(self, layer: int, part: str | None = None) -> str:
        """Full name of an MLP projection (default: the one that reads the neurons)."""
        self._check_layer(layer)
        return f"{self.layer_prefix}.{layer}.mlp.{part or self.mlp_projections[-1]}"

    def head_columns(self, head: int) -> range:
        """Columns of the output projection that read head ``head``."""
        return range(head * self.head_dim, (head + 1) * self.head_dim)

    def groups(self) -> dict[int, list[int]]:
        """KV head -> the query heads that share it."""
        g = self.group_size
        return {kv: list(range(kv * g, (kv + 1) * g)) for kv in range(self.n_kv_heads)}

    def middle_layer(self) -> int:
        return self.n_layers // 2

    def describe(self) -> str:
        kv = (f"{self.n_kv_heads} KV head{'s' if self.n_kv_heads > 1 else ''} "
              f"(groups of {self.group_size})" if self.gqa else "no GQA (every head has its own K/V)")
        extra = []
        if self.head_dim * self.n_heads != self.hidden:
            extra.append(f"head_dim {self.head_dim} != hidden/heads {self.hidden // self.n_heads}")
        if "sliding_attention" in self.layer_types:
            extra.append(f"{self.layer_types.count('sliding_attention')} sliding + "
                         f"{self.layer_types.count('full_attention')} global layers")
        return (f"{self.family} layout: {self.n_layers} layers, hidden {self.hidden}, {self.n_heads} heads of "
                f"{self.head_dim}, {kv}, MLP {self.mlp_width}" + (f"; {'; '.join(extra)}" if extra else ""))


def geometry(model: nn.Module, layer_index: int = 0) -> Geometry:
    """The model's geometry (heads of ``layer_index``: they can differ per layer after pruning)."""
    fam = family(model)
    config = model.config
    shape = attention_shape(model, layer_index)
    n_layers = len(decoder_layers(model))
    attn = attention(decoder_layers(model)[layer_index])
    if fam == "gpt2":
        projections, out, mlp_parts = ("c_attn", "c_proj"), "c_proj", ("c_fc", "c_proj")
        biases = attn.c_attn.bias is not None
        hidden = config.n_embd
    else:
        projections, out = ("q_proj", "k_proj", "v_proj", "o_proj"), "o_proj"
        mlp_parts = ("gate_proj", "up_proj", "down_proj")
        biases = attn.q_proj.bias is not None
        hidden = config.hidden_size
    types = getattr(config, "layer_types", None) or ["full_attention"] * n_layers
    tied = bool(getattr(config, "tie_word_embeddings", False)) or (
        model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr())
    return Geometry(fam, n_layers, hidden, shape.n_heads, shape.n_kv_heads, shape.head_dim,
                    mlp_width(model, layer_index), model.get_input_embeddings().num_embeddings,
                    "transformer.h" if fam == "gpt2" else "model.layers", projections, out, mlp_parts,
                    biases, tied, tuple(types[:n_layers]))
