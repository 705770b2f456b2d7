"""The benchmark's measurements: (a) latency side by side, (b) quality, (c) the CSR/BSR
break-even of one matrix, (d) 2:4 on a GPU.

Every section returns what it measured; ``judge`` states the verdicts, ``report`` and
``plot`` write them. Sections (a)-(c) run on the CPU (the lesson is about this machine).
"""
from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import dataclass

import torch
import transformers

from ...core import arch, metrics, models, provenance
from ...pruning.heads import head_importance_contribution, remove_heads
from ...pruning.masks import magnitude_prune
from ...pruning.mlp import neuron_importance_activation, remove_neurons
from ...pruning.recipes import heads_request, importance, neurons_request, prune_with, structure_count
from ...runtime import sparse, speed


@dataclass(frozen=True)
class BenchConfig:
    tokens: int = 128            # prefill length timed
    runs: int = 5                # timed runs per comparison (after warm-up)
    warmup: int = 1              # per comparison; the models are already warm after the first
    decode_tokens: int = 8       # per-token decode timed for the structured rows
    decode_context: int = 64
    seq_len: int = 256           # course protocol windows
    n_eval: int = 16
    n_calib: int = 32
    structured: tuple = (0.25, 0.5)
    sparse: tuple = (0.5, 0.7, 0.9, 0.95)
    curve: tuple = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
    curve_runs: int = 20
    blocksize: int = 32


FULL = BenchConfig()
QUICK = BenchConfig(tokens=32, runs=2, warmup=1, decode_tokens=2, decode_context=16, seq_len=64,
                    n_eval=2, n_calib=4, sparse=(0.5, 0.9), curve=(0.5, 0.9), curve_runs=3)


