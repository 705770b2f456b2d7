"""The ``prune`` command: one method, one sparsity.

    python -m course_lib prune smollm2-135m --method wanda --sparsity 0.5 --json
    python -m course_lib prune smollm2-135m --method sparsegpt --pattern 2:4
    python -m course_lib prune smollm2-135m --method mlp --sparsity 0.5
    python -m course_lib prune smollm2-135m --method mlp --sparsity 0.25 --save pruned/
    python -m course_lib prune smollm2-135m --method layers --sparsity 0.2 --recover distil --steps 20
    python -m course_lib prune smollm2-135m --method heads --sparsity 0.25 --score weight-norm
    python -m course_lib prune smollm2-135m --method mlp --sparsity 0.25 --recover long

It prints perplexity before/after (course protocol windows), the prune's wall
time and the pruned/dense prefill latency ratio, measured side by side in the
same run, next to its ideal (FLOPs) ratio. ``--recover refit|distil`` (structured
methods) then repairs the pruned model against the dense one and reports the
perplexity after recovery and its seconds (``recover_source`` says which recovery ran:
``--recover distil`` of the cut ``make recover`` builds loads that long recovery when the
machine has it, unless ``--steps`` asks for a short one). Structured methods choose what goes by
the data-aware score of ``recipes.SCORES`` unless ``--score`` names another.
"""
from __future__ import annotations

import copy
import time

from ..core.names import (DEFAULT_STEPS, METHODS, RECOVERY, SCORES, STRUCTURED, check_method, check_recovery,
                          check_score, needs_calibration)
from . import options


