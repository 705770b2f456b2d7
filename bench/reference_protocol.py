"""Our unstructured kernels against the reference implementations' numbers.

Protocol (the one the references were run with): SmolLM2-135M on this 2-core
CPU, calibration = 32 windows x 256 tokens from the start of the pydoc text,
evaluation = 16 windows x 256 tokens from its middle (``data.windows_for``
defaults). Prune time = wall time of the prune call, evaluation excluded.

    python bench/reference_protocol.py            # everything (a few minutes)
    python bench/reference_protocol.py wanda      # only some methods

Writes the markdown table to bench/reference_protocol.md as well.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from course_lib.core import data, metrics, models
from course_lib.pruning.masks import magnitude_prune
from course_lib.pruning.sparsegpt import sparsegpt_prune
from course_lib.pruning.wanda import wanda_prune

# (method, pattern): (reference perplexity as published, our perplexity target,
#                      reference prune seconds as published, our time target)
# Targets: perplexity within 2% of the reference, time at most 0.8x the reference.
REFERENCE = {
    ("magnitude", None): ("227", None, "-", None),
    ("wanda", None): ("24.8", 25.3, "~55", 44.0),
    ("sparsegpt", None): ("20.2-20.4", 20.8, "100-115", 80.0),
    ("magnitude", "2:4"): ("1190", None, "-", None),
    ("wanda", "2:4"): ("66.9", 68.2, "~55", 44.0),
    ("sparsegpt", "2:4"): ("30.0-30.6", 31.2, "100-115", 80.0),
}


def prune(method, model, calib, pattern):
    if method == "magnitude":
        return magnitude_prune(model, 0.5, scope="row", pattern=pattern, keep_masks=False)
    if method == "wanda":
        return wanda_prune(model, calib, 0.5, pattern=pattern, keep_masks=False)
    return sparsegpt_prune(model, calib, 0.5, pattern=pattern, keep_masks=False)


def main(selected: list[str]) -> str:
    torch.set_num_threads(2)
    model, tokenizer = models.load("smollm2-135m")
    windows = data.windows_for(tokenizer, "smollm2-135m")
    rows = ["| method | pattern | perplexity | reference ppl | ppl target | prune s | reference s "
            "| time target | within targets |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    dense = metrics.perplexity(model, windows.eval)
    rows.append(f"| dense | - | {dense:.2f} | 13.7 | - | - | - | - | - |")
    print(rows[-1], flush=True)
    for pattern in (None, "2:4"):
        for method in ("magnitude", "wanda", "sparsegpt"):
            if selected and method not in selected:
                continue
            start = time.perf_counter()
            handle = prune(method, model, windows.calib, pattern)
            seconds = time.perf_counter() - start
            try:
                ppl = metrics.perplexity(model, windows.eval)
                sparsity = handle.info["sparsity"]
            finally:
                handle.restore()
            ref_ppl, ppl_target, ref_s, s_target = REFERENCE[(method, pattern)]
            ppl_ok = ppl_target is None or ppl <= ppl_target
            time_ok = s_target is None or seconds <= s_target
            ok = "-" if ppl_target is None else "yes" if ppl_ok and time_ok else (
                "NO" + ("" if ppl_ok else " (ppl)") + ("" if time_ok else " (time)"))
            rows.append(
                f"| {method} | {pattern or '50% unstructured'} | {ppl:.2f} | {ref_ppl} "
                f"| {'-' if ppl_target is None else f'<= {ppl_target:g}'} | {seconds:.1f} | {ref_s} "
                f"| {'-' if s_target is None else f'<= {s_target:g}'} | {ok} |")
            print(rows[-1], f"(sparsity {sparsity:.4f})", flush=True)
    # every restore must have given back the original model, bit for bit
    fresh = models.load("smollm2-135m")[0].state_dict()
    assert all(torch.equal(t, fresh[k]) for k, t in model.state_dict().items()), "restore failed"
    table = "\n".join(rows)
    note = ("Targets: perplexity within 2% of the reference, prune time at most 0.8x the "
            "reference's (wall time of the prune call, evaluation excluded). 32 x 256 calibration "
            "windows, 16 x 256 evaluation windows, torch.set_num_threads(2), 2-core CPU.")
    return f"# Reference protocol, SmolLM2-135M, 50% sparsity\n\n{table}\n\n{note}\n"


if __name__ == "__main__":
    text = main(sys.argv[1:])
    print(text)
    if not sys.argv[1:]:
        (Path(__file__).parent / "reference_protocol.md").write_text(text)
