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
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from ..core import arch, data, metrics, models
from ..core.progress import bar
from ..runtime import sparse, speed
from ..pruning.recipes import heads_request, neurons_request, prune_with, structure_count
from ..pruning.masks import magnitude_prune
from ..pruning.heads import head_importance_contribution, remove_heads
from ..pruning.mlp import neuron_importance_activation, remove_neurons


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
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        info["load_average_at_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _blocksize(model, wanted: int) -> int | None:
    """The largest of wanted, 16, 8, 4 dividing every MLP matrix (None: BSR impossible)."""
    shapes = [tuple(arch.weight_matrix(m).shape) for name, m in arch.prunable_linears(model).items()
              if name in set(sparse.mlp_linear_names(model))]
    for b in (wanted, 16, 8, 4):
        if all(r % b == 0 and c % b == 0 for r, c in shapes):
            return b
    return None


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
            handle = remove(twin, request(twin, fraction))
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


# ---------------------------------------------------------------- the whole bench
def run_bench(model_name: str = "smollm2-135m", out: str | Path = "bench", quick: bool = False,
              threads: int = 2, source: str = "pydoc", log=print) -> dict:
    """Run sections (a)-(d); write OUT/results.md and OUT/results.png; return everything as a dict.

    Sections (a)-(c) always run on the CPU; (d) uses a CUDA GPU when there is one.
    """
    cfg = QUICK if quick else FULL
    started = time.perf_counter()
    torch.set_num_threads(threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(threads)
    model, tokenizer = models.load(model_name, device="cpu")
    windows = data.windows_for(tokenizer, model_name, source=source, seq_len=cfg.seq_len,
                               n_eval=cfg.n_eval, n_calib=cfg.n_calib)
    blocksize = _blocksize(model, cfg.blocksize)

    seconds = {}
    sections = bar(total=4, desc="bench sections", unit="section")
    with torch.no_grad():
        _say(log, "(a) latency, side by side with the dense model")
        tick = time.perf_counter()
        latency = latency_section(model, windows, cfg, threads, blocksize, log)
        seconds["latency"] = time.perf_counter() - tick
        sections.update(1)
        _say(log, "(c) one matrix: CSR/BSR break-even")
        tick = time.perf_counter()
        names = sparse.mlp_linear_names(model)
        weight = arch.weight_matrix(arch.prunable_linears(model)[names[0]])
        layouts = ("csr", "bsr") if blocksize else ("csr",)
        curve = sparse.sparse_layer_ratios(weight, cfg.curve, cfg.tokens, layouts, blocksize or 32,
                                          runs=cfg.curve_runs, threads=threads)
        seconds["curve"] = time.perf_counter() - tick
        sections.update(1)
        _say(log, "(b) quality")
        tick = time.perf_counter()
        quality = quality_section(model, windows, cfg, log)
        seconds["quality"] = time.perf_counter() - tick
        sections.update(1)
    sections.set_description("bench sections: (d) GPU 2:4")
    gpu = gpu_section(model_name, cfg)
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
        "checks": checks(latency, cfg),
        "gap_mlp_50": latency["structured"].get(("mlp", 0.5), {}).get("gap"),
        "bench_seconds": time.perf_counter() - started,
        "section_seconds": seconds,
    }
    _write_keeping_appended(out / "results.md", to_markdown(result) + _recovery_section(out)
                            + _kept_sections(out / "results.md"))
    plot(result, out / "results.png")
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    result["files"] = [str(out / "results.md"), str(out / "results.png"), str(out / "results.json")]
    _say(log, f"wrote {out / 'results.md'} and {out / 'results.png'} "
              f"in {result['bench_seconds']:.0f} s")
    return result


APPENDED = "<!-- sections below: measured by bench/explorer_budget.py and bench/owl_allocation.py -->"


def _write_keeping_appended(path: Path, text: str) -> None:
    """Write results.md, keeping the sections other bench scripts appended below ``APPENDED``."""
    kept = ""
    if path.exists() and APPENDED in path.read_text():
        kept = "\n" + path.read_text()[path.read_text().index(APPENDED):]
    path.write_text(text + kept)


def _kept_sections(path: Path) -> str:
    """Sections measured by other scripts (bench/offload_memory.py) survive a rerun."""
    if not path.exists():
        return ""
    import re
    above = path.read_text().split(APPENDED)[0]  # what sits below APPENDED is kept whole
    kept = re.findall(r"\n## Pruning beyond memory.*?(?=\n## |\Z)", above, flags=re.S)
    return "".join(kept)


def render(out: str | Path = "bench") -> Path:
    """Rewrite OUT/results.md and OUT/results.png from OUT/results.json (no re-measuring)."""
    out = Path(out)
    result = json.loads((out / "results.json").read_text())
    _write_keeping_appended(out / "results.md", to_markdown(result) + _recovery_section(out)
                            + _kept_sections(out / "results.md"))
    plot(result, out / "results.png")
    return out / "results.md"


def checks(latency: dict, cfg: BenchConfig) -> list[dict]:
    """The claims the lesson makes, each stated as a ratio with its verdict."""
    out = []
    mlp = latency["structured"].get(("mlp", 0.5))
    if mlp:
        r = mlp["result"]
        out.append({"claim": "removing 50% of the MLP neurons: measured prefill speedup >= 0.8 x ideal",
                    "value": f"{r.prefill_speedup:.2f}x measured / {r.ideal_speedup:.2f}x ideal "
                             f"= {r.efficiency:.2f}", "holds": r.efficiency >= 0.8})
    curve = latency["model_curve"]
    csr = dict(zip(curve.sparsities, curve.speedups["csr"]))
    if 0.9 in csr:
        out.append({"claim": f"CSR at 90% zeros on the MLP layers is faster than dense ({cfg.tokens} tokens)",
                    "value": f"speedup {csr[0.9]:.2f}x", "holds": csr[0.9] > 1})
    if 0.5 in csr:
        out.append({"claim": "CSR at 50% zeros on the MLP layers is slower than dense",
                    "value": f"speedup {csr[0.5]:.2f}x", "holds": csr[0.5] < 1})
    return out


# ---------------------------------------------------------------- report
def _loads(machine: dict) -> list[float]:
    return [machine[k] for k in ("load_average_at_start", "load_average_at_end") if k in machine]


def _pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def _f(x, digits=2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _recovery_section(out: Path) -> str:
    """The recovery table measured by bench/recovery.py (OUT/recovery.md), kept in results.md."""
    path = Path(out) / "recovery.md"
    return "\n" + path.read_text() if path.is_file() else ""


def to_markdown(r: dict) -> str:
    m, cfg = r["machine"], r["config"]
    lines = [
        f"# Benchmark: where speed comes from ({r['model']})", "",
        f"- Machine: {m['cpu']}, {m['logical_cores']} logical cores, **{m['threads']} torch thread{'s' if m['threads'] != 1 else ''}**; "
        f"torch {m['torch']}, transformers {m['transformers']}, Python {m['python']}; "
        f"load average {m.get('load_average_at_start', '?')} at start, "
        f"{m.get('load_average_at_end', '?')} at end (other processes share the cores: "
        f"a load above {m['threads']} makes timings noisy); {m['date']}.",
        f"- Model: {r['model']} ({r['model_info']['architecture']}, {r['model_info']['layers']} layers), "
        "float32 on the CPU. FLOPs shares at this length: "
        + ", ".join(f"{k} {v:.0%}" for k, v in r["model_info"]["flops_shares"].items()) + ".",
        f"- Latency: prefill of 1 x {cfg['tokens']} tokens, median of {cfg['runs']} runs after "
        f"{cfg['warmup']} warm-up, every candidate **interleaved with the dense model in the same run**; "
        f"decode: per token, {cfg['decode_tokens']} tokens after a {cfg['decode_context']}-token prompt. "
        "Only ratios are reported: bare times drift with the machine's load.",
        f"- Quality: perplexity on {cfg['n_eval']} x {cfg['seq_len']} evaluation windows (middle of the "
        f"pydoc text), calibration {cfg['n_calib']} x {cfg['seq_len']} from its start (course protocol)."
        + (" **Quick mode: few windows and runs, numbers are only a smoke test.**" if r["quick"] else ""),
        *([f"- **Note: the machine was shared** (load average up to {max(_loads(m)):.1f} on "
           f"{m['logical_cores']} cores while timing): interleaving keeps the ratios fair, but they "
           "are noisier and the wall time longer than on a quiet machine. (With as many torch threads "
           "as busy cores, each parallel kernel waits for a descheduled thread and the timings "
           "become meaningless: on a shared machine use `--threads 1`.)"]
          if _loads(m) and max(_loads(m)) > m["threads"] + 0.5 else []),
        f"- Bench wall time: {r['bench_seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in r["section_seconds"].items()) + ").", "",
        "## (a) Latency: measured against ideal", "",
        "Latency ratio = pruned / dense (below 1 is faster). Ideal = FLOPs ratio: smaller shapes for "
        "structured removal, 1.00 for zeros in a dense kernel, non-zero FLOPs for CSR/BSR (a perfect "
        "sparse kernel). Measured/ideal compares speedups (1.00: every FLOP saved became time saved).", "",
        "| configuration | what changes | latency ratio | ideal ratio | measured / ideal | decode ratio |",
        "|---|---|---:|---:|---:|---:|",
        "| dense | - | 1.00 | 1.00 | - | 1.00 |",
    ]
    for row in r["latency"]:
        lines.append(f"| {row['configuration']} | {row['what']} | {_f(row['latency_ratio'])} | "
                     f"{_f(row['ideal_latency_ratio'])} | {_f(row['measured_over_ideal'])} | "
                     f"{_f(row['decode_ratio'])} |")
    lines += ["", "## (b) Quality: perplexity and prune time", "",
              f"Dense perplexity: **{r['quality'][0]['perplexity']:.2f}**. Unstructured methods prune "
              "every decoder matrix (embeddings and lm_head untouched).", "",
              "| method | sparsity | achieved zeros | perplexity | prune seconds |",
              "|---|---|---:|---:|---:|"]
    for q in r["quality"][1:]:
        lines.append(f"| {q['method']} | {q['sparsity']} | {_pct(q['achieved'])} | "
                     f"{q['perplexity']:.2f} | {q['prune_seconds']:.1f} |")
    lines += ["", "Structured removal, the same amount in every layer (with GQA the same number of "
              "query heads per KV group), chosen by two scores. The weight norm is free but blind to "
              "the data: it can remove neurons that carry large activations, and the damage compounds "
              "over the layers. The calibrated score measures each head's contribution to the "
              "residual stream / each neuron's mean |activation| on the calibration windows. Both "
              "remove the same number of heads or neurons, so the shapes, and the speedups "
              "(measured on the weight-norm model), are the same:", "",
              "| removal | requested | achieved | perplexity (weight norm) | perplexity (calibrated) "
              "| prefill speedup | ideal speedup | decode speedup |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in r["structured_quality"]:
        kind, requested = s["configuration"].split()[:2]
        name = "attention heads" if kind == "heads" else "MLP neurons"
        lines.append(f"| {name} | {requested} | {_pct(s['achieved'])} | {s['perplexity']:.2f} | "
                     f"{s['perplexity_calibrated']:.2f} | {s['speedup']:.2f}x | {s['ideal_speedup']:.2f}x | {_f(s['decode_speedup'])}x |")

    c, mc = r["curve"], r["model_curve"]
    layouts = list(c["speedups"])
    lines += ["", "## (c) Sparse kernels: the break-even", "",
              f"{c['what']} times {c['tokens']} tokens, {c['threads']} thread(s); speedup = dense time / "
              "sparse time, side by side (above 1: the sparse kernel wins). CSR holds per-row magnitude-"
              f"pruned weights; BSR holds {c['blocksize']}x{c['blocksize']} blocks pruned by block norm "
              "(BSR skips only all-zero blocks: unstructured zeros leave nearly every block occupied).", "",
              "| sparsity | " + " | ".join(f"{l.upper()} speedup" for l in layouts) + " |",
              "|---:|" + "---:|" * len(layouts)]
    for i, s in enumerate(c["sparsities"]):
        lines.append(f"| {s:.0%} | " + " | ".join(f"{c['speedups'][l][i]:.2f}" for l in layouts) + " |")
    lines.append("")
    for l in layouts:
        be = c["break_even"][l]
        lines.append(f"- Break-even, one matrix, {l.upper()}: "
                     + (f"**{be:.0%} zeros**" if be is not None else "not reached in the measured range"))
    for l in mc["speedups"]:
        be = mc["break_even"][l]
        lines.append(f"- Break-even, whole model with {l.upper()} MLP layers: "
                     + (f"**{be:.0%} zeros**" if be is not None else "not reached in the measured range")
                     + " (" + ", ".join(f"{s:.0%}: {v:.2f}x" for s, v in zip(mc["sparsities"], mc["speedups"][l]))
                     + ")")
    lines += ["", "![speedups](results.png)", "", "## (d) 2:4 semi-structured on a GPU", "",
              "| 2:4 sparse tensor cores | result |", "|---|---|"]
    g = r["gpu_2_4"]
    if g["measured"]:
        lines.append(f"| {g['device']}, one 1536x576 matrix, fp16 | speedup {g['layer_speedup']:.2f}x |")
        lines.append(f"| {g['device']}, whole model, fp16 | speedup {g['model_speedup']:.2f}x "
                     f"(ideal {g['model_ideal_speedup']:.2f}x) |")
    else:
        lines.append(f"| 2:4 (magnitude, pattern 2:4) | {g['note']} |")
    lines += ["", "## Checks", "", "| claim | measured | holds |", "|---|---|---|"]
    for ch in r["checks"]:
        lines.append(f"| {ch['claim']} | {ch['value']} | {'yes' if ch['holds'] else '**no**'} |")
    if r.get("gap_mlp_50"):
        lines += ["", "## Measured against ideal, and where a gap comes from (MLP neurons removed 50%)",
                  "", r["gap_mlp_50"]]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    """Left: sparse-kernel speedup against sparsity. Right: measured vs ideal speedups."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    c, mc = r["curve"], r["model_curve"]
    for layout, marker in zip(c["speedups"], "os"):
        left.plot([100 * s for s in c["sparsities"]], c["speedups"][layout], marker=marker,
                  label=f"{layout.upper()}, {c['what']}")
    for layout, marker in zip(mc["speedups"], "^v"):
        left.plot([100 * s for s in mc["sparsities"]], mc["speedups"][layout], marker=marker,
                  linestyle="--", label=f"{layout.upper()} on MLP, whole model")
    left.axhline(1.0, color="gray", linewidth=1)
    be = c["break_even"].get("csr")
    if be is not None:  # where the one-matrix CSR curve crosses the dense line
        left.axvline(100 * be, color="gray", linestyle=":", linewidth=1)
        left.annotate(f"CSR break-even ~{be:.0%}", (100 * be, 1.0), textcoords="offset points",
                      xytext=(4, -14), fontsize=7)
    left.set(yscale="log", xlabel="zeros (%)", ylabel="speedup vs dense (log scale)",
             title=f"Sparse kernels, {c['tokens']} tokens, {c['threads']} thread(s)")
    left.set_yticks([t for t in (0.1, 0.2, 0.3, 0.5, 1, 2, 3, 5, 10, 20)
                     if left.get_ylim()[0] <= t <= left.get_ylim()[1]])
    left.yaxis.set_major_formatter(ScalarFormatter())
    left.yaxis.set_minor_formatter(NullFormatter())
    left.legend(fontsize=7)
    rows = r["latency"]
    labels = [row["configuration"].replace(" on MLP layers", "").replace(" removed", "")
              .replace(" zeros, dense kernel", " dense") for row in rows]
    xs = range(len(rows))
    right.bar([x - 0.2 for x in xs], [row["ideal_speedup"] for row in rows], width=0.4, label="ideal")
    right.bar([x + 0.2 for x in xs], [row["speedup"] for row in rows], width=0.4, label="measured")
    right.axhline(1.0, color="gray", linewidth=1)
    right.set_xticks(list(xs))
    right.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    right.set(ylabel="prefill speedup vs dense", title="Measured vs ideal (side by side)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------- the command
def cmd_bench(args) -> dict:
    result = run_bench(args.model, out=args.out, quick=args.quick, threads=args.threads,
                             source=args.source, log=None if args.json else print)
    if args.json:
        return result
    return {"results": result["files"][0], "figure": result["files"][1],
            "checks": "; ".join(f"{c['claim']}: {c['value']} ({'yes' if c['holds'] else 'NO'})"
                                for c in result["checks"]),
            "bench_seconds": round(result["bench_seconds"])}

