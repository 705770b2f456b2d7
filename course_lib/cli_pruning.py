"""The pruning commands of the CLI: ``prune`` (one method, one sparsity) and ``bench``.

    python -m course_lib prune smollm2-135m --method wanda --sparsity 0.5 --json
    python -m course_lib prune smollm2-135m --method sparsegpt --pattern 2:4
    python -m course_lib prune smollm2-135m --method mlp --sparsity 0.5
    python -m course_lib bench --out bench          # bench/results.md + results.png

``prune`` prints perplexity before/after (course protocol windows), the prune's
wall time and the pruned/dense prefill latency ratio, measured side by side in
the same run, next to its ideal (FLOPs) ratio.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from . import arch, data, metrics, models, speed
from .pruning.heads import head_importance_weight_norm, least_important_heads, remove_heads
from .pruning.masks import check_sparsity, magnitude_prune, parse_pattern
from .pruning.mlp import least_important_neurons, neuron_importance_weight_norm, remove_neurons
from .pruning.sparsegpt import sparsegpt_prune
from .pruning.undo import PruneHandle
from .pruning.wanda import wanda_prune

UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
STRUCTURED = ("heads", "mlp")
METHODS = UNSTRUCTURED + STRUCTURED
CALIBRATED = ("wanda", "sparsegpt")


def check_method(method: str, pattern=None) -> tuple[str, tuple[int, int] | None]:
    """Validate a method name and its pattern (N:M only for the unstructured methods)."""
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not known: choose one of {', '.join(METHODS)} "
                         "(weights: magnitude/wanda/sparsegpt; structures: heads/mlp).")
    pattern = parse_pattern(pattern)
    if pattern is not None and method in STRUCTURED:
        raise ValueError(f"--pattern {pattern[0]}:{pattern[1]} applies to single weights; method "
                         f"{method!r} removes whole {'heads' if method == 'heads' else 'neurons'}. "
                         "Drop --pattern, or use magnitude/wanda/sparsegpt.")
    return method, pattern


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def heads_request(model: nn.Module, fraction: float, scores=None) -> dict[int, list[int]]:
    """The least important heads, ``fraction`` of each layer's heads.

    ``scores``: a layers x heads importance table (default: output-projection norm,
    ``head_importance_weight_norm``; ``head_importance_contribution`` sees the data).

    With grouped-query attention every KV group must keep as many query heads as
    the others, so the same number goes from every group: round(fraction x
    group size) per group (at least one if fraction > 0, and each group keeps one).
    SmolLM2 (groups of 3): 25% -> 1 per group (33%), 50% -> 2 per group (67%).
    """
    fraction = check_sparsity(fraction)
    shape = arch.attention_shape(model, 0)
    layers = len(arch.decoder_layers(model))
    if any(arch.attention_shape(model, i) != shape for i in range(layers)):
        raise ValueError("layers have different head counts (already pruned?): "
                         "prune heads of a fresh model.")
    if fraction == 0:
        return {}
    if shape.group_size > 1:
        per_group = min(max(_round_half_up(fraction * shape.group_size), 1), shape.group_size - 1)
        count = per_group * shape.n_kv_heads
    else:
        count = min(max(_round_half_up(fraction * shape.n_heads), 1), shape.n_heads - 1)
    scores = head_importance_weight_norm(model) if scores is None else scores
    return least_important_heads(scores, count=count, model=model)


def neurons_request(model: nn.Module, fraction: float, scores=None) -> dict[int, list[int]]:
    """The least important MLP neurons, ``fraction`` of every layer.

    ``scores``: per-layer importances (default: weight norms; ``neuron_importance_activation``
    sees the data).
    """
    scores = neuron_importance_weight_norm(model) if scores is None else scores
    return least_important_neurons(scores, check_sparsity(fraction))


def prune_with(model: nn.Module, method: str, sparsity: float, pattern=None,
               calib: torch.Tensor | None = None) -> PruneHandle:
    """Prune ``model`` in place with one of ``METHODS``; returns the undo handle.

    heads/mlp: ``sparsity`` is the fraction of heads/neurons removed per layer.
    """
    method, pattern = check_method(method, pattern)
    if method in CALIBRATED and calib is None:
        raise ValueError(f"method {method!r} needs calibration windows (calib=windows.calib).")
    if method == "magnitude":
        return magnitude_prune(model, sparsity, pattern=pattern, keep_masks=False)
    if method == "wanda":
        return wanda_prune(model, calib, sparsity, pattern=pattern, keep_masks=False)
    if method == "sparsegpt":
        return sparsegpt_prune(model, calib, sparsity, pattern=pattern, keep_masks=False)
    if method == "heads":
        return remove_heads(model, heads_request(model, sparsity))
    return remove_neurons(model, neurons_request(model, sparsity))


def structure_count(model: nn.Module, method: str) -> int:
    """Total heads (method 'heads') or MLP neurons ('mlp') over all layers."""
    layers = range(len(arch.decoder_layers(model)))
    if method == "heads":
        return sum(arch.attention_shape(model, i).n_heads for i in layers)
    return sum(arch.mlp_width(model, i) for i in layers)


def achieved(dense: nn.Module, pruned: nn.Module, method: str) -> float:
    """Zeros among decoder weights (unstructured), or the fraction of heads/neurons removed."""
    if method in STRUCTURED:
        return 1 - structure_count(pruned, method) / structure_count(dense, method)
    return metrics.total_sparsity(pruned)


def cmd_prune(args) -> dict:
    method, pattern = check_method(args.method, args.pattern)
    sparsity = check_sparsity(args.sparsity)
    if pattern is not None:
        sparsity = 1 - pattern[0] / pattern[1]
    model, tokenizer = models.load(args.model, device=args.device)
    n_calib = args.n_calib if method in CALIBRATED else 0
    windows = data.windows_for(tokenizer, args.model, source=args.source, seq_len=args.seq_len,
                               n_eval=args.n_eval, n_calib=n_calib)
    ppl_before = metrics.perplexity(model, windows.eval)
    pruned = copy.deepcopy(model)  # the dense model stays, for the side-by-side timing
    started = time.perf_counter()
    prune_with(pruned, method, sparsity, pattern, windows.calib if n_calib else None)
    prune_seconds = time.perf_counter() - started
    ppl_after = metrics.perplexity(pruned, windows.eval)
    comparison = speed.measure_speedup(model, pruned, method, tokens=args.latency_tokens,
                                       runs=args.runs, threads=args.threads)
    params_before = metrics.count_parameters(model)["total"]
    params_after = metrics.count_parameters(pruned)["total"]
    return {
        "model": args.model,
        "method": method,
        "pattern": f"{pattern[0]}:{pattern[1]}" if pattern else None,
        "sparsity_requested": round(sparsity, 4),
        "sparsity_achieved": round(achieved(model, pruned, method), 4),
        "sparsity_unit": {"heads": "heads removed", "mlp": "MLP neurons removed"}.get(
            method, "zeros among decoder weights"),
        "perplexity_before": round(ppl_before, 3),
        "perplexity_after": round(ppl_after, 3),
        "prune_seconds": round(prune_seconds, 2),
        "latency_ratio": round(comparison.latency_ratio, 3),
        "ideal_latency_ratio": round(comparison.ideal_latency_ratio, 3),
        "measured_over_ideal_speedup": round(comparison.efficiency, 3),
        "latency_workload": f"prefill 1x{args.latency_tokens}, {args.runs} runs, side by side",
        "parameters_before": params_before,
        "parameters_after": params_after,
        "eval_tokens": windows.eval_tokens,
        "calib_windows": n_calib,
        "device": comparison.measurements["prefill dense"].device,
        "threads": comparison.measurements["prefill dense"].threads,
    }


def cmd_bench(args) -> dict:
    from . import bench

    result = bench.run_bench(args.model, out=args.out, quick=args.quick, threads=args.threads,
                             source=args.source, log=None if args.json else print)
    if args.json:
        return result
    return {"results": result["files"][0], "figure": result["files"][1],
            "checks": "; ".join(f"{c['claim']}: {c['value']} ({'yes' if c['holds'] else 'NO'})"
                                for c in result["checks"]),
            "bench_seconds": round(result["bench_seconds"])}


def register(sub, common, eval_args) -> None:
    """Add ``prune`` and ``bench`` to the CLI's sub-commands."""
    prune = sub.add_parser("prune", help="prune with one method; perplexity, time, latency ratio")
    common(prune)
    eval_args(prune)
    prune.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    prune.add_argument("--sparsity", type=float, default=0.5,
                       help="fraction of weights (heads/mlp: of heads/neurons per layer) to remove")
    prune.add_argument("--pattern", default=None, help="N:M pattern, e.g. 2:4 (overrides --sparsity)")
    prune.set_defaults(run=cmd_prune)

    bench = sub.add_parser("bench", help="speed and quality benchmark -> OUT/results.md, results.png")
    bench.add_argument("model", nargs="?", default="smollm2-135m",
                       help=f"a course model ({', '.join(models.all_names())})")
    bench.add_argument("--threads", type=int, default=2, help="CPU threads (recorded with timings)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--source", default="pydoc", help="text for perplexity/calibration")
    bench.add_argument("--out", default="bench", help="folder for results.md and results.png")
    bench.add_argument("--quick", action="store_true", help="few windows and runs (tests)")
    bench.set_defaults(run=cmd_bench)
