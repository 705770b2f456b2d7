"""Kernels that skip zeros: CSR/BSR on the CPU, 2:4 semi-structured on the GPU.

Unstructured zeros in dense matrices buy no speed: a dense kernel multiplies the
zeros too. To cash them in, a *sparse* kernel must skip them: ``SparseLinear``
stores the weight as a torch CSR or BSR tensor and ``to_sparse_modules`` swaps it
in. Sparse kernels pay for indexing, so they only win at high sparsity:
``sparse_layer_ratios`` measures the break-even. 2:4 semi-structured sparsity
has hardware support on GPUs from Ampere on (compute capability >= 8.0,
``to_semi_structured``); torch has no CPU kernel for it.

BSR stores whole ``b x b`` blocks. A pruned model's widths are rarely round
(SmolLM2 with 18.75% of its neurons removed: 1248; a Llama-shaped stand-in: 688),
so the block side is chosen to fit (``blocksize_for``: the largest of 32, 16, 8
dividing both sides of every matrix) and, where none does, the matrix is padded
with zero rows and columns to whole blocks: the padding is multiplied by zero
inputs and its outputs are dropped, so the result is the unpadded product.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core import arch, metrics, timing
from ..pruning.masks import check_sparsity, topk_mask
from ..pruning.undo import PruneHandle, restoring_on_error
from .speed import SpeedComparison, ideal_speedup, measure_speedup, nonzero_flops_per_token

LAYOUTS = ("csr", "bsr")
BLOCK = 32  # the BSR block side tried first
SMALLEST_BLOCK = 8  # below this, pad to BLOCK instead: tiny blocks index almost every weight

# ============================================================ sparse kernels on CPU

class SparseLinear(nn.Module):
    """A Linear whose weight is stored as a torch sparse CSR or BSR tensor (inference only).

    Forward computes ``(W_sparse @ x^T)^T`` with ``torch.sparse.mm``: sparse times
    dense is the form torch's CPU sparse kernels are fast at. (``F.linear(x, W_csr)``
    and ``torch.mm(x, W_csr.t())`` work too but are 3-10x slower; ``x @ W_csr.T``
    raises.) Inputs may be 2-D (tokens, features) or 3-D (batch, tokens, features).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 layout: str = "csr", blocksize: int | None = None):
        super().__init__()
        layout = check_layout(layout)
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape "
                             f"{tuple(weight.shape)}.")
        self.out_features, self.in_features = weight.shape
        self.layout = layout
        dense = weight.detach()
        self.blocksize = None
        if layout == "bsr":
            self.blocksize = blocksize = check_blocks(blocksize, [tuple(dense.shape)])
            dense = _padded(dense, blocksize)  # zero rows/columns up to whole blocks, if needed
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
    def from_module(cls, module: nn.Module, layout: str = "csr", blocksize: int | None = None) -> "SparseLinear":
        """From an nn.Linear or GPT-2 Conv1D (whose weight is stored transposed)."""
        if not arch.is_linear(module):
            raise TypeError(f"cannot make a SparseLinear from {type(module).__name__}: "
                            "give an nn.Linear or a GPT-2 Conv1D.")
        bias = module.bias.data if module.bias is not None else None
        return cls(arch.weight_matrix(module), bias, layout, blocksize)

    def density(self) -> float:
        """Stored values / matrix size: non-zeros for CSR, whole stored blocks for BSR (padded size)."""
        rows, cols = self.weight.shape
        return self.weight.values().numel() / (rows * cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, this layer expects {self.in_features}.")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        rows, cols = self.weight.shape
        if cols > self.in_features:  # a padded BSR weight: zero inputs meet its padding columns
            flat = F.pad(flat, (0, cols - self.in_features))
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (tokens, out)
        if rows > self.out_features:
            out = out[:, :self.out_features]
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


def blocksize_for(shapes, wanted: int = BLOCK) -> int:
    """The BSR block side for matrices of ``shapes``: the largest of ``wanted``, ``wanted/2``, ...
    down to ``SMALLEST_BLOCK`` that divides both sides of every one; ``wanted`` if none does
    (the matrices are then padded to whole blocks)."""
    b = wanted
    while b >= SMALLEST_BLOCK:
        if all(rows % b == 0 and cols % b == 0 for rows, cols in shapes):
            return b
        b //= 2
    return wanted


def check_blocks(blocksize: int | None, shapes) -> int:
    """``blocksize`` validated (a whole number >= 1), or ``blocksize_for(shapes)`` when None."""
    if blocksize is None:
        return blocksize_for(shapes)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize={blocksize!r}: give a whole number of rows and columns per block, "
                         f"e.g. {BLOCK} (or None to fit the matrices' shapes).")
    return blocksize


def _padded(weight: torch.Tensor, blocksize: int) -> torch.Tensor:
    """``weight`` with zero rows and columns appended up to whole ``blocksize`` blocks."""
    rows, cols = weight.shape
    return F.pad(weight, (0, -cols % blocksize, 0, -rows % blocksize))


def mlp_linear_names(model: nn.Module) -> list[str]:
    """Full names of the MLP Linear/Conv1D layers of every decoder block."""
    mlp_ids = {id(m) for layer in arch.decoder_layers(model) for m in arch.mlp(layer).modules()}
    return [name for name, m in arch.prunable_linears(model).items() if id(m) in mlp_ids]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return model.get_submodule(parent), child


