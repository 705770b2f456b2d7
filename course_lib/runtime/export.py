"""From a PyTorch model to a file another runtime runs: ONNX, ONNX Runtime, and its int8/int4.

A runtime is a second implementation of the same function. Shipping through one
is worth it only if three things hold, and this module measures each:

1. **Same answers.** ``export_onnx`` traces the prefill ``input_ids -> logits``
   with torch's exporter (``torch.onnx.export``, TorchScript path; ``dynamo=True``
   would too, slower), batch and length left dynamic.
   ``max_logit_gap`` compares ONNX Runtime's logits with PyTorch's on the same
   tokens; float32 kernels sum in a different order, so the gap is ~1e-5 of the
   logits' scale, not zero. ``LOGIT_TOLERANCE`` states what the course accepts.
2. **Faster.** ONNX Runtime fuses the graph (attention, layer norms, GELU/SiLU)
   and picks its own GEMM kernels; whether that beats PyTorch on *this* CPU is a
   measurement (``OrtPrefill`` is a plain callable for ``timing.time_side_by_side``).
3. **Smaller.** ``quantize_onnx`` rewrites every constant-weight ``MatMul``:
   - ``"nbits"``: ``MatMulNBits``, weight-only, block-wise: each block of
     ``block_size`` input weights of one output gets its own scale, W ~ s_b * q,
     q in [-2^(b-1), 2^(b-1)-1]. Activations stay float (the dequantized weights are
     multiplied in float), so outlier activations are not rounded: quality holds.
   - ``"dynamic"``: ``quantize_dynamic``, int8 weights per tensor *and* int8
     activations quantized per call: int8 GEMMs, but one scale for a whole
     activation row cannot hold a small model's outlier channels.

The export covers the prefill only (no KV cache inputs): decoding token by token
stays in PyTorch, where ``generate()`` keeps the cache.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .optional import require

LOGIT_TOLERANCE = 1e-3  # max |ORT - PyTorch| / max |PyTorch logits| accepted for float32 exports
ORT_METHODS = ("nbits", "dynamic")


class _Logits(nn.Module):
    """``input_ids -> logits`` of a causal LM, without the cache: the exported prefill."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # an explicit all-ones mask: the mask code then needs no packed-sequence search (torch.diff),
        # which the TorchScript exporter cannot translate
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          use_cache=False).logits


def export_onnx(model: nn.Module, path: str | Path, example_tokens: int = 16, opset: int = 18) -> Path:
    """Write the prefill of ``model`` (``input_ids -> logits``) as an ONNX file; returns its path.

    Batch and sequence length are dynamic. The weights are written into the one
    file (no external-data side file) so its size is the model's size on disk.
    The TorchScript exporter (``dynamo=False``) is used: on SmolLM2 it takes
    seconds where the ``torch.export`` path took minutes on this course's CPU, and
    both give the same logits.
    """
    require("onnx", what="export to ONNX")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    example = torch.zeros(1, example_tokens, dtype=torch.long, device=device)
    wrapper = _Logits(model).eval()
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet), \
            torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(path), input_names=["input_ids"],
                          output_names=["logits"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "logits": {0: "batch", 1: "tokens"}})
    return path


class OrtPrefill:
    """An ONNX Runtime session of an exported prefill: ``session(ids) -> logits`` (a torch tensor)."""

    def __init__(self, path: str | Path, threads: int = 2):
        ort = require("onnxruntime", what="running an ONNX model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.path = Path(path)
        self.threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = np.ascontiguousarray(input_ids.detach().cpu().numpy().astype(np.int64))
        return torch.from_numpy(self.session.run(["logits"], {"input_ids": ids})[0])

    def op_types(self) -> dict[str, int]:
        """How many nodes of each type the file holds (e.g. ``MatMulNBits`` after quantizing)."""
        onnx = require("onnx", what="reading an ONNX graph")
        counts: dict[str, int] = {}
        for node in onnx.load(str(self.path), load_external_data=False).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts


@torch.no_grad()
def max_logit_gap(model: nn.Module, session: OrtPrefill, input_ids: torch.Tensor) -> float:
    """max |ORT logits - PyTorch logits| / max |PyTorch logits| on the same tokens."""
    reference = model(input_ids=input_ids, use_cache=False).logits.float().cpu()
    other = session(input_ids).float()
    if other.shape != reference.shape:
        raise ValueError(f"ONNX logits have shape {tuple(other.shape)}, PyTorch {tuple(reference.shape)}: "
                         "the export does not match this model (re-export it).")
    return float((other - reference).abs().max() / reference.abs().max())


@torch.no_grad()
def ort_perplexity(session: OrtPrefill, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Perplexity of the ONNX model on ``windows`` (same definition as ``metrics.perplexity``)."""
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size]
        logits = session(batch)[:, :-1].float()
        targets = batch[:, 1:]
        total += float(torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
        count += targets.numel()
    return float(np.exp(total / count))


def check_ort_method(method: str, bits: int) -> None:
    if method not in ORT_METHODS:
        raise ValueError(f"ONNX Runtime quantization method {method!r} is unknown: use one of {ORT_METHODS} "
                         "('nbits': weight-only MatMulNBits; 'dynamic': int8 weights and activations).")
    if method == "nbits" and bits not in (4, 8):
        raise ValueError(f"bits={bits}: MatMulNBits takes 4 or 8 bits.")
    if method == "dynamic" and bits != 8:
        raise ValueError(f"bits={bits}: quantize_dynamic is int8 only (bits=8).")


def quantize_onnx(source: str | Path, target: str | Path, method: str = "nbits", bits: int = 8,
                  block_size: int = 32, embedding: bool = True) -> Path:
    """Quantize the MatMuls of an ONNX file with ONNX Runtime's own tools; returns ``target``.

    ``nbits``: weight-only ``MatMulNBits`` (symmetric, ``block_size`` weights per scale).
    ``dynamic``: ``quantize_dynamic``, int8 weights and per-call int8 activations.
    ``embedding`` (nbits only): the token embedding's ``Gather`` too, 4-bit (``GatherBlockQuantized``
    takes no other width);
    in a small model the embedding is a fifth of the weights, so it decides the file size.
    """
    check_ort_method(method, bits)
    onnx = require("onnx", what="ONNX Runtime quantization")
    quantization = require("onnxruntime.quantization", "onnxruntime", what="ONNX Runtime quantization")
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if method == "dynamic":
            quantization.quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"],
                                          weight_type=quantization.QuantType.QInt8)
        else:
            nbits = require("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime",
                            what="MatMulNBits quantization")
            model = onnx.load(str(source))
            # MatMuls at ``bits``; the embedding's Gather can only be 4-bit (GatherBlockQuantized)
            passes = [(("MatMul",), bits)] + ([(("Gather",), 4)] if embedding else [])
            for ops, width in passes:
                config = nbits.DefaultWeightOnlyQuantConfig(
                    block_size=block_size, is_symmetric=True, bits=width, op_types_to_quantize=ops,
                    quant_axes=(("MatMul", 0), ("Gather", 1)))
                quantizer = nbits.MatMulNBitsQuantizer(model, bits=width, block_size=block_size,
                                                       is_symmetric=True, op_types_to_quantize=ops,
                                                       quant_axes=(("MatMul", 0), ("Gather", 1)),
                                                       algo_config=config)
                quantizer.process()
                model = quantizer.model.model
            onnx.save(model, str(target))
    for side in target.parent.glob(target.name + ".data"):
        os.remove(side)  # never expected: the weights stay inside the .onnx file
    return target
