"""The ``ship`` command: dense -> pruned -> recovered -> int8 -> ONNX Runtime, every stage measured.

    python -m course_lib ship smollm2-135m --json
    python -m course_lib ship smollm2-135m --fraction 0.25 --bits 4

Prints one JSON object ``{"model": ..., "stages": [{"stage", "perplexity",
"prefill_speedup", "decode_speedup", "disk_bytes", "seconds"}, ...]}``: the first
stage is the dense fp32 PyTorch model, the last the shipped one; speedups are
against the dense model, measured interleaved in the same run.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..core import data, models
from ..pruning.masks import check_sparsity
from ..teaching import pipeline

RECIPES = ("mlp",)  # structured MLP neuron removal: the best structured recipe the course measured


def cmd_ship(args) -> dict:
    if args.recipe not in RECIPES:
        raise ValueError(f"--recipe {args.recipe!r} is unknown: the pipeline ships {RECIPES} "
                         "(MLP neurons removed by activation score).")
    fraction = check_sparsity(args.fraction)
    if args.bits not in (4, 8):
        raise ValueError(f"--bits {args.bits}: ONNX Runtime's MatMulNBits takes 4 or 8.")
    model, tokenizer = models.load(args.model, device="cpu")
    windows = data.windows_for(tokenizer, args.model, source=args.source, seq_len=args.seq_len,
                               n_eval=args.n_eval, n_calib=args.n_calib)
    with tempfile.TemporaryDirectory(prefix="course-ship-") as tmp:
        folder = Path(args.out) if args.out else Path(tmp)
        shipped = pipeline.run(model, windows, folder, fraction=fraction, keep_float=args.keep_float,
                               bits=args.bits, tokens=args.latency_tokens, runs=args.runs,
                               threads=args.threads, log=lambda *_: None)
    return {"model": args.model, "recipe": args.recipe, "fraction": fraction,
            "stages": [row.as_dict() for row in shipped.rows],
            "workload": f"prefill 1x{args.latency_tokens}, decode 16 tokens after 32, interleaved",
            "threads": args.threads}


def register(sub, common) -> None:
    parser = sub.add_parser("ship", help="prune, recover, quantize, export: each stage measured")
    common(parser)
    parser.add_argument("--recipe", default="mlp", help=f"structured recipe ({', '.join(RECIPES)})")
    parser.add_argument("--fraction", type=float, default=pipeline.DEFAULT_FRACTION,
                        help="fraction of MLP neurons removed per layer")
    parser.add_argument("--bits", type=int, default=8, help="ONNX Runtime weight bits (4 or 8)")
    parser.add_argument("--keep-float", type=int, default=8,
                        help="projections with the largest activation outliers kept float in PyTorch int8")
    parser.add_argument("--source", default="pydoc", help="pydoc (offline), wikitext or a .txt path")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--n-eval", type=int, default=8, help="evaluation windows")
    parser.add_argument("--n-calib", type=int, default=8, help="calibration windows")
    parser.add_argument("--latency-tokens", type=int, default=128, help="prefill length timed")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after warm-up")
    parser.add_argument("--out", default=None, help="keep the stage files in this folder")
    parser.set_defaults(run=cmd_ship)
