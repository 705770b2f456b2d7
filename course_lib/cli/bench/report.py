"""The benchmark's report: ``results.md`` from the measured results (the figure is ``plot``'s).

Other bench scripts add sections of their own to ``results.md``; a rerun keeps them
(those below ``APPENDED`` whole, and the "Pruning beyond memory" section), and the
recovery table that ``bench/recovery.py`` writes to ``recovery.md`` is included.
"""
from __future__ import annotations

from pathlib import Path


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


def write_markdown(result: dict, out: Path) -> Path:
    """OUT/results.md for ``result``, keeping what other bench scripts wrote there."""
    path = Path(out) / "results.md"
    _write_keeping_appended(path, to_markdown(result) + _recovery_section(out) + _kept_sections(path))
    return path


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
