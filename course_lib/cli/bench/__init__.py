"""The course benchmark: where speed comes from, and what each method costs in quality.

``python -m course_lib bench --out bench`` (``make bench``) writes
``bench/results.md`` and ``bench/results.png`` for the embedded model:

(a) latency of structured removal (heads, MLP neurons), unstructured zeros with a
    dense kernel, and CSR/BSR sparse kernels on the MLP -- each a ratio to the
    dense model *measured side by side in the same run*, next to its ideal;
(b) quality: perplexity and prune time of magnitude / Wanda / SparseGPT at 50%
    and 2:4, and of head / neuron removal;
(c) the single-matrix CSR/BSR speedup curve and its break-even sparsity;
(d) 2:4 sparse tensor cores, measured only where a CUDA GPU is present.

Sections (a)-(c) run on the CPU (the lesson is about this machine). Only
ratios are reported: bare milliseconds drift with the machine's load.

This package splits the work: ``measure`` runs the sections, ``judge`` states the
verdicts, ``report`` writes ``results.md`` and ``plot`` the figure; this module is
the command that runs them in turn (``--render`` rewrites the report and the figure
from ``results.json`` without measuring again, e.g. after ``bench/recovery.py``).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ...core import arch, data, metrics, models
from ...core.progress import bar
from .. import options
from . import judge, measure, report
from .measure import _say
from .plot import plot


# ---------------------------------------------------------------- the whole bench
def run_bench(model_name: str = "smollm2-135m", out: str | Path = "bench", quick: bool = False,
              threads: int = 2, source: str = "pydoc", log=print) -> dict:
    """Run sections (a)-(d); write OUT/results.md and OUT/results.png; return everything as a dict.

    Sections (a)-(c) always run on the CPU; (d) uses a CUDA GPU when there is one.
    """
    cfg = measure.QUICK if quick else measure.FULL
    started = time.perf_counter()
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = measure.machine_info(threads)
    model, tokenizer = models.load(model_name, device="cpu")
    windows = data.windows_for(tokenizer, model_name, source=source, seq_len=cfg.seq_len,
                               n_eval=cfg.n_eval, n_calib=cfg.n_calib)
    blocksize = measure._blocksize(model, cfg.blocksize)

    seconds = {}
    sections = bar(total=4, desc="bench sections", unit="section")
    with torch.no_grad():
        _say(log, "(a) latency, side by side with the dense model")
        tick = time.perf_counter()
        latency = measure.latency_section(model, windows, cfg, threads, blocksize, log)
        seconds["latency"] = time.perf_counter() - tick
        sections.update(1)
        _say(log, "(c) one matrix: CSR/BSR break-even")
        tick = time.perf_counter()
        curve = measure.curve_section(model, cfg, threads, blocksize)
        seconds["curve"] = time.perf_counter() - tick
        sections.update(1)
        _say(log, "(b) quality")
        tick = time.perf_counter()
        quality = measure.quality_section(model, windows, cfg, log)
        seconds["quality"] = time.perf_counter() - tick
        sections.update(1)
    sections.set_description("bench sections: (d) GPU 2:4")
    gpu = measure.gpu_section(model_name, cfg)
    sections.update(1)
    sections.close()
    try:
        machine["load_average_at_end"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass

    result = {
        "model": model_name, "quick": quick, "machine": machine, "config": asdict(cfg),
        "model_info": {"architecture": type(model).__name__,
                       "layers": len(arch.decoder_layers(model)),
                       "flops_shares": metrics.flops_per_token(model, cfg.tokens).shares()},
        "latency": latency["rows"],
        "structured_quality": [
            {"configuration": f"{kind} {fraction:.0%} requested", "achieved": v["achieved"],
             "perplexity": v["perplexity"], "perplexity_calibrated": v["perplexity_calibrated"],
             "speedup": v["result"].prefill_speedup,
             "ideal_speedup": v["result"].ideal_speedup,
             "decode_speedup": v["result"].decode_speedup}
            for (kind, fraction), v in latency["structured"].items()],
        "quality": quality,
        "curve": curve.as_dict(),
        "model_curve": latency["model_curve"].as_dict(),
        "gpu_2_4": gpu,
        "checks": judge.checks(latency, cfg),
        "gap_mlp_50": latency["structured"].get(("mlp", 0.5), {}).get("gap"),
        "bench_seconds": time.perf_counter() - started,
        "section_seconds": seconds,
    }
    report.write_markdown(result, out)
    plot(result, out / "results.png")
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    result["files"] = [str(out / "results.md"), str(out / "results.png"), str(out / "results.json")]
    _say(log, f"wrote {out / 'results.md'} and {out / 'results.png'} "
              f"in {result['bench_seconds']:.0f} s")
    return result


def render(out: str | Path = "bench") -> Path:
    """Rewrite OUT/results.md and OUT/results.png from OUT/results.json (no re-measuring)."""
    out = Path(out)
    result = json.loads((out / "results.json").read_text())
    report.write_markdown(result, out)
    plot(result, out / "results.png")
    return out / "results.md"


# ---------------------------------------------------------------- the command
def cmd_bench(args) -> dict:
    if args.render:
        results = Path(args.out) / "results.json"
        if not results.is_file():
            raise ValueError(f"--render rewrites the report from {results}, which does not exist: "
                             f"run `python -m course_lib bench --out {args.out}` first.")
        return {"results": str(render(args.out)), "figure": str(Path(args.out) / "results.png")}
    result = run_bench(args.model, out=args.out, quick=args.quick, threads=args.threads,
                             source=args.source, log=None if args.json else print)
    if args.json:
        return result
    return {"results": result["files"][0], "figure": result["files"][1],
            "checks": "; ".join(f"{c['claim']}: {c['value']} ({'yes' if c['holds'] else 'NO'})"
                                for c in result["checks"]),
            "bench_seconds": round(result["bench_seconds"])}