def cmd_prune(args) -> dict:
    method, pattern = check_method(args.method, args.pattern)  # the options first: no torch needed
    score = check_score(method, args.score)
    recover = check_recovery(args.recover, args.steps if args.steps is not None else DEFAULT_STEPS)
    if recover != "none" and method not in STRUCTURED:
        raise ValueError(f"--recover {recover} repairs a structured prune ({', '.join(STRUCTURED)}); "
                         f"method {method!r} zeroes single weights. Use --recover none.")
    if recover == "refit" and method == "layers":
        raise ValueError("--recover refit repairs layers whose neurons or heads were removed; "
                         "--method layers removes whole layers, so there is nothing to refit. "
                         "Use --recover distil.")
    from ..core import data, metrics, models
    from ..pruning.masks import check_sparsity
    from ..pruning.recipes import achieved, prune_with
    from ..recover.recipes import recover_with
    from ..runtime import speed

    options.use_threads(args)
    sparsity = check_sparsity(args.sparsity)
    if pattern is not None:
        sparsity = 1 - pattern[0] / pattern[1]
    model, tokenizer = models.load(args.model, device=args.device)
    options.check_lengths(model, args)
    n_calib = args.n_calib if needs_calibration(method, score) or recover != "none" else 0
    windows = data.windows_for(tokenizer, args.model, source=args.source, seq_len=args.seq_len,
                               n_eval=args.n_eval, n_calib=n_calib)
    ppl_before = metrics.perplexity(model, windows.eval)
    long_recovery = _long_recovery(args, model, tokenizer, method, score, sparsity, pattern, recover)
    calib = windows.calib if n_calib else None
    pruned = copy.deepcopy(model)  # the dense model stays, for the side-by-side timing
    started = time.perf_counter()
    if long_recovery is not None:  # the cut the long recovery made, on its own calibration text
        from ..recover import long

        handle = long.cut(pruned, long.texts(tokenizer, args.model, long.LONG), long.LONG)
    else:
        handle = prune_with(pruned, method, sparsity, pattern, calib, score)
    prune_seconds = time.perf_counter() - started
    ppl_pruned = metrics.perplexity(pruned, windows.eval)
    started = time.perf_counter()
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    if long_recovery is not None:
        pruned, record, handles = long_recovery[0], long_recovery[1], []
        pruned.course_name = model.course_name  # loaded from the cache's folder: --save names its base model
        steps = record["plan"]["steps"]
        source = (f"the long recovery (make recover), cached: {steps} steps x {record['plan']['batch_size']} x "
                  f"{record['plan']['seq_len']} tokens of prose and code, built "
                  f"{record['provenance']['measured']} ({record['provenance']['machine']}) in "
                  f"{record['provenance']['seconds']:.0f} s")
    else:
        handles = recover_with(pruned, model, recover, calib, steps=steps,
                               quiet=not getattr(args, "progress", False))
        source = ("" if recover != "distil" else
                  f"short: {steps} step{'' if steps == 1 else 's'} of {calib.shape[1]}-token calibration windows"
                  + (" (the long recovery of this cut is not built here: make recover, or --recover long)"
                     if _is_long_cut(args, method, score, sparsity, pattern) else ""))
    refit_errors = next((h.info["errors"] for h in handles if h.info.get("kind") == "refit"), None)
    recover_seconds = time.perf_counter() - started
    ppl_after = ppl_pruned if recover == "none" else metrics.perplexity(pruned, windows.eval)
    saved = _save(args, pruned, handle, tokenizer)
    comparison = speed.measure_speedup(model, pruned, method, tokens=args.latency_tokens,
                                       runs=args.runs, threads=args.threads)
    params_before = metrics.count_parameters(model)["total"]
    params_after = metrics.count_parameters(pruned)["total"]
    return {
        "model": args.model,
        "method": method,
        "pattern": f"{pattern[0]}:{pattern[1]}" if pattern else None,
        "score": score,
        "sparsity_requested": round(sparsity, 4),
        "sparsity_achieved": round(achieved(model, pruned, method), 4),
        "sparsity_unit": {"heads": "heads removed", "mlp": "MLP neurons removed",
                          "layers": "decoder layers removed"}.get(
            method, "zeros among decoder weights"),
        "perplexity_before": round(ppl_before, 3),
        "perplexity_pruned": round(ppl_pruned, 3),
        "perplexity_after": round(ppl_after, 3),
        "recover": recover,
        "recover_steps": steps if recover in ("distil", "long") else 0,
        "recover_source": source,
        "refit_projections": None if refit_errors is None else
        f"{sum(e['refit'] for e in refit_errors.values())}/{len(refit_errors)}",
        "prune_seconds": round(prune_seconds, 2),
        "recover_seconds": round(recover_seconds, 2),
        "latency_ratio": round(comparison.latency_ratio, 3),
        "ideal_ratio": round(comparison.ideal_latency_ratio, 3),
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


def _is_long_cut(args, method, score, sparsity, pattern) -> bool:
    """Whether this prune is the cut ``make recover`` builds the long recovery of."""
    from ..recover import long

    return (method == "mlp" and score == long.LONG.score and pattern is None and args.model == "smollm2-135m"
            and abs(sparsity - long.LONG.fraction) < 1e-9)


def _long_recovery(args, model, tokenizer, method, score, sparsity, pattern, recover):
    """``(recovered model, record)`` of the long recovery when it applies: ``--recover long``
    (loaded, or built now: ~30 min on 2 cores), or ``--recover distil`` without ``--steps``
    when this machine has built it. Otherwise None."""
    from ..recover import long

    if recover == "long":
        if not _is_long_cut(args, method, score, sparsity, pattern):
            raise ValueError(f"--recover long is the long recovery of one cut: smollm2-135m, --method mlp "
                             f"--sparsity {long.LONG.fraction} with the {long.LONG.score} score "
                             "(make recover builds it); "
                             f"this is {args.model} --method {method} --sparsity {sparsity:g}. Use --recover distil "
                             "--steps N for another cut.")
        import contextlib
        import sys

        with contextlib.redirect_stdout(sys.stderr):  # a build's progress, never into --json's output
            return long.load_or_build(model, tokenizer, args.model, long.LONG, log=_stderr)
    if recover == "distil" and args.steps is None and _is_long_cut(args, method, score, sparsity, pattern):
        return long.load(model, long.LONG)
    return None


def _stderr(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def _save(args, pruned, handle, tokenizer) -> dict:
    """``--save DIR``: a standard checkpoint when every layer was cut alike, else the recipe."""
    if not args.save:
        return {}
    from ..pruning import io

    folder = io.save_pruned(pruned, args.save, handle, tokenizer=tokenizer, compress=args.compress)
    manifest = io.read_manifest(folder)
    saved = {"saved": str(folder),
             "saved_format": ("standard Hugging Face checkpoint" if manifest.get("standard") else
                              "course recipe (load_pruned)" + (", course bitmask" if args.compress else "")),
             "saved_bytes_on_disk": manifest["bytes_on_disk"]}
    if not manifest.get("standard") and not args.compress:  # say why from_pretrained cannot open it
        saved["standard_refused"] = io.standard_problem(pruned)
    return saved


def register(sub, common, eval_args) -> None:
    """Add ``prune`` to the CLI's sub-commands."""
    prune = sub.add_parser("prune", help="prune with one method; perplexity, time, latency ratio")
    common(prune)
    eval_args(prune)
    prune.add_argument("--method", required=True, help=f"one of {', '.join(METHODS)}")
    prune.add_argument("--sparsity", type=options.fraction, default=0.5,
                       help="fraction of weights (heads/mlp: of heads/neurons per layer) to remove")
    prune.add_argument("--pattern", default=None, help="N:M pattern, e.g. 2:4 (overrides --sparsity)")
    prune.add_argument("--score", default=None,
                       help="what decides which units a structured method removes: "
                            + "; ".join(f"{m}: {', '.join(s)}" for m, s in SCORES.items())
                            + " (default: the first, data-aware)")
    prune.add_argument("--save", default=None, metavar="DIR",
                       help="write the pruned model there (a standard checkpoint when every layer "
                            "was cut alike; eval/info DIR open it)")
    prune.add_argument("--compress", action="store_true",
                       help="with --save: sparse weights in the course's bitmask layout (fewer bytes; "
                            "only the course opens it)")
    prune.add_argument("--recover", default="none", choices=RECOVERY,
                       help="after a structured prune: refit (closed-form repair of the output "
                            "projections), distil (refit, then KL distillation from the dense model) "
                            "or long (the long recovery make recover builds: loaded, or built, ~30 min)")
    prune.add_argument("--steps", type=options.int_in(0, 100_000), default=None,
                       help=f"distillation steps for --recover distil (default {DEFAULT_STEPS}; for the "
                            "cut make recover builds, smollm2-135m --method mlp --sparsity 0.25, the "
                            "cached long recovery when this machine has it)")
    prune.set_defaults(run=cmd_prune)