@torch.no_grad()
def to_sparse_modules(model: nn.Module, layout: str = "csr", blocksize: int | None = None,
                      names: Iterable[str] | None = None) -> PruneHandle:
    """Swap decoder Linear/Conv1D layers for ``SparseLinear`` copies; ``.restore()`` swaps back.

    ``names``: full module names (default: every prunable decoder matrix; see
    ``mlp_linear_names`` for the MLP only). Prune first -- converting a dense
    weight gives a sparse tensor holding every value, which is only slower.
    ``blocksize`` (BSR): None fits the named matrices (``blocksize_for``).
    """
    layout = check_layout(layout)
    modules = arch.prunable_linears(model)
    names = list(modules) if names is None else list(names)
    for name in names:
        if name not in modules:
            raise KeyError(f"'{name}' is not a prunable decoder Linear/Conv1D of this model; "
                           f"names look like '{next(iter(modules))}'.")
    if layout == "bsr":
        blocksize = check_blocks(blocksize, _shapes(modules, names))
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


def _shapes(modules: dict, names) -> list[tuple[int, int]]:
    return [tuple(arch.weight_matrix(modules[name]).shape) for name in names]


def block_magnitude_mask(weight: torch.Tensor, sparsity: float, blocksize: int | None = None) -> torch.Tensor:
    """Keep-mask zeroing whole ``blocksize`` x ``blocksize`` blocks, those of smallest L2 norm.

    BSR only skips *blocks* that are entirely zero. Unstructured zeros at 90%
    leave almost every 32x32 block with some non-zero (0.9^1024 ~ 0), so BSR
    needs its zeros pruned in blocks. (A matrix that is no whole number of blocks
    is cut as if padded with zeros, the blocks SparseLinear stores; a part block is
    scored by the mean square of its real weights, so the padding does not make it
    look weak.)
    """
    sparsity = check_sparsity(sparsity)
    rows, cols = weight.shape
    blocksize = check_blocks(blocksize, [(rows, cols)])
    padded = _padded(weight.float(), blocksize)
    shape = (padded.shape[0] // blocksize, blocksize, padded.shape[1] // blocksize, blocksize)
    real = _padded(torch.ones(rows, cols), blocksize).reshape(shape).sum(dim=(1, 3))
    norms = padded.reshape(shape).pow(2).sum(dim=(1, 3)) / real  # (row blocks, col blocks)
    keep = topk_mask(norms, sparsity, "matrix")
    return keep.repeat_interleave(blocksize, 0).repeat_interleave(blocksize, 1)[:rows, :cols]


def prune_for_layout(weight: torch.Tensor, sparsity: float, layout: str, blocksize: int | None = None) -> torch.Tensor:
    """Keep-mask that suits ``layout``: per-row magnitude for CSR, block magnitude for BSR."""
    if check_layout(layout) == "csr":
        return topk_mask(weight.abs(), sparsity, "row")
    return block_magnitude_mask(weight, sparsity, blocksize)


@torch.no_grad()
def prune_for_sparse_kernels(model: nn.Module, sparsity: float, layout: str = "csr",
                             blocksize: int | None = None, names: Iterable[str] | None = None) -> PruneHandle:
    """Magnitude-prune the named layers (default: the MLP) in the pattern ``layout`` can skip."""
    from ..pruning.masks import apply_masks

    modules = arch.prunable_linears(model)
    names = mlp_linear_names(model) if names is None else list(names)
    if check_layout(layout) == "bsr":
        blocksize = check_blocks(blocksize, _shapes(modules, names))  # the block to_sparse_modules fits
    masks = {n: prune_for_layout(arch.weight_matrix(modules[n]), sparsity, layout, blocksize)
             for n in names}
    handle = apply_masks(model, masks, f"{layout} magnitude {sparsity:.0%}", keep_masks=False)
    handle.info.update(layout=layout, requested=sparsity, blocksize=blocksize if layout == "bsr" else None)
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
                        layouts: Sequence[str] = LAYOUTS, blocksize: int | None = None, runs: int = 20,
                        warmup: int = 3, threads: int | None = 2) -> SparseCurve:
    """Dense time / sparse time of one (out, in) matrix times ``tokens`` inputs, per sparsity.

    At each sparsity the weight is magnitude-pruned (per row for CSR, in
    ``blocksize`` blocks for BSR) and the dense kernel (``F.linear`` on the
    pruned weight -- it costs the same as on the unpruned one) is timed
    interleaved with each sparse layout.
    """
    weight = weight.detach().float()
    blocksize = check_blocks(blocksize, [tuple(weight.shape)])
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
                        tokens: int = 128, blocksize: int | None = None, names: Iterable[str] | None = None,
                        runs: int = 5, warmup: int = 2, threads: int | None = 2,
                        on_result: Callable[[str, float, SpeedComparison], None] | None = None) -> SparseCurve:
    """The whole model: dense prefill time / time with sparse ``names`` layers (default: the MLP).

    One deep copy is pruned, converted, timed side by side against ``model`` and
    restored for each (layout, sparsity); ``model`` itself is never changed.
    ``on_result(layout, sparsity, comparison)`` receives each full comparison.
    """
    names = mlp_linear_names(model) if names is None else list(names)
    blocksize = check_blocks(blocksize, _shapes(arch.prunable_linears(model), names))
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
    from ..pruning.masks import nm_mask

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
