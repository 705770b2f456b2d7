"""What the shipped file should be: weight-only 8-bit (MatMulNBits) or int8 GEMMs after SmoothQuant.

    python bench/shipped_int8.py                 # SmolLM2, ship's pruned + refitted model
    python bench/shipped_int8.py --dense         # the same files made from the dense model

Builds the model ``ship`` builds (lesson 6's MLP cut, ``FRACTION`` of every layer's neurons,
refitted, on ship's calibration windows: 8 x 128 from the start of the pydoc text), exports it,
and measures each candidate file against the dense float32 PyTorch model in one run:
perplexity on the course protocol (16 x 256 windows from the middle of the pydoc text) and on
held-out code (8 x 256 windows of Python source), prefill of 1 x 128 tokens and decode (16
tokens after 32) interleaved with dense (``pipeline.latencies``: paired ratios, median and
interquartile range), and the file's bytes against dense's safetensors file.

Candidates: ``fp32`` (float32 ONNX), ``nbits8`` (what ship ships by default), ``dynamic``
(quantize_dynamic as it comes: per-tensor weights and activations, no smoothing), ``int8``
(``smooth`` with ALPHA, then per-channel int8 weights and int8 activations) and ``int8+nbits
down`` (the same with every down_proj kept in MatMulNBits, whose activations get a scale per
block of 32). Prints one JSON object; writes nothing but temporary files.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from course_lib.cli import ship  # noqa: E402
from course_lib.core import data, models, timing  # noqa: E402
from course_lib.runtime import export, pipeline, smooth, store  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dense", action="store_true", help="quantize the dense model, not ship's pruned one")
    parser.add_argument("--alpha", type=float, default=smooth.ALPHA)
    parser.add_argument("--runs", type=int, default=7, help="paired prefill runs")
    parser.add_argument("--decode-runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", default="fp32,nbits8,dynamic,int8,int8+nbits down")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, tokenizer = models.load(args.model, device="cpu")
    ship_windows = data.windows_for(tokenizer, args.model, seq_len=128, n_eval=8, n_calib=8)  # ship's defaults
    protocol = data.windows_for(tokenizer, args.model, seq_len=256, n_eval=16, n_calib=0).eval
    code = data.windows_for(tokenizer, args.model, source="python-source", seq_len=256, n_eval=8, n_calib=0).eval
    last = model
    if not args.dense:
        pruned = pipeline.structured_prune(model, ship_windows.calib, ship.FRACTION, "mlp")
        last = pipeline.recovered_copy(pruned, model, ship_windows.calib)
    wanted = args.candidates.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        tmp = Path(tmp)
        dense_file = store.save_safetensors(model, tmp / "dense.safetensors")
        fp32 = export.export_onnx(last, tmp / "fp32.onnx")
        smoothed = smooth.smoothed_copy(last, smooth.channel_peaks(last, ship_windows.calib), args.alpha)
        fp32_smoothed = export.export_onnx(smoothed, tmp / "smoothed.onnx")
        downs = tuple(n for n in export.matmul_nodes(fp32_smoothed) if "down_proj" in n)
        makers = {
            "fp32": lambda: fp32,
            "nbits8": lambda: export.quantize_onnx(fp32, tmp / "nbits8.onnx", "nbits", 8),
            "dynamic": lambda: export.quantize_onnx(fp32, tmp / "dynamic.onnx", "dynamic", 8),
            "int8": lambda: export.quantize_onnx(fp32_smoothed, tmp / "int8.onnx", "int8", 8),
            "int8+nbits down": lambda: export.quantize_onnx(fp32_smoothed, tmp / "int8-down.onnx", "int8", 8,
                                                            blockwise=downs),
        }
        files = {label: makers[label]() for label in wanted}
        stages = {"dense": model, **{label: export.OrtModel(path, args.threads) for label, path in files.items()}}
        rows = {label: {"perplexity": pipeline.perplexity(stage, protocol), "code": pipeline.perplexity(stage, code)}
                for label, stage in stages.items()}
        with timing.thread_count(args.threads):
            prefill, decode = pipeline.latencies(stages, model.config.vocab_size, tokens=128, runs=args.runs,
                                                 decode_runs=args.decode_runs, threads=args.threads)
        dense_bytes = os.path.getsize(dense_file)
        for label, row in rows.items():
            p, d = timing.speedup(prefill["dense"], prefill[label]), timing.speedup(decode["dense"], decode[label])
            size = dense_bytes if label == "dense" else os.path.getsize(files[label])
            row.update(perplexity_ratio=round(row["perplexity"] / rows["dense"]["perplexity"], 3),
                       code_ratio=round(row["code"] / rows["dense"]["code"], 3),
                       prefill=[round(p.median, 2), round(p.low, 2), round(p.high, 2)],
                       decode=[round(d.median, 2), round(d.low, 2), round(d.high, 2)],
                       megabytes=round(size / 1e6, 1), smaller=round(dense_bytes / size, 2))
    load = os.getloadavg()[0]
    print(json.dumps({"model": args.model, "source_model": "dense" if args.dense else
                      f"ship's: MLP {ship.FRACTION:g} removed, refitted", "alpha": args.alpha,
                      "threads": args.threads, "load_average_at_end": round(load, 2),
                      "seconds": round(time.perf_counter() - started, 1), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
