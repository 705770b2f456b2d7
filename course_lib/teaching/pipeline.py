"""From dense to shipped, one stage at a time, every stage measured the same way.

    dense fp32 -> structured prune -> recovered -> int8 (PyTorch) -> ONNX Runtime -> served

Each stage is a model (or a runtime session) plus the file that would ship it.
Every stage is measured against the dense fp32 PyTorch model *in the same run*:
perplexity on the evaluation windows, prefill latency (interleaved, ``timing.speedup``),
decode latency per token with the KV cache (interleaved), and the bytes of its
file on disk (``metrics.file_bytes``).

The recovery stage here is a closed-form stand-in: after MLP neurons are removed,
each layer's ``down_proj`` is refitted by least squares so the kept neurons
reproduce the dense MLP's output on calibration text:

    min_W' sum_t || W' h_K(t) - W h(t) ||^2   =>   W' = W G[:, K] (G[K, K] + lambda I)^-1,
    G = sum_t h(t) h(t)^T  (the dense model's hidden units, calibration tokens),

so what the removed neurons contributed is re-expressed, as far as it is linearly
predictable, through the neurons that stay. One pass over the calibration
windows and one small solve per layer; no gradient steps.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import arch, data, metrics, models, timing
from ..pruning import mlp, recipes
from ..runtime import export, quantize, serve, store

STAGES = ("dense", "pruned", "recovered", "int8 (PyTorch)", "ONNX Runtime", "served")
DEFAULT_FRACTION = 0.25  # MLP neurons removed per layer (lesson 4's best-measured recipe)


@torch.no_grad()
def mlp_gram(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> list[torch.Tensor]:
    """Per layer, G = sum_t h h^T of the hidden units h entering ``down_proj`` (float64)."""
    layers = arch.decoder_layers(model)
    grams: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(i):
        def hook(module, args):
            h = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            g = h.T @ h
            grams[i] = g if grams[i] is None else grams[i] + g
        return hook

    hooks = [mlp._down(model, arch.mlp(block)).register_forward_pre_hook(make_hook(i))
             for i, block in enumerate(layers)]
    try:
        for start in range(0, windows.shape[0], batch_size):
            model(windows[start:start + batch_size], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return grams


@torch.no_grad()
def refit_down(dense: nn.Module, pruned: nn.Module, windows: torch.Tensor, damp: float = 0.01) -> int:
    """Refit every narrowed ``down_proj`` of ``pruned`` in place (closed form, see the module doc).

    ``damp`` adds ``damp * mean(diag G[K, K])`` to the diagonal (a ridge, for a stable solve).
    Returns how many layers were refitted. Llama-style MLPs only (``down_proj``).
    """
    if arch.family(pruned) == "gpt2":
        raise ValueError("refit_down handles gated (Llama / Qwen2 / Gemma3) MLPs; GPT-2's c_proj is a Conv1D.")
    grams = mlp_gram(dense, windows)
    kept = mlp.kept_neurons(pruned)
    done = 0
    for i, (block_d, block_p) in enumerate(zip(arch.decoder_layers(dense), arch.decoder_layers(pruned))):
        keep = kept.get(i)
        if keep is None:
            continue
        idx = torch.as_tensor(keep, dtype=torch.long)
        g = grams[i]
        g_kk = g[idx][:, idx]
        g_kk = g_kk + damp * g_kk.diagonal().mean() * torch.eye(len(idx), dtype=g.dtype)
        w = arch.mlp(block_d).down_proj.weight.double()  # (hidden, width)
        rhs = w @ g[:, idx]  # (hidden, K)
        new = torch.linalg.solve(g_kk, rhs.T).T  # rhs G_kk^-1 (G symmetric)
        arch.mlp(block_p).down_proj.weight.copy_(new.to(arch.mlp(block_p).down_proj.weight.dtype))
        done += 1
    return done


@dataclass
class StageResult:
    """One row of the pipeline table (speedups against dense fp32 PyTorch, same run)."""

    stage: str
    perplexity: float
    prefill_speedup: timing.Speedup | None
    decode_speedup: timing.Speedup | None
    disk_bytes: int
    seconds: float  # time to produce this stage from the previous one
    note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        s = lambda x: None if x is None else round(x.median, 3)  # noqa: E731
        return {"stage": self.stage, "perplexity": round(self.perplexity, 3),
                "prefill_speedup": s(self.prefill_speedup), "decode_speedup": s(self.decode_speedup),
                "disk_bytes": int(self.disk_bytes), "seconds": round(self.seconds, 2)}


def table(rows: list[StageResult]) -> str:
    """The stage table as aligned text."""
    lines = [f"{'stage':<16}{'perplexity':>11}{'prefill':>10}{'decode':>9}{'disk MB':>9}{'seconds':>9}  note"]
    for r in rows:
        pre = "-" if r.prefill_speedup is None else f"{r.prefill_speedup.median:.2f}x"
        dec = "-" if r.decode_speedup is None else f"{r.decode_speedup.median:.2f}x"
        lines.append(f"{r.stage:<16}{r.perplexity:>11.2f}{pre:>10}{dec:>9}{r.disk_bytes / 1e6:>9.1f}"
                     f"{r.seconds:>9.1f}  {r.note}")
    return "\n".join(lines)
