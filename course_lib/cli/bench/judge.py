"""The benchmark's verdicts: the claims the lessons make, each checked against what was measured."""
from __future__ import annotations

from .measure import BenchConfig


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
