"""Where speed comes from: ideal (FLOPs) versus measured speedups of pruned models.

Three kinds of "fewer weights" and what they buy:

1. **Structured removal** (heads, MLP neurons): the matrices get smaller, the
   ordinary dense kernels do less work. ``ideal_speedup`` = dense FLOPs / pruned
   FLOPs; ``measure_speedup`` times both models side by side and reports
   measured / ideal.
2. **Unstructured zeros** in dense matrices: no speedup at all -- a dense kernel
   multiplies the zeros too (the FLOP count, which counts shapes, stays put).
   To cash in the zeros a *sparse* kernel must skip them: ``SparseLinear`` stores
   the weight as a torch CSR or BSR tensor and ``to_sparse_modules`` swaps it in.
   Sparse kernels pay for indexing, so they only win at high sparsity:
   ``sparse_layer_ratios`` measures the break-even.
3. **2:4 semi-structured** sparsity: GPUs from Ampere on (compute capability
   >= 8.0) have sparse tensor cores for exactly this pattern
   (``to_semi_structured``). torch has no CPU kernel for it.

Why the measured speedup of a structured prune stays below the ideal one is
spelled out in ``explain_gap``.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from . import arch, metrics, timing
from .metrics import Flops
from .pruning.masks import check_sparsity, topk_mask
from .pruning.undo import PruneHandle, restoring_on_error

LAYOUTS = ("csr", "bsr")


# ============================================================ ideal vs measured

def ideal_speedup(dense_flops: Flops, pruned_flops: Flops) -> float:
    """Dense FLOPs / pruned FLOPs: the speedup if time were proportional to FLOPs.

    ``metrics.flops_per_token`` counts weight *shapes*, so a model with zeroed
    (unstructured) weights gets exactly 1.0 here -- a dense kernel does not skip
    zeros. Removing heads or neurons shrinks the shapes and gives > 1.
    """
    if pruned_flops.total <= 0:
        raise ValueError(f"pruned model has {pruned_flops.total} FLOPs per token: nothing to divide by.")
    return dense_flops.total / pruned_flops.total


def nonzero_flops_per_token(model: nn.Module, context: int = 256) -> Flops:
    """Like ``metrics.flops_per_token`` but counting only *non-zero* weights.

    This is the ideal of a perfect sparse kernel (one that pays nothing to skip
    a zero); works on dense Linear/Conv1D and on ``SparseLinear`` modules.
    """
    def nnz(block: nn.Module) -> int:
        count = 0
        for m in block.modules():
            if isinstance(m, SparseLinear):
                count += int(torch.count_nonzero(m.weight.values()))
            elif arch.is_linear(m):
                count += int(torch.count_nonzero(m.weight))
        return 2 * count

    shapes = metrics.flops_per_token(model, context)  # scores and lm_head: unchanged by zeros
    layers = arch.decoder_layers(model)
    return Flops(sum(nnz(arch.attention(layer)) for layer in layers), shapes.attention_scores,
                 sum(nnz(arch.mlp(layer)) for layer in layers), shapes.lm_head)


@dataclass
class SpeedComparison:
    """A pruned model against its dense original, timed side by side in one run.

    Speedups are dense time / pruned time (above 1: the pruned model is faster);
    latency ratios are the inverse (pruned / dense, what the CLI prints).
    """

    label: str
    ideal_speedup: float
    prefill_speedup: float
    decode_speedup: float | None = None
    tokens: int = 128
    batch: int = 1
    measurements: dict = field(default_factory=dict, repr=False)

    @property
    def efficiency(self) -> float:
        """Measured / ideal prefill speedup (1.0: every FLOP saved became time saved)."""
        return self.prefill_speedup / self.ideal_speedup

    @property
    def latency_ratio(self) -> float:
        return 1.0 / self.prefill_speedup

    @property
    def ideal_latency_ratio(self) -> float:
        return 1.0 / self.ideal_speedup

    def as_dict(self) -> dict:
        return {"label": self.label, "ideal_speedup": self.ideal_speedup,
                "prefill_speedup": self.prefill_speedup, "decode_speedup": self.decode_speedup,
                "efficiency": self.efficiency, "latency_ratio": self.latency_ratio,
                "ideal_latency_ratio": self.ideal_latency_ratio, "tokens": self.tokens,
                "batch": self.batch,
                "measurements": {k: m.as_dict() for k, m in self.measurements.items()}}


def decode_workloads(models: dict[str, nn.Module], context: int = 64, new_tokens: int = 8):
    """(fns, setup) for ``timing.time_side_by_side``: per-token greedy decoding of each model.

    The same mechanism as ``timing.decode_latency`` (an untimed prefill fills a
    fresh KV cache, then ``new_tokens`` single-token steps are timed), for
    several models so they can be interleaved.
    """
    fns, setup = {}, {}
    for label, model in models.items():
        prompt = timing._token_batch(model, 1, context)
        state: dict = {}

        def prefill(model=model, prompt=prompt, state=state):
            state["cache"] = DynamicCache(config=model.config)
            out = model(prompt, cache=state["cache"], use_cache=True)
            state["next"] = out.logits[:, -1:].argmax(-1)

        def decode(model=model, state=state):
            token = state["next"]
            for _ in range(new_tokens):
                out = model(token, cache=state["cache"], use_cache=True)
                token = out.logits[:, -1:].argmax(-1)

        fns[label], setup[label] = decode, prefill
    return fns, setup


def measure_speedup(dense: nn.Module, pruned: nn.Module, label: str = "pruned",
                    tokens: int = 128, batch: int = 1, runs: int = 5, warmup: int = 2,
                    threads: int | None = 2, decode_tokens: int = 0, decode_context: int = 64,
                    ideal: float | None = None) -> SpeedComparison:
    """Prefill (and optionally per-token decode) speedup of ``pruned`` over ``dense``.

    Both models are timed interleaved in the same run (``timing.compare_prefill``),
    so drift of the machine hits both alike. ``ideal`` defaults to the FLOPs
    ratio at a context of ``tokens`` (what one prefill token attends to at most).
    ``pruned`` must be a separate model: prune a ``copy.deepcopy(dense)``.
    """
    if pruned is dense:
        raise ValueError("dense and pruned are the same object: prune a copy "
                         "(pruned = copy.deepcopy(dense)) to compare them side by side.")
    if ideal is None:
        # flops_per_token sees only dense Linear/Conv1D; sparse modules count their non-zeros
        count = (nonzero_flops_per_token if _has_sparse_modules(pruned) else metrics.flops_per_token)
        ideal = ideal_speedup(metrics.flops_per_token(dense, tokens), count(pruned, tokens))
    device = next(dense.parameters()).device.type
    pre = timing.compare_prefill({"dense": dense, label: pruned}, batch=batch, tokens=tokens,
                                 runs=runs, warmup=warmup, threads=threads, device=device)
    measurements = {"prefill dense": pre["dense"], f"prefill {label}": pre[label]}
    decode = None
    if decode_tokens:
        fns, setup = decode_workloads({"dense": dense, label: pruned}, decode_context, decode_tokens)
        dec = timing.time_side_by_side(fns, device=device, warmup=1, runs=max(3, runs // 2),
                                       threads=threads, setup=setup, per=decode_tokens)
        measurements.update({"decode dense": dec["dense"], f"decode {label}": dec[label]})
        decode = dec["dense"].median_ms / dec[label].median_ms
    return SpeedComparison(label, ideal, pre["dense"].median_ms / pre[label].median_ms, decode,
                           tokens, batch, measurements)


def pruned_copy(model: nn.Module, prune: Callable[[nn.Module], PruneHandle]):
    """``(copy, handle)``: a deep copy of ``model`` pruned by ``prune(copy)``; the original is untouched."""
    twin = copy.deepcopy(model)
    return twin, prune(twin)


def explain_gap(dense_flops: Flops, pruned_flops: Flops, measured_speedup: float | None = None,
                decode_speedup: float | None = None) -> str:
    """A readable account of why measured speedup < ideal speedup, with this model's numbers."""
    ideal = ideal_speedup(dense_flops, pruned_flops)
    shares = dense_flops.shares()
    untouched = (pruned_flops.lm_head + pruned_flops.attention_scores) / dense_flops.total
    lines = [f"Ideal speedup (FLOPs ratio): {ideal:.2f}x."]
    if measured_speedup is not None:
        lines.append(f"Measured prefill speedup: {measured_speedup:.2f}x = {measured_speedup / ideal:.0%} "
                     "of the ideal.")
    if decode_speedup is not None:
        lines.append(f"Measured decode speedup (per token): {decode_speedup:.2f}x.")
    lines += [
        f"- Amdahl: the lm_head ({shares['lm_head']:.0%} of the dense FLOPs) and the attention "
        f"scores ({shares['attention_scores']:.0%}, they grow with the context) are not pruned; "
        f"{untouched:.0%} of the dense work is left whatever we cut from the decoder matrices. "
        "The FLOPs ratio already accounts for that -- it is why the ideal is modest.",
        "- Work that FLOPs do not count: embedding lookup, RMSNorm/LayerNorm, rotary "
        "embeddings, softmax, SiLU/GELU, residual adds, the KV cache copies. They are "
        "memory-bound, barely shrink with pruning, and become a larger share of the time.",
        "- Smaller matrices run less efficiently: fewer rows per kernel call give the "
        "BLAS library less to parallelise and block, and the fixed cost of each operator "
        "(Python, dispatcher, thread wake-up, ~10-50 us) stays the same.",
        "- Decoding one token is a matrix-vector product: its time follows the bytes of "
        "weights read from memory (bandwidth), not the FLOPs. Removing neurons or heads "
        "shrinks those bytes; unstructured zeros in dense storage do not.",
        "- Unstructured zeros: 1.0x ideal and measured with dense kernels; a sparse "
        "format (CSR/BSR) must skip enough zeros to repay its index overhead.",
    ]
    return "\n".join(lines)