def machine_info(threads: int) -> dict:
    """What the numbers were measured on: they mean nothing without it."""
    info = {"cpu": provenance.cpu(), "logical_cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _blocksize(model, wanted: int) -> int:
    """The BSR block side fitting every MLP matrix (``sparse.blocksize_for``; else they are padded)."""
    shapes = [tuple(arch.weight_matrix(m).shape) for name, m in arch.prunable_linears(model).items()
              if name in set(sparse.mlp_linear_names(model))]
    return sparse.blocksize_for(shapes, wanted)


def _say(log, text: str) -> None:
    if log:
        log(text)


# ---------------------------------------------------------------- (a) latency
def latency_section(model, windows, cfg: BenchConfig, threads: int, blocksize, log) -> dict:
    rows, structured = [], {}
    twin = copy.deepcopy(model)
    timing_args = dict(tokens=cfg.tokens, runs=cfg.runs, warmup=cfg.warmup, threads=threads)

    # Data-aware importances, from the calibration windows (never the evaluated ones).
    calibrated = {"heads": head_importance_contribution(model, windows.calib),
                  "mlp": neuron_importance_activation(model, windows.calib)}
    for kind, request, remove in (("heads", heads_request, remove_heads),
                                  ("mlp", neurons_request, remove_neurons)):
        for fraction in cfg.structured:
            handle = remove(twin, request(twin, fraction, calibrated[kind]))  # same amount
            try:
                ppl_calibrated = metrics.perplexity(twin, windows.eval)
            finally:
                handle.restore()
            handle = remove(twin, request(twin, fraction, importance(twin, kind, "weight-norm")))
            try:
                done = 1 - structure_count(twin, kind) / structure_count(model, kind)
                label = f"{'heads' if kind == 'heads' else 'MLP neurons'} removed {done:.0%}"
                result = speed.measure_speedup(model, twin, label, decode_tokens=cfg.decode_tokens,
                                               decode_context=cfg.decode_context, **timing_args)
                ppl = metrics.perplexity(twin, windows.eval)
                gap = speed.explain_gap(metrics.flops_per_token(model, cfg.tokens),
                                        metrics.flops_per_token(twin, cfg.tokens),
                                        result.prefill_speedup, result.decode_speedup)
            finally:
                handle.restore()
            structured[(kind, fraction)] = dict(result=result, perplexity=ppl, achieved=done, gap=gap,
                                                perplexity_calibrated=ppl_calibrated)
            rows.append(_row(label, "structured (smaller dense matrices)", result))
            _say(log, f"  {label}: speedup {result.prefill_speedup:.2f}x (ideal {result.ideal_speedup:.2f}x)")

    handle = magnitude_prune(twin, 0.5, keep_masks=False)
    try:
        result = speed.measure_speedup(model, twin, "unstructured 50%", **timing_args)
    finally:
        handle.restore()
    rows.append(_row("unstructured 50% zeros, dense kernel", "zeros in dense storage", result))
    _say(log, f"  unstructured 50% dense kernel: speedup {result.prefill_speedup:.2f}x")
    del twin

    layouts = ("csr", "bsr") if blocksize else ("csr",)

    def on_result(layout, sparsity, comparison):
        what = ("CSR on MLP (magnitude per row)" if layout == "csr"
                else f"BSR {blocksize}x{blocksize} on MLP (block magnitude)")
        rows.append(_row(f"{layout.upper()} {sparsity:.0%} on MLP layers", what, comparison))
        _say(log, f"  {layout} {sparsity:.0%}: speedup {comparison.prefill_speedup:.2f}x "
                  f"(ideal {comparison.ideal_speedup:.2f}x)")

    curve = sparse.sparse_model_ratios(model, cfg.sparse, layouts, cfg.tokens, blocksize or 32,
                                      runs=cfg.runs, warmup=cfg.warmup, threads=threads,
                                      on_result=on_result)
    return {"rows": rows, "structured": structured, "model_curve": curve}


def _row(label: str, what: str, c: speed.SpeedComparison) -> dict:
    return {"configuration": label, "what": what, "latency_ratio": c.latency_ratio,
            "ideal_latency_ratio": c.ideal_latency_ratio, "speedup": c.prefill_speedup,
            "ideal_speedup": c.ideal_speedup, "measured_over_ideal": c.efficiency,
            "decode_ratio": None if c.decode_speedup is None else 1 / c.decode_speedup,
            "runs": c.measurements["prefill dense"].runs}


# ---------------------------------------------------------------- (b) quality
def quality_section(model, windows, cfg: BenchConfig, log) -> list[dict]:
    rows = [{"method": "dense", "sparsity": "0%", "perplexity": metrics.perplexity(model, windows.eval),
             "prune_seconds": 0.0, "achieved": 0.0}]
    _say(log, f"  dense: perplexity {rows[0]['perplexity']:.2f}")
    for method in ("magnitude", "wanda", "sparsegpt"):
        for pattern in (None, "2:4"):
            started = time.perf_counter()
            handle = prune_with(model, method, 0.5, pattern, windows.calib)
            seconds = time.perf_counter() - started
            try:
                ppl = metrics.perplexity(model, windows.eval)
                achieved = metrics.total_sparsity(model)
            finally:
                handle.restore()
            rows.append({"method": method, "sparsity": pattern or "50%", "perplexity": ppl,
                         "prune_seconds": seconds, "achieved": achieved})
            _say(log, f"  {method} {pattern or '50%'}: perplexity {ppl:.2f}, {seconds:.1f} s")
    return rows


# ---------------------------------------------------------------- (c) one matrix
def curve_section(model, cfg: BenchConfig, threads: int, blocksize) -> sparse.SparseCurve:
    """CSR (and BSR) speedup against sparsity on the first MLP matrix, side by side with dense."""
    names = sparse.mlp_linear_names(model)
    weight = arch.weight_matrix(arch.prunable_linears(model)[names[0]])
    layouts = ("csr", "bsr") if blocksize else ("csr",)
    return sparse.sparse_layer_ratios(weight, cfg.curve, cfg.tokens, layouts, blocksize or 32,
                                      runs=cfg.curve_runs, threads=threads)


# ---------------------------------------------------------------- (d) 2:4 on a GPU
def gpu_section(model_name: str, cfg: BenchConfig) -> dict:
    reason = sparse.semi_structured_support("cuda")
    if reason:
        return {"measured": False, "note": "not measured here (no CUDA)" if not torch.cuda.is_available()
                else f"not measured here ({reason})"}
    try:
        layer = sparse.semi_structured_layer_ratio(tokens=cfg.tokens, dtype=torch.float16)
        gpu_model, _ = models.load(model_name, device="cuda", dtype=torch.float16)
        magnitude_prune(gpu_model, pattern="2:4", keep_masks=False)
        whole = sparse.semi_structured_model_speedup(gpu_model, tokens=cfg.tokens)
        return {"measured": True, "device": torch.cuda.get_device_name(0), "layer_speedup": layer,
                "model_speedup": whole.prefill_speedup, "model_ideal_speedup": whole.ideal_speedup}
    except Exception as err:  # a GPU without cuSPARSELt/CUTLASS support: report, do not crash
        return {"measured": False, "note": f"failed on this GPU: {type(err).__name__}: {err}"}
