"""The ``prune`` command: one method, one sparsity.

    python -m course_lib prune smollm2-135m --method wanda --sparsity 0.5 --json
    python -m course_lib prune smollm2-135m --method sparsegpt --pattern 2:4
    python -m course_lib prune smollm2-135m --method mlp --sparsity 0.5
    python -m course_lib prune smollm2-135m --method mlp --sparsity 0.25 --save pruned/

It prints perplexity before/after (course protocol windows), the prune's wall
time and the pruned/dense prefill latency ratio, measured side by side in the
same run, next to its ideal (FLOPs) ratio.
"""
from __future__ import annotations

import copy
import time

from ..core import data, metrics, models
from ..pruning import io
from ..pruning.masks import check_sparsity
from ..pruning.recipes import CALIBRATED, METHODS, achieved, check_method, prune_with
from ..runtime import speed
from . import options


def cmd_prune(args) -> dict:
    method, pattern = check_method(args.method, args.pattern)
    sparsity = check_sparsity(args.sparsity)
    if pattern is not None:
        sparsity = 1 - pattern[0] / pattern[1]
    model, tokenizer = models.load(args.model, device=args.device)
    options.check_lengths(model, args)
    n_calib = args.n_calib if method in CALIBRATED else 0
    windows = data.windows_for(tokenizer, args.model, source=args.source, seq_len=args.seq_len,
                               n_eval=args.n_eval, n_calib=n_calib)
    ppl_before = metrics.perplexity(model, windows.eval)
    pruned = copy.deepcopy(model)  # the dense model stays, for the side-by-side timing
    started = time.perf_counter()
    handle = prune_with(pruned, method, sparsity, pattern, windows.calib if n_calib else None)
    prune_seconds = time.perf_counter() - started
    saved = _save(args, pruned, handle, tokenizer)
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
        **saved,
    }


def _save(args, pruned, handle, tokenizer) -> dict:
    """``--save DIR``: a standard checkpoint when every layer was cut alike, else the recipe."""
    if not args.save:
        return {}
    folder = io.save_pruned(pruned, args.save, handle, tokenizer=tokenizer, compress=args.compress)
    manifest = io.read_manifest(folder)
    return {"saved": str(folder),
            "saved_format": ("standard Hugging Face checkpoint" if manifest.get("standard") else
                             "course recipe (load_pruned)" + (", sparse-bitmask" if args.compress else "")),
            "saved_bytes_on_disk": manifest["bytes_on_disk"]}


def register(sub, common, eval_args) -> None:
    """Add ``prune`` to the CLI's sub-commands."""
    prune = sub.add_parser("prune", help="prune with one method; perplexity, time, latency ratio")
    common(prune)
    eval_args(prune)
    prune.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    prune.add_argument("--sparsity", type=options.fraction, default=0.5,
                       help="fraction of weights (heads/mlp: of heads/neurons per layer) to remove")
    prune.add_argument("--pattern", default=None, help="N:M pattern, e.g. 2:4 (overrides --sparsity)")
    prune.add_argument("--save", default=None, metavar="DIR",
                       help="write the pruned model there (a standard checkpoint when every layer "
                            "was cut alike; eval/info DIR open it)")
    prune.add_argument("--compress", action="store_true",
                       help="with --save: sparse weights in the bitmask layout (fewer bytes)")
    prune.set_defaults(run=cmd_prune)
