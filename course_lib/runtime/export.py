"""From a PyTorch model to a file another runtime runs: ONNX, ONNX Runtime, and its int8/int4.

A runtime is a second implementation of the same function. Shipping through one
is worth it only if three things hold, and this module measures each:

1. **Same answers.** ``export_onnx`` traces ``(input_ids, past) -> (logits, present)``
   with torch's exporter (``torch.onnx.export``, TorchScript path; ``dynamo=True``
   would too, slower), batch and length left dynamic.
   ``max_logit_gap`` compares ONNX Runtime's logits with PyTorch's on the same
   tokens; float32 kernels sum in a different order, so the gap is ~1e-5 of the
   logits' scale, not zero. ``LOGIT_TOLERANCE`` states what the course accepts.
2. **Faster.** ONNX Runtime fuses the graph (attention, layer norms, GELU/SiLU)
   and picks its own GEMM kernels; whether that beats PyTorch on *this* CPU is a
   measurement (``OrtModel`` gives plain callables for ``timing.time_side_by_side``).
3. **Smaller.** ``quantize_onnx`` rewrites every constant-weight ``MatMul``:
   - ``"nbits"``: ``MatMulNBits``, block-wise: each block of ``block_size`` input
     weights of one output gets its own scale, W ~ s_b * q, q in [-2^(b-1), 2^(b-1)-1].
     ``accuracy_level`` picks the kernel: ``None`` dequantizes the weights and
     multiplies in float (measured on SmolLM2 here: 8-bit decoding 12x *slower* than
     float32 ONNX, there is no fast 8-bit float path on this CPU); ``4`` (the default)
     rounds each block of 32 activations to int8 with its own scale and runs an int8
     kernel (8-bit decoding 1.7x *faster* than float32 ONNX, perplexity 31.88 -> 31.92).
     A scale per block of 32 activations, not one per row, is what keeps outlier
     channels from drowning the others.
   - ``"dynamic"``: ``quantize_dynamic``, int8 weights per tensor *and* int8
     activations quantized per call: int8 GEMMs, but one scale for a whole
     activation tensor cannot hold a small model's outlier channels.
   - ``"int8"``: the same int8 GEMMs (``DynamicQuantizeMatMul`` once ONNX Runtime has
     fused the graph: the activations rounded to uint8 with one scale per call) with
     one weight scale per output channel, the lm_head included, and the embedding
     4-bit. Meant for a model whose outlier channels were first moved into the
     weights (``smooth.smoothed_copy``): that is what makes int8 activations hold.
     The weights use ONNX Runtime's reduced range (7 bits, [-64, 64]): without VNNI
     (AVX2) the uint8 x int8 kernel sums pairs in int16 and would saturate at 8 bits.
     Prefill is arithmetic-bound, and these are integer GEMMs on every MatMul:
     measured on ship's SmolLM2 (``bench/results.md``, 1 thread) prefill 2.96x dense
     PyTorch where ``nbits`` gives 0.99x and float32 ONNX 1.35x; decode 3.66x (nbits 2.95x);
     perplexity +8% over float32 ONNX after smoothing (nbits +2%), +61% without it.

The export carries the KV cache as plain tensors (inputs ``past_*``, outputs
``present_*``), so the same file runs the prefill (empty past) and the decoding
steps (one token, the previous presents): ``OrtModel.generate`` is greedy
decoding entirely in ONNX Runtime.
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

from ..core import arch
from .optional import require

LOGIT_TOLERANCE = 1e-3  # max |ORT - PyTorch| / max |PyTorch logits| accepted for float32 exports
ORT_METHODS = ("nbits", "dynamic", "int8")


class _Step(nn.Module):
    """``(input_ids, past keys/values...) -> (logits, present keys/values...)``: one call of a
    causal LM with its KV cache as plain tensors, the graph ONNX Runtime runs.

    With an empty past (length 0) it is the prefill; with the previous call's
    presents and one new token it is a decode step. Positions and the all-ones
    mask are computed from tensor shapes, so the traced graph stays dynamic.
    Every layer keeps its whole past, sliding-window layers (Gemma3) included: the
    model's own sliding mask hides what lies beyond the window, and every layer's
    past has the same length, from which the positions are counted.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.layers = len(arch.decoder_layers(model))

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor):
        from transformers import DynamicCache

        cache = DynamicCache()  # full layers: a sliding layer's cache would drop its oldest keys
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        mask = torch.cat([torch.ones_like(past[0][:, 0, :, 0], dtype=torch.long),
                          torch.ones_like(input_ids)], dim=1)
        positions = mask.cumsum(-1)[:, -input_ids.shape[1]:] - 1
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True)
        presents = []
        for i in range(self.layers):
            presents += [cache.layers[i].keys, cache.layers[i].values]
        return (out.logits, *presents)


