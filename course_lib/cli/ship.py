"""The ``ship`` command: dense -> pruned -> recovered -> int8 -> ONNX Runtime, every stage measured.

    python -m course_lib ship smollm2-135m --json
    python -m course_lib ship smollm2-135m --fraction 0.25 --bits 4 --out shipped/
    python -m course_lib ship tiny-gemma3 --recipe heads --fraction 0.5
    python -m course_lib ship tiny-gpt2 --shipped nbits               # weight-only 8-bit

Prints one JSON object with ``--json``: ``{"model": ..., "stages": [{"stage",
"perplexity", "prefill_speedup", "decode_speedup", "disk_bytes", "seconds",
"tokens_per_s"}, ...]}``. The first stage is the dense fp32 PyTorch model, the last
the shipped one (ONNX Runtime: ``--shipped int8``, SmoothQuant then int8 weights and
activations, or ``--shipped nbits``, 8- or 4-bit weight-only MatMulNBits; the default ``auto``
takes int8 for the families whose smoothing folds the course has (Llama, Mistral, Qwen2) and
nbits for the others; the JSON's ``shipped`` names the method taken, ``shipped_choice`` why, and
``shipped_note`` what the file holds); speedups are against the dense
model, measured interleaved in the same run (``runtime.pipeline``); ``tokens_per_s``
(every stage) is greedy generation at batch 1 and 8. Perplexity is measured on the
course protocol's evaluation windows (16 x 256 of pydoc prose) and, as ``perplexity_heldout``,
on held-out code (``--n-heldout`` windows of ``python-source``). ``MODEL`` may be a folder
written by ``prune --save``.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..core.names import SHIPPED, SMOOTH_ALPHA, STRUCTURED, check_alpha, check_recipe
from . import options

FRACTION = 0.0625  # removed per layer (or of the layers): on SmolLM2 the largest cut whose shipped int8
# file stays within 1.25x dense perplexity on prose and on held-out code (bench/results.md, "ship")
KEEP_FLOAT = 8  # projections with the largest activation outliers kept float in PyTorch int8 (lesson 6)


def alpha(text: str) -> float:
    """``--alpha``: SmoothQuant's migration strength, a number in [0, 1]."""
    try:
        return check_alpha(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the migration strength is a number in [0, 1]") from None


def bits(text: str) -> int:
    """``--bits``: ONNX Runtime's MatMulNBits takes 4 or 8."""
    if text not in ("4", "8"):
        raise argparse.ArgumentTypeError(f"{text!r}: ONNX Runtime's MatMulNBits takes 4 or 8 bits; give 4 or 8")
    return int(text)


def choose_shipped(asked: str, bits: int, model_type: str | None) -> tuple[str, str]:
    """``--shipped`` -> (the method taken, why): ``auto`` takes int8 where the smoothing folds exist."""
    from ..runtime.smooth import SMOOTHABLE

    if asked != "auto":
        return asked, "asked for"
    if bits != 8:
        return "nbits", f"auto: --bits {bits} is weight-only (int8 GEMMs are 8-bit)"
    if model_type in SMOOTHABLE:
        return "int8", f"auto: int8 GEMMs (SmoothQuant folds exist for {model_type})"
    return "nbits", f"auto: weight-only (no SmoothQuant folds for model_type {model_type!r})"


def cmd_ship(args) -> dict:
    check_recipe(args.recipe)  # the options first: no torch needed
    if args.shipped == "int8" and args.bits != 8:
        raise ValueError(f"--bits {args.bits}: --shipped int8 is 8-bit (int8 weights and activations).")
    from ..core import data, timing
    from ..runtime import pipeline, serve
    from .main import load  # the command line's loader: course names, hub ids and saved folders

    options.use_threads(args)
    model, tokenizer = load(args.model, device="cpu")
    options.check_lengths(model, args)
    name = getattr(model, "course_name", args.model)
    windows = data.windows_for(tokenizer, name, source=args.source,
                               seq_len=args.seq_len, n_eval=args.n_eval, n_calib=args.n_calib)
    heldout = data.code_windows(tokenizer, name, args.n_heldout, args.seq_len) if args.n_heldout else None
    method, choice = choose_shipped(args.shipped, args.bits, getattr(model.config, "model_type", None))
    with tempfile.TemporaryDirectory(prefix="course-ship-") as tmp, timing.thread_count(args.threads):
        folder = Path(args.out).expanduser() if args.out else Path(tmp)
        shipped = pipeline.run(model, windows, folder, fraction=args.fraction, keep_float=args.keep_float,
                               bits=args.bits, recover=args.recover, log=lambda *_: None, recipe=args.recipe,
                               shipped=method, alpha=args.alpha, heldout=heldout,
                               tokens=args.latency_tokens, runs=args.runs, threads=args.threads,
                               served="all")
        rows = [row.as_dict() for row in shipped.rows]
    result = {"model": args.model, "recipe": args.recipe, "fraction": args.fraction, "bits": args.bits,
              "shipped": method, "shipped_choice": choice,
              "shipped_note": pipeline.shipped_note(method, args.bits, args.alpha),
              "stages": rows, "eval_tokens": windows.eval_tokens,
              "heldout": f"python-source {args.n_heldout} x {args.seq_len}" if heldout is not None else None,
              "workload": f"prefill 1x{args.latency_tokens}; decode 16 tokens after 32; greedy generation of "
                          f"16 tokens after 32 at batch {' and '.join(map(str, serve.SERVE_BATCHES))} "
                          "(every stage); interleaved",
              "threads": args.threads}
    if args.out:
        result["files"] = str(folder)
    return result


def register(sub, common, eval_args) -> None:
    parser = sub.add_parser("ship", help="prune, recover, quantize, export to ONNX Runtime: each stage measured")
    common(parser)
    parser.add_argument("--recipe", default="mlp",
                        help=f"structured recipe ({', '.join(STRUCTURED)}), by its data-aware score")
    parser.add_argument("--fraction", type=options.fraction, default=FRACTION,
                        help="fraction removed: of every layer's MLP neurons (mlp) or heads (heads), "
                             "or of the layers (layers)")
    parser.add_argument("--no-recover", dest="recover", action="store_false",
                        help="skip the refit stage")
    parser.add_argument("--bits", type=bits, default=8, help="ONNX Runtime weight bits (4 or 8; nbits only)")
    parser.add_argument("--shipped", choices=("auto", *SHIPPED), default="auto",
                        help="the shipped file: int8 (SmoothQuant, then int8 weights and activations: faster "
                             "prefill), nbits (weight-only MatMulNBits), or auto (default: int8 where the "
                             "family has SmoothQuant folds, nbits otherwise)")
    parser.add_argument("--alpha", type=alpha, default=SMOOTH_ALPHA,
                        help="SmoothQuant migration strength in [0, 1] (--shipped int8)")
    parser.add_argument("--keep-float", type=options.int_in(0, 100_000), default=KEEP_FLOAT,
                        help="projections of largest activation outliers kept float in the PyTorch int8 stage")
    eval_args(parser)  # --source, --seq-len, --n-eval, --n-calib, --latency-tokens, --runs
    parser.add_argument("--n-heldout", type=options.int_in(0, 10_000), default=8,
                        help="held-out code windows (python-source) measured on every stage; 0: none")
    parser.set_defaults(n_calib=8)  # the protocol's 16 x 256 evaluation; 8 calibration windows
    parser.add_argument("--out", default=None, metavar="DIR", help="keep every stage's file in DIR")
    parser.set_defaults(run=cmd_ship)
