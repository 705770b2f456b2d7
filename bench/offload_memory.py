"""Peak resident memory of Wanda's calibration walk: model in memory vs decoder on disk.

    python bench/offload_memory.py [--model smollm2-135m] [--write bench/results.md]

Each side runs in its own fresh process (so one's memory cannot leak into the
other's figure) and reports its resident set size after loading, the peak of the
prune step alone and of the evaluation alone (Linux: ``VmHWM`` of /proc/self/status,
reset through /proc/self/clear_refs before each step), the peak of the whole run
(``ru_maxrss``), the perplexity after pruning and the wall time. The two
perplexities must be equal: offloading changes where the weights live, not what
the walk computes.
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
torch.set_num_threads(1)

def status(field):  # MB, from /proc/self/status (Linux); None elsewhere
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None

def reset_peak():  # VmHWM restarts from the current RSS (Linux >= 4.0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

started = time.perf_counter()
if mode == "memory":
    model, tokenizer = models.load(name, device="cpu")
else:
    folder = models.cache_dir() / name if name in models.EMBEDDED else name
    model, tokenizer = offload.load_offloaded(folder, work)
windows = data.windows_for(tokenizer, name, seq_len=128, n_eval=2, n_calib=4)
loaded = status("VmRSS")
resettable = reset_peak()
handle = wanda_prune(model, windows.calib, 0.5, batch_size=2, keep_masks=False)
prune_peak = status("VmHWM") if resettable else None
reset_peak()
ppl = metrics.perplexity(model, windows.eval)
eval_peak = status("VmHWM") if resettable else None
print(json.dumps({"mode": mode, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "loaded_mb": loaded, "prune_peak_mb": prune_peak, "eval_peak_mb": eval_peak,
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


def _mb(value) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def section(name: str, rows: list[dict]) -> str:
    mem, disk = rows
    lines = ["## Pruning beyond memory (decoder offloaded to disk)", "",
             f"Wanda 50% on {name}, 4 calibration windows of 128 tokens, CPU, 1 thread; each side in a "
             "fresh process (`python bench/offload_memory.py`). Offloaded: accelerate `device_map` with "
             "the decoder layers on disk, each layer read onto the device only while it is calibrated "
             "(`course_lib.pruning.offload`). Resident memory after loading, peak of the prune step "
             "alone (calibration walk, achieved sparsity), peak of the evaluation alone (perplexity on "
             "2 windows: logits of 2 x 128 x 49152 floats) and peak of the whole run.", "",
             "| where the decoder lives | after loading | peak, prune step | peak, evaluation "
             "| peak, whole run | perplexity after | wall time |",
             "|---|---|---|---|---|---|---|"]
    for label, r in (("in memory", mem), ("on disk (offloaded)", disk)):
        lines.append(f"| {label} | {_mb(r.get('loaded_mb'))} | {_mb(r.get('prune_peak_mb'))} "
                     f"| {_mb(r.get('eval_peak_mb'))} | {r['peak_rss_mb']:.0f} MB "
                     f"| {r['perplexity']:.4f} | {r['seconds']:.0f} s |")
    same = "the same" if mem["perplexity"] == disk["perplexity"] else "DIFFERENT"
    ratio = (f"prune step {disk['prune_peak_mb'] / mem['prune_peak_mb']:.2f}, "
             if disk.get("prune_peak_mb") and mem.get("prune_peak_mb") else "")
    lines += ["", f"Peak memory offloaded / in memory: {ratio}whole run "
              f"{disk['peak_rss_mb'] / mem['peak_rss_mb']:.2f}; perplexities are {same}.", "",
              "Where the memory goes. Loading costs the same either way: safetensors are memory-mapped, "
              "so an in-memory model's weights are file pages read when first used, and the offloaded "
              "loader does not materialise the decoder either. In memory, the prune step then holds "
              "every decoder weight (the masks write them: 425 MB of float32 turn into private pages) "
              "and the undo handle's copy of every pruned weight (405 MB). Offloaded, neither is "
              "held, but before this was fixed the prune step still peaked at 937 MB against 1337 MB "
              "in memory (whole run 1067 MB against 1563 MB; measured with this script at commit "
              "3c5ef0a; an earlier run under heavy load recorded 1693 MB against 1640 MB): "
              "glibc's C heap grew by about the decoder's size. After the walk `mallinfo2` counted "
              "~490 MB *free* inside the heap in ~27,000 pieces; `malloc_trim(0)` then gave back "
              "470 MB, but trimming after every layer or `MALLOC_ARENA_MAX=1` did not lower the "
              "peak, while a fixed `MALLOC_MMAP_THRESHOLD_` did. Each layer was read back as a fresh "
              "heap copy (accelerate copies a `.dat` file into a new tensor; the walk's closing "
              "sparsity count reads all 30 layers so, which alone added ~400 MB) and the undo handle "
              "cloned each layer before forgetting the clone; glibc raises its mmap threshold after "
              "the first large free, so these layer-sized blocks came from the heap, which fragments "
              "and is not given back. Now (`course_lib/pruning/offload.py`) a layer is a private "
              "memory map of its file (`torch.from_file(shared=False)`: no copy, freed with the "
              "layer), the handle keeps no copy of a weight whose original is in the store "
              "(`PruneHandle.kept_elsewhere`), and the mmap threshold is pinned at 1 MiB the first "
              "time a layer is materialised. The prune step's peak is now the loaded model plus one "
              "layer and its activations. The evaluation adds about the same in both modes (the "
              "logits, 2 x 128 x 49152 floats, and their log-softmax copies; the tied embedding "
              "paged in as LM head; each layer read by accelerate's hooks), so the whole-run figure "
              "is set by the evaluation when offloaded.", ""]
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
        # replaced where it stands (above the sections other scripts append), else added at the end
        pattern = re.compile(r"## Pruning beyond memory.*?(?=\n## |\n<!--|\Z)", flags=re.S)
        if pattern.search(old):
            path.write_text(pattern.sub(lambda _: text.rstrip("\n") + "\n", old, count=1))
        else:
            path.write_text(old.rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
