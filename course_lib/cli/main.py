"""The course's command line: ``python -m course_lib {info,eval,prune,ship,bench} MODEL``.

Every command prints a readable summary, or one JSON object with ``--json``.

Parsing imports nothing heavy: the options are declared here and in the light
command modules (``prune``, ``ship``), from names that need no torch
(``core.names``, ``models.all_names``), so ``--help`` and a bad option answer at
once. torch, transformers and the runtimes are imported by the command that runs.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from ..core import models
from . import options, prune, ship


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="smollm2-135m",
                        help=f"a course model ({', '.join(models.all_names())}), a hub id, "
                             "or a folder saved by prune --save")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--threads", type=options.THREADS, default=2,
                        help="CPU threads (recorded with timings), 1..1024")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="pydoc", help="pydoc (offline), wikitext or a .txt path")
    parser.add_argument("--seq-len", type=options.SEQ_LEN, default=256, help="window length, tokens")
    parser.add_argument("--n-eval", type=options.WINDOWS, default=16, help="evaluation windows")
    parser.add_argument("--n-calib", type=options.WINDOWS, default=32, help="calibration windows")
    parser.add_argument("--latency-tokens", type=options.TOKENS, default=128, help="prefill length timed")
    parser.add_argument("--runs", type=options.RUNS, default=5, help="timed runs after warm-up")


def load(name: str, device=None):
    """A course model, a hub id, or a saved folder (course recipe or standard checkpoint)."""
    from ..pruning import io

    if (io.Path(name).expanduser() / io.MANIFEST).is_file():
        return io.load_pruned(io.Path(name).expanduser(), device=device)
    return models.load(name, device=device)


def model_info(model) -> dict:
    from ..core import arch, metrics

    config = model.config
    flops = metrics.flops_per_token(model)
    shape = arch.attention_shape(model, 0)
    return {
        "model": getattr(model, "course_name", config.name_or_path),
        "architecture": type(model).__name__,
        "layers": len(arch.decoder_layers(model)),
        "heads": shape.n_heads,
        "kv_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden": config.hidden_size,
        "mlp_width": arch.mlp_width(model, 0),
        "vocab": config.vocab_size,
        "parameters": metrics.count_parameters(model),
        "flops_per_token": {**{k: v for k, v in flops.__dict__.items()}, "total": flops.total},
        "flops_shares": {k: round(v, 4) for k, v in flops.shares().items()},
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": next(model.parameters()).device.type,
    }


def cmd_info(args) -> dict:
    options.use_threads(args)
    model, _ = load(args.model, device=args.device)
    return model_info(model)


def cmd_eval(args) -> dict:
    from ..core import data, metrics, timing

    options.use_threads(args)
    started = time.perf_counter()
    model, tokenizer = load(args.model, device=args.device)
    load_seconds = time.perf_counter() - started
    options.check_lengths(model, args)
    windows = data.windows_for(tokenizer, getattr(model, "course_name", args.model),
                               source=args.source, seq_len=args.seq_len, n_eval=args.n_eval, n_calib=0)
    device = next(model.parameters()).device.type
    with timing.thread_count(args.threads):
        ppl = metrics.perplexity(model, windows.eval)
        latency = timing.prefill_latency(model, tokens=args.latency_tokens, runs=args.runs,
                                         threads=args.threads, device=device)
    return {
        "model": args.model,
        "load_seconds": round(load_seconds, 2),
        "perplexity": round(ppl, 3),
        "eval_tokens": windows.eval_tokens,
        "eval_source": args.source,
        "latency_ms_median": round(latency.median_ms, 2),
        "latency_ms_iqr": round(latency.iqr_ms, 2),
        "latency_runs": latency.runs,
        "latency_workload": f"prefill 1x{args.latency_tokens}",
        "device": latency.device,
        "threads": latency.threads,
    }


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(prog="python -m course_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="configuration, parameters and FLOPs per token")
    _common(info)
    info.set_defaults(run=cmd_info)
    evaluate = sub.add_parser("eval", help="perplexity on the default eval set and prefill latency")
    _common(evaluate)
    _eval_args(evaluate)
    evaluate.set_defaults(run=cmd_eval)
    prune.register(sub, _common, _eval_args)
    ship.register(sub, _common, _eval_args)
    _bench_args(sub)
    return parser


def _bench_args(sub) -> None:
    """``bench``'s options (declared here: ``cli.bench`` imports the benchmark's whole stack)."""
    bench = sub.add_parser("bench", help="speed and quality benchmark -> OUT/results.md, results.png")
    bench.add_argument("model", nargs="?", default="smollm2-135m",
                       help=f"a course model ({', '.join(models.all_names())})")
    bench.add_argument("--threads", type=options.THREADS, default=2,
                       help="CPU threads (recorded with timings), 1..1024")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--source", default="pydoc", help="text for perplexity/calibration")
    bench.add_argument("--out", default="bench", help="folder for results.md and results.png")
    bench.add_argument("--quick", action="store_true", help="few windows and runs (tests)")
    bench.add_argument("--render", action="store_true",
                       help="only rewrite results.md and results.png from OUT/results.json (no measuring)")
    bench.set_defaults(run=lambda args: importlib.import_module(".bench", __package__).cmd_bench(args))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # a bad option (one line printed, code 2) or --help (0)
        return stop.code
    from ..core import progress

    try:
        with progress.quiet(args.json):  # --json: stdout and stderr carry no progress bars
            result = args.run(args)
    except (models.ModelNotAvailableError, ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _print(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