def kv_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """Per decoder layer, ``(KV heads, head_dim)`` of its cache tensors, read from the weights.

    Not from the config: GPT-2's has no ``num_key_value_heads``, and after
    ``remove_heads`` the layers may keep different numbers of KV heads.
    """
    shapes = [arch.attention_shape(model, i) for i in range(len(arch.decoder_layers(model)))]
    return [(shape.n_kv_heads, shape.head_dim) for shape in shapes]


def export_onnx(model: nn.Module, path: str | Path, opset: int = 18) -> Path:
    """Write ``model`` with its KV cache as inputs/outputs (``_Step``) to one ONNX file.

    Batch, new tokens and past length are dynamic. The weights are written into
    the one file (no external-data side file), so its size is the model's size on
    disk. The TorchScript exporter (``dynamo=False``) is used: on SmolLM2 it takes
    seconds where the ``torch.export`` path took minutes on this course's CPU.
    Attention is traced in its ``eager`` form (the ``sdpa`` trace drops the
    grouped-query head repeat when a cache is passed); the model is set back after.
    """
    require("onnx", what="export to ONNX")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shapes = kv_shapes(model)
    layers = len(shapes)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)
    past = [torch.zeros(1, kv_heads, 3, head_dim, device=device, dtype=dtype)
            for kv_heads, head_dim in shapes for _ in ("key", "value")]
    past_names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"},
            **{n: {0: "batch", 2: "past"} for n in past_names},
            **{n: {0: "batch", 2: "total"} for n in present_names}}
    before = model.config._attn_implementation
    quiet = io.StringIO()
    try:
        model.set_attn_implementation("eager")
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), \
                contextlib.redirect_stderr(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Step(model).eval(), (ids, *past), str(path),
                              input_names=["input_ids", *past_names],
                              output_names=["logits", *present_names], opset_version=opset,
                              dynamo=False, dynamic_axes=axes)
    finally:
        model.set_attn_implementation(before)
    return path


