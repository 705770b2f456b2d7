"""The benchmark's figure: sparse-kernel speedups against sparsity, measured against ideal."""
from __future__ import annotations

from pathlib import Path


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
