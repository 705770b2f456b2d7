"""Peak resident memory of Wanda's calibration walk: model in memory vs decoder on disk.

    python bench/offload_memory.py [--model smollm2-135m] [--write bench/results.md]

Each side runs in its own fresh process (so one's memory cannot leak into the
other's figure) and reports its peak resident set size (``ru_maxrss``), the
perplexity after pruning and the wall time. The two perplexities must be equal:
offloading changes where the weights live, not what the walk computes.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from course_lib.core import data, metrics, models
from course_lib.pruning import offload
from course_lib.pruning.wanda import wanda_prune
name, mode, work = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(2)
started = time.perf_counter()
if mode == "memory":
    model, tokenizer = models.load(name, device="cpu")
else:
    folder = models.cache_dir() / name if name in models.EMBEDDED else name
    model, tokenizer = offload.load_offloaded(folder, work)
windows = data.windows_for(tokenizer, name, seq_len=128, n_eval=2, n_calib=4)
handle = wanda_prune(model, windows.calib, 0.5, batch_size=2, keep_masks=False)
ppl = metrics.perplexity(model, windows.eval)
print(json.dumps({"mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "perplexity": ppl, "sparsity": handle.info["sparsity"],
                  "seconds": time.perf_counter() - started}))
"""


def measure(name: str) -> list[dict]:
    rows = []
    for mode in ("memory", "disk"):
        with tempfile.TemporaryDirectory() as work:
            done = subprocess.run([sys.executable, "-c", CHILD, name, mode, work],
                                  capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def section(name: str, rows: list[dict]) -> str:
    mem, disk = rows
    lines = ["## Pruning beyond memory (decoder offloaded to disk)", "",
             f"Wanda 50% on {name}, 4 calibration windows of 128 tokens, CPU, 2 threads; each side in a "
             "fresh process (`python bench/offload_memory.py`). Offloaded: accelerate `device_map` with "
             "the decoder layers on disk, each layer read onto the device only while it is calibrated "
             "(`course_lib.pruning.offload`).", "",
             "| where the decoder lives | peak resident memory | perplexity after | wall time |",
             "|---|---|---|---|"]
    for label, r in (("in memory", mem), ("on disk (offloaded)", disk)):
        lines.append(f"| {label} | {r['peak_rss_mb']:.0f} MB | {r['perplexity']:.4f} | {r['seconds']:.0f} s |")
    same = "the same" if mem["perplexity"] == disk["perplexity"] else "DIFFERENT"
    lines += ["", f"Peak memory offloaded / in memory: {disk['peak_rss_mb'] / mem['peak_rss_mb']:.2f}; "
              f"perplexities are {same}. On this model the peak is not set by the decoder weights "
              "(425 MB of float32): a stage-by-stage probe of the offloaded run (2 windows of 64 tokens) "
              "read 420 MB resident after loading and ~1.0 GB after the walk, so most of the peak comes "
              "from elsewhere (runtime, tokenizer and windows, allocator growth during the walk) and is "
              "not explained yet; the saving should show where the decoder dominates (a 7B).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--write", default=None, help="results.md to add (or replace) the section in")
    args = parser.parse_args()
    text = section(args.model, measure(args.model))
    print(text)
    if args.write:
        path = Path(args.write)
        old = path.read_text() if path.exists() else ""
        old = re.sub(r"\n## Pruning beyond memory.*?(?=\n## |\Z)", "", old, flags=re.S)
        path.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