class OrtModel:
    """An ONNX Runtime session of an exported model (``export_onnx``).

    ``session(ids)`` -> logits of a prefill (empty cache), as a torch tensor;
    ``generate(ids, n)`` -> greedy new tokens, with the cache kept in ONNX Runtime.
    """

    def __init__(self, path: str | Path, threads: int = 2):
        ort = require("onnxruntime", what="running an ONNX model")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # idle ONNX Runtime threads sleep instead of spinning: a spinning pool starves every other
        # model timed beside it on a 2-core machine (PyTorch measured 60x slower next to spinning sessions)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.path = Path(path)
        self.threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        self.past_names = [i.name for i in inputs[1:]]
        # per input [batch, kv_heads, past, head_dim]: the layers may differ (heads removed)
        self.past_shapes = {i.name: (int(i.shape[1]), int(i.shape[3])) for i in inputs[1:]}
        self.past_dtype = np.float16 if inputs[1].type == "tensor(float16)" else np.float32

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {n: np.zeros((batch, heads, 0, dim), self.past_dtype) for n, (heads, dim) in self.past_shapes.items()}

    def step(self, ids: np.ndarray, past: dict[str, np.ndarray]):
        """One call: (logits, the new past as a feed dict)."""
        out = self.session.run(None, {"input_ids": ids, **past})
        return out[0], dict(zip(self.past_names, out[1:]))

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = np.ascontiguousarray(input_ids.detach().cpu().numpy().astype(np.int64))
        return torch.from_numpy(self.step(ids, self.empty_past(ids.shape[0]))[0])

    def greedy(self, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
        """``(batch, new_tokens)`` greedy tokens after the prompts ``input_ids`` (one length, no
        padding), the cache kept in ONNX Runtime: one prefill, then one step per token."""
        if new_tokens < 1:
            raise ValueError(f"new_tokens={new_tokens}: generate at least one token.")
        ids = np.ascontiguousarray(input_ids.detach().cpu().numpy().astype(np.int64))
        logits, past = self.step(ids, self.empty_past(ids.shape[0]))
        tokens = []
        for i in range(new_tokens):
            token = logits[:, -1].argmax(-1).reshape(-1, 1).astype(np.int64)
            tokens.append(token)
            if i + 1 < new_tokens:  # the last token needs no step of its own
                logits, past = self.step(token, past)
        return torch.from_numpy(np.concatenate(tokens, axis=1))

    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> list[int]:
        """Greedy decoding of ``new_tokens`` tokens after ``input_ids`` (batch 1), cache in ORT."""
        return self.greedy(input_ids[:1], new_tokens)[0].tolist()

    def decode_workload(self, context: int = 32, new_tokens: int = 16, vocab: int | None = None,
                        seed: int = 0):
        """``(decode, prefill)`` for ``timing.time_side_by_side``: ``prefill`` (untimed setup)
        fills the cache from a ``context``-token prompt, ``decode`` times ``new_tokens`` steps."""
        vocab = vocab or 1000
        generator = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, vocab, (1, context), generator=generator).numpy()
        state: dict = {}

        def prefill():
            logits, state["past"] = self.step(prompt, self.empty_past(1))
            state["next"] = logits[:, -1].argmax(-1).reshape(1, 1).astype(np.int64)

        def decode():
            token, past = state["next"], state["past"]
            for _ in range(new_tokens):
                logits, past = self.step(token, past)
                token = logits[:, -1].argmax(-1).reshape(1, 1).astype(np.int64)

        return decode, prefill

    def op_types(self) -> dict[str, int]:
        """How many nodes of each type the file holds (e.g. ``MatMulNBits`` after quantizing)."""
        onnx = require("onnx", what="reading an ONNX graph")
        counts: dict[str, int] = {}
        for node in onnx.load(str(self.path), load_external_data=False).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts


@torch.no_grad()
def max_logit_gap(model: nn.Module, session: "OrtModel | nn.Module", input_ids: torch.Tensor) -> float:
    """max |other logits - PyTorch logits| / max |PyTorch logits| on the same tokens.

    ``session``: an ONNX Runtime session (``OrtModel``) or another PyTorch model (e.g. a
    smoothed copy, which must compute the same function)."""
    reference = model(input_ids=input_ids, use_cache=False).logits.float().cpu()
    if isinstance(session, nn.Module):
        other = session(input_ids=input_ids, use_cache=False).logits.float().cpu()
    else:
        other = session(input_ids).float()
    if other.shape != reference.shape:
        raise ValueError(f"ONNX logits have shape {tuple(other.shape)}, PyTorch {tuple(reference.shape)}: "
                         "the export does not match this model (re-export it).")
    return float((other - reference).abs().max() / reference.abs().max())


@torch.no_grad()
def ort_perplexity(session: OrtModel, windows: torch.Tensor, batch_size: int = 4) -> float:
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
                         "('nbits': weight-only MatMulNBits; 'dynamic': int8 weights and activations; "
                         "'int8': the same with per-channel weights and a 4-bit embedding).")
    if method == "nbits" and bits not in (4, 8):
        raise ValueError(f"bits={bits}: MatMulNBits takes 4 or 8 bits.")
    if method in ("dynamic", "int8") and bits != 8:
        raise ValueError(f"bits={bits}: the {method!r} method is int8 only (bits=8).")