# ============================================================ sparse kernels on CPU

class SparseLinear(nn.Module):
    """A Linear whose weight is stored as a torch sparse CSR or BSR tensor (inference only).

    Forward computes ``(W_sparse @ x^T)^T`` with ``torch.sparse.mm``: sparse times
    dense is the form torch's CPU sparse kernels are fast at. (``F.linear(x, W_csr)``
    and ``torch.mm(x, W_csr.t())`` work too but are 3-10x slower; ``x @ W_csr.T``
    raises.) Inputs may be 2-D (tokens, features) or 3-D (batch, tokens, features).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 layout: str = "csr", blocksize: int = 32):
        super().__init__()
        layout = check_layout(layout)
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape "
                             f"{tuple(weight.shape)}.")
        self.out_features, self.in_features = weight.shape
        self.layout = layout
        self.blocksize = blocksize if layout == "bsr" else None
        dense = weight.detach()
        if layout == "bsr":
            check_blocks(tuple(dense.shape), blocksize)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and it works
            warnings.simplefilter("ignore", UserWarning)
            if layout == "csr":
                sparse = dense.to_sparse_csr()
            else:
                sparse = dense.to_sparse_bsr((blocksize, blocksize))
        # Buffers, not Parameters: these kernels are for inference, not training.
        self.register_buffer("weight", sparse)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_module(cls, module: nn.Module, layout: str = "csr", blocksize: int = 32) -> "SparseLinear":
        """From an nn.Linear or GPT-2 Conv1D (whose weight is stored transposed)."""
        if not arch.is_linear(module):
            raise TypeError(f"cannot make a SparseLinear from {type(module).__name__}: "
                            "give an nn.Linear or a GPT-2 Conv1D.")
        bias = module.bias.data if module.bias is not None else None
        return cls(arch.weight_matrix(module), bias, layout, blocksize)

    def density(self) -> float:
        """Stored values / (out x in): non-zeros for CSR, whole stored blocks for BSR."""
        return self.weight.values().numel() / (self.out_features * self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, this layer expects {self.in_features}.")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (tokens, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        block = f", blocksize={self.blocksize}" if self.blocksize else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"layout={self.layout}{block}, density={self.density():.3f}, "
                f"bias={self.bias is not None}")


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not known: choose 'csr' (any zeros) or 'bsr' "
                         "(zeros in whole blocks).")
    return layout


def check_blocks(shape: tuple[int, int], blocksize: int, name: str = "weight") -> None:
    if blocksize < 1 or shape[0] % blocksize or shape[1] % blocksize:
        raise ValueError(f"{name} of shape {shape} cannot be cut into {blocksize}x{blocksize} blocks: "
                         f"both dimensions must be multiples of the blocksize. Choose a blocksize "
                         f"dividing {shape[0]} and {shape[1]} (or use layout='csr').")


def _has_sparse_modules(model: nn.Module) -> bool:
    return any(isinstance(m, SparseLinear) for m in model.modules())


@torch.no_grad()
def sparse_swap_error(model: nn.Module, ids: torch.Tensor, layout: str = "csr", blocksize: int = 32,
                      names: Iterable[str] | None = None) -> float:
    """Max |logit difference| between ``model`` and the same model with sparse modules swapped in.

    The correctness check before trusting any sparse timing: a kernel that is
    fast but wrong is worthless. The swap is undone before returning.
    """
    reference = model(ids, use_cache=False).logits
    handle = to_sparse_modules(model, layout, blocksize, names)
    try:
        swapped = model(ids, use_cache=False).logits
    finally:
        handle.restore()
    return float((swapped - reference).abs().max())


def mlp_linear_names(model: nn.Module) -> list[str]:
    """Full names of the MLP Linear/Conv1D layers of every decoder block."""
    mlp_ids = {id(m) for layer in arch.decoder_layers(model) for m in arch.mlp(layer).modules()}
    return [name for name, m in arch.prunable_linears(model).items() if id(m) in mlp_ids]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return model.get_submodule(parent), child


@torch.no_grad()
def to_sparse_modules(model: nn.Module, layout: str = "csr", blocksize: int = 32,
                      names: Iterable[str] | None = None) -> PruneHandle:
    """Swap decoder Linear/Conv1D layers for ``SparseLinear`` copies; ``.restore()`` swaps back.

    ``names``: full module names (default: every prunable decoder matrix; see
    ``mlp_linear_names`` for the MLP only). Prune first -- converting a dense
    weight gives a sparse tensor holding every value, which is only slower.
    """
    layout = check_layout(layout)
    modules = arch.prunable_linears(model)
    names = list(modules) if names is None else list(names)
    for name in names:
        if name not in modules:
            raise KeyError(f"'{name}' is not a prunable decoder Linear/Conv1D of this model; "
                           f"names look like '{next(iter(modules))}'.")
        if layout == "bsr":
            check_blocks(tuple(arch.weight_matrix(modules[name]).shape), blocksize, name)
    handle = PruneHandle(f"to {layout}")
    densities = {}
    with restoring_on_error(handle):
        for name in names:
            sparse = SparseLinear.from_module(modules[name], layout, blocksize)
            parent, child = _parent(model, name)
            handle.set_attr(parent, child, sparse)
            densities[name] = sparse.density()
    handle.info.update(layout=layout, blocksize=blocksize if layout == "bsr" else None,
                       names=names, density=densities)
    return handle


def block_magnitude_mask(weight: torch.Tensor, sparsity: float, blocksize: int = 32) -> torch.Tensor:
    """Keep-mask zeroing whole ``blocksize`` x ``blocksize`` blocks, those of smallest L2 norm.

    BSR only skips *blocks* that are entirely zero. Unstructured zeros at 90%
    leave almost every 32x32 block with some non-zero (0.9^1024 ~ 0), so BSR
    needs its zeros pruned in blocks.
    """
    sparsity = check_sparsity(sparsity)
    rows, cols = weight.shape
    check_blocks((rows, cols), blocksize)
    blocks = weight.float().reshape(rows // blocksize, blocksize, cols // blocksize, blocksize)
    norms = blocks.pow(2).sum(dim=(1, 3))  # (row blocks, col blocks)
    keep = topk_mask(norms, sparsity, "matrix")
    return keep.repeat_interleave(blocksize, 0).repeat_interleave(blocksize, 1)


def prune_for_layout(weight: torch.Tensor, sparsity: float, layout: str, blocksize: int = 32) -> torch.Tensor:
    """Keep-mask that suits ``layout``: per-row magnitude for CSR, block magnitude for BSR."""
    if check_layout(layout) == "csr":
        return topk_mask(weight.abs(), sparsity, "row")
    return block_magnitude_mask(weight, sparsity, blocksize)


@torch.no_grad()
def prune_for_sparse_kernels(model: nn.Module, sparsity: float, layout: str = "csr",
                             blocksize: int = 32, names: Iterable[str] | None = None) -> PruneHandle:
    """Magnitude-prune the named layers (default: the MLP) in the pattern ``layout`` can skip."""
    from .pruning.masks import apply_masks

    modules = arch.prunable_linears(model)
    names = mlp_linear_names(model) if names is None else list(names)
    masks = {n: prune_for_layout(arch.weight_matrix(modules[n]), sparsity, layout, blocksize)
             for n in names}
    handle = apply_masks(model, masks, f"{layout} magnitude {sparsity:.0%}", keep_masks=False)
    handle.info.update(layout=layout, requested=sparsity)
    return handle


@dataclass
class SparseCurve:
    """Speedup (dense time / sparse time) per sparsity and layout, measured side by side."""

    sparsities: list[float]
    speedups: dict[str, list[float]]
    tokens: int
    threads: int
    blocksize: int
    what: str = "one matrix"
    ideal: list[float] | None = None  # perfect-sparse-kernel ideal (non-zero FLOPs), model curves

    def break_even(self, layout: str) -> float | None:
        return break_even(self.sparsities, self.speedups[layout])

    def as_dict(self) -> dict:
        return {"what": self.what, "sparsities": self.sparsities, "speedups": self.speedups,
                "tokens": self.tokens, "threads": self.threads, "blocksize": self.blocksize,
                "ideal": self.ideal,
                "break_even": {layout: self.break_even(layout) for layout in self.speedups}}


def break_even(sparsities: Sequence[float], speedups: Sequence[float]) -> float | None:
    """Sparsity where the speedup first crosses 1, interpolated linearly; None if never.

    If the first measured point is already faster than dense, the break-even lies
    below the measured range: the first sparsity is returned.
    """
    pairs = sorted(zip(sparsities, speedups))
    for (s0, r0), (s1, r1) in zip(pairs, pairs[1:]):
        if r0 < 1 <= r1:
            return s0 + (1 - r0) * (s1 - s0) / (r1 - r0)
    if pairs and pairs[0][1] >= 1:
        return pairs[0][0]
    return None


def sparse_layer_ratios(weight: torch.Tensor, sparsities: Sequence[float], tokens: int = 128,
                        layouts: Sequence[str] = LAYOUTS, blocksize: int = 32, runs: int = 20,
                        warmup: int = 3, threads: int | None = 2) -> SparseCurve:
    """Dense time / sparse time of one (out, in) matrix times ``tokens`` inputs, per sparsity.

    At each sparsity the weight is magnitude-pruned (per row for CSR, in
    ``blocksize`` blocks for BSR) and the dense kernel (``F.linear`` on the
    pruned weight -- it costs the same as on the unpruned one) is timed
    interleaved with each sparse layout.
    """
    weight = weight.detach().float()
    x = torch.randn(tokens, weight.shape[1], generator=torch.Generator().manual_seed(0))
    speedups: dict[str, list[float]] = {layout: [] for layout in layouts}
    used = threads
    for s in sparsities:
        fns = {"dense": (lambda w=weight * topk_mask(weight.abs(), s, "row"): F.linear(x, w))}
        for layout in layouts:
            masked = weight * prune_for_layout(weight, s, layout, blocksize)
            layer = SparseLinear(masked, None, layout, blocksize)
            fns[layout] = (lambda m=layer: m(x))
        result = timing.time_side_by_side(fns, warmup=warmup, runs=runs, threads=threads)
        used = result["dense"].threads
        for layout in layouts:
            speedups[layout].append(result["dense"].median_ms / result[layout].median_ms)
    return SparseCurve(list(sparsities), speedups, tokens, used, blocksize,
                       what=f"one {weight.shape[0]}x{weight.shape[1]} matrix")


def sparse_model_ratios(model: nn.Module, sparsities: Sequence[float], layouts: Sequence[str] = LAYOUTS,
                        tokens: int = 128, blocksize: int = 32, names: Iterable[str] | None = None,
                        runs: int = 5, warmup: int = 2, threads: int | None = 2,
                        on_result: Callable[[str, float, SpeedComparison], None] | None = None) -> SparseCurve:
    """The whole model: dense prefill time / time with sparse ``names`` layers (default: the MLP).

    One deep copy is pruned, converted, timed side by side against ``model`` and
    restored for each (layout, sparsity); ``model`` itself is never changed.
    ``on_result(layout, sparsity, comparison)`` receives each full comparison.
    """
    names = mlp_linear_names(model) if names is None else list(names)
    twin = copy.deepcopy(model)
    speedups: dict[str, list[float]] = {layout: [] for layout in layouts}
    ideals = []
    dense_flops = metrics.flops_per_token(model, tokens)
    for s in sparsities:
        for layout in layouts:
            pruning = prune_for_sparse_kernels(twin, s, layout, blocksize, names)
            try:
                ideal = ideal_speedup(dense_flops, nonzero_flops_per_token(twin, tokens))
                swap = to_sparse_modules(twin, layout, blocksize, names)
                try:
                    result = measure_speedup(model, twin, f"{layout} {s:.0%}", tokens, runs=runs,
                                             warmup=warmup, threads=threads, ideal=ideal)
                finally:
                    swap.restore()
            finally:
                pruning.restore()
            speedups[layout].append(result.prefill_speedup)
            if layout == layouts[0]:
                ideals.append(ideal)
            if on_result:
                on_result(layout, s, result)
    return SparseCurve(list(sparsities), speedups, tokens, threads or torch.get_num_threads(),
                       blocksize, what=f"whole model, {len(names)} layers sparse", ideal=ideals)


# ============================================================ 2:4 on the GPU

def is_n_m_sparse(weight: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """True if every group of ``m`` consecutive input weights of each row has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool((weight.reshape(rows, cols // m, m) != 0).sum(-1).le(n).all())


def semi_structured_support(device: torch.device | str | None = None) -> str | None:
    """None if 2:4 sparse kernels can run on ``device``, else the reason why not."""
    if not torch.cuda.is_available():
        return ("torch has no CPU kernel for 2:4 semi-structured sparsity "
                "(to_sparse_semi_structured raises 'Only CUDA tensors are currently supported'), "
                "and this machine has no CUDA GPU. Run on an NVIDIA GPU with compute capability "
                ">= 8.0 (A100, RTX 30xx or newer) with the model in float16/bfloat16; on the CPU, "
                "use SparseLinear (CSR/BSR) or structured removal instead.")
    device = torch.device(device or "cuda")
    if device.type != "cuda":
        return (f"the model is on '{device}': 2:4 kernels exist only for CUDA tensors. Move it "
                "with model.to('cuda', torch.float16) first.")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (f"this GPU has compute capability {major}.{minor}; sparse tensor cores need >= 8.0 "
                "(Ampere or newer).")
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module, names: Iterable[str] | None = None) -> PruneHandle:
    """Store 2:4-pruned decoder Linear weights in torch's semi-structured format (GPU only).

    Checks first that every named weight really is 2:4 (prune with
    ``pattern="2:4"``), then that the model is on a capable GPU in float16 or
    bfloat16. ``F.linear`` then dispatches to the sparse tensor cores.
    ``.restore()`` puts the dense Parameters back.
    """
    modules = arch.prunable_linears(model)
    names = list(modules) if names is None else list(names)
    for name in names:
        if name not in modules:
            raise KeyError(f"'{name}' is not a prunable decoder Linear of this model.")
        if not isinstance(modules[name], nn.Linear):
            raise TypeError(f"'{name}' is a {type(modules[name]).__name__}; 2:4 conversion "
                            "supports nn.Linear only (GPT-2's Conv1D is not).")
        if not is_n_m_sparse(modules[name].weight):
            raise ValueError(f"'{name}' is not 2:4 sparse: some group of 4 consecutive input "
                             "weights has more than 2 non-zeros. Prune it first, e.g. "
                             "magnitude_prune(model, pattern='2:4').")
    weight = next(iter(modules.values())).weight
    reason = semi_structured_support(weight.device)
    if reason:
        raise RuntimeError(f"cannot use 2:4 sparse kernels: {reason}")
    if weight.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"the weights are {weight.dtype}; 2:4 kernels take float16 or bfloat16: "
                        "model.half() or model.to(torch.bfloat16) first.")
    from torch.sparse import to_sparse_semi_structured

    handle = PruneHandle("to 2:4 semi-structured")
    with restoring_on_error(handle):
        for name in names:
            module = modules[name]
            packed = nn.Parameter(to_sparse_semi_structured(module.weight.data), requires_grad=False)
            handle.set_attr(module, "weight", packed)
    handle.info.update(names=names, pattern=(2, 4))
    return handle


def semi_structured_layer_ratio(out_features: int = 1536, in_features: int = 576, tokens: int = 128,
                                dtype: torch.dtype = torch.float16, runs: int = 50,
                                warmup: int = 10) -> float:
    """Dense time / 2:4 time of one magnitude-2:4-pruned random matrix on the GPU, same dtype."""
    reason = semi_structured_support("cuda")
    if reason:
        raise RuntimeError(f"cannot measure 2:4 kernels: {reason}")
    from torch.sparse import to_sparse_semi_structured
    from .pruning.masks import nm_mask

    weight = torch.randn(out_features, in_features, device="cuda", dtype=dtype)
    weight = weight * nm_mask(weight.abs().float(), 2, 4).to(dtype)
    sparse = to_sparse_semi_structured(weight)
    x = torch.randn(tokens, in_features, device="cuda", dtype=dtype)
    result = timing.time_side_by_side({"dense": lambda: F.linear(x, weight),
                                       "2:4": lambda: F.linear(x, sparse)},
                                      device="cuda", warmup=warmup, runs=runs)
    return result["dense"].median_ms / result["2:4"].median_ms


def semi_structured_model_speedup(model: nn.Module, tokens: int = 128, batch: int = 1,
                                  runs: int = 10) -> SpeedComparison:
    """A 2:4-pruned CUDA model (fp16/bf16) with dense storage vs the same weights as 2:4 tensors.

    The ideal is the non-zero FLOPs ratio (the sparse tensor cores skip half of
    every decoder matrix; the lm_head and attention scores stay dense).
    """
    ideal = ideal_speedup(metrics.flops_per_token(model, tokens), nonzero_flops_per_token(model, tokens))
    twin = copy.deepcopy(model)
    to_semi_structured(twin)
    return measure_speedup(model, twin, "2:4 sparse kernels", tokens, batch, runs=runs, ideal=ideal)