def matmul_nodes(path: str | Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a weight (an initializer): what the int8
    methods quantize, e.g. ``/model/layers.0/mlp/down_proj/MatMul`` and ``/lm_head/MatMul``."""
    onnx = require("onnx", what="reading an ONNX graph")
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _nbits_pass(model, ops: tuple[str, ...], bits: int, block_size: int, accuracy_level: int | None):
    """One pass of ONNX Runtime's block-wise quantizer over the ``ops`` nodes of ``model``."""
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime",
                    what="MatMulNBits quantization")
    axes = (("MatMul", 0), ("Gather", 1))
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, bits=bits,
                                                op_types_to_quantize=ops, quant_axes=axes,
                                                accuracy_level=accuracy_level)
    quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                           op_types_to_quantize=ops, accuracy_level=accuracy_level,
                                           quant_axes=axes, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def quantize_onnx(source: str | Path, target: str | Path, method: str = "nbits", bits: int = 8,
                  block_size: int = 32, embedding: bool = True, accuracy_level: int | None = 4,
                  blockwise: tuple[str, ...] = ()) -> Path:
    """Quantize the MatMuls of an ONNX file with ONNX Runtime's own tools; returns ``target``.

    ``nbits``: ``MatMulNBits`` (symmetric, ``block_size`` weights per scale; ``accuracy_level``
    4: int8 kernels on per-block int8 activations, ``None``: float kernels on dequantized weights).
    ``dynamic``: ``quantize_dynamic``, int8 weights and per-call int8 activations.
    ``int8``: the same with one weight scale per output channel (smooth the model first).
    ``embedding`` (nbits, int8): the token embedding's ``Gather`` too, 4-bit (``GatherBlockQuantized``
    takes no other width);
    in a small model the embedding is a fifth of the weights, so it decides the file size.
    ``blockwise`` (int8 only): names of MatMul nodes (``matmul_nodes`` lists them) that keep
    ``nbits``' 8-bit MatMulNBits instead, whose activations get one scale per block of 32: for
    the projections whose inputs int8 with one scale per call still hurts.
    """
    check_ort_method(method, bits)
    if blockwise and method != "int8":
        raise ValueError(f"blockwise is for the 'int8' method: {method!r} treats every MatMul alike.")
    onnx = require("onnx", what="ONNX Runtime quantization")
    quantization = require("onnxruntime.quantization", "onnxruntime", what="ONNX Runtime quantization")
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if method in ("dynamic", "int8"):
            known = set(matmul_nodes(source))
            unknown = sorted(set(blockwise) - known)
            if unknown:
                raise ValueError(f"blockwise names {unknown[:3]} are not MatMul nodes of {source.name} "
                                 f"(e.g. {sorted(known)[:2]}).")
            root, level = logging.getLogger(), logging.getLogger().level
            root.setLevel(logging.ERROR)  # its "consider pre-processing" warning goes to the root logger
            try:
                quantization.quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul"],
                                              weight_type=quantization.QuantType.QInt8,
                                              per_channel=method == "int8", nodes_to_exclude=list(blockwise))
            finally:
                root.setLevel(level)
            if method == "int8":
                # the MatMuls left (``blockwise``) at 8 bits, then the embedding's Gather at 4
                passes = ([(("MatMul",), 8)] if blockwise else []) + ([(("Gather",), 4)] if embedding else [])
                model = onnx.load(str(target))
                for ops, width in passes:
                    model = _nbits_pass(model, ops, width, block_size, accuracy_level)
                onnx.save(model, str(target))
        else:
            model = onnx.load(str(source))
            # MatMuls at ``bits``; the embedding's Gather can only be 4-bit (GatherBlockQuantized)
            passes = [(("MatMul",), bits)] + ([(("Gather",), 4)] if embedding else [])
            for ops, width in passes:
                model = _nbits_pass(model, ops, width, block_size, accuracy_level)
            onnx.save(model, str(target))
    for side in target.parent.glob(target.name + ".data"):
        os.remove(side)  # never expected: the weights stay inside the .onnx file
    return target
