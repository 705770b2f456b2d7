"""Our Wanda and SparseGPT against llm-compressor's, side by side in one run.

    make bench-peers                      # builds .venv-peers/ once, then runs this
    .venv-peers/bin/python bench/peers/compare.py [wanda|sparsegpt] [--pattern 2:4]

The reference protocol (bench/reference_protocol.py): SmolLM2-135M, calibration
= 32 windows x 256 tokens from the start of the pydoc text, evaluation = 16 x 256
from its middle, 2 CPU threads. Both sides get the same model (a fresh copy for
each prune), the same calibration windows and the same perplexity code; both
walk the decoder layer by layer, each layer calibrated on the outputs of the
already-pruned layers before it (llm-compressor's "sequential" pipeline). The
peer prunes every Linear inside the decoder layers, as we do, and not the tied
lm_head. Time = wall time of the prune call; the two sides alternate, so a
machine that slows down slows both.

Prints and writes bench/peers.md: ours/theirs ratios of perplexity (target <= 1.02)
and of prune time (target <= 0.8).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")  # llm-compressor draws a progress bar per layer
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # course_lib from this checkout, with the peer's transformers

import torch  # noqa: E402
import transformers  # noqa: E402

from course_lib.core import data, metrics, models  # noqa: E402
from course_lib.pruning.sparsegpt import sparsegpt_prune  # noqa: E402
from course_lib.pruning.wanda import wanda_prune  # noqa: E402

MODEL = "smollm2-135m"  # the reference protocol's model; --model takes any course_lib name
PPL_TARGET, TIME_TARGET = 1.02, 0.8
DECODER_LAYERS = r"re:model\.layers\.\d+$"  # every Linear inside them; never lm_head


def ours(method, model, tokenizer, calib, pattern):
    prune = wanda_prune if method == "wanda" else sparsegpt_prune
    prune(model, calib, 0.5, pattern=pattern, keep_masks=False)


def theirs(method, model, tokenizer, calib, pattern):
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    modifier = SparseGPTModifier if method == "sparsegpt" else WandaPruningModifier
    recipe = modifier(sparsity=0.5, mask_structure=pattern or "0:0", targets=[DECODER_LAYERS],
                      ignore=["re:.*lm_head"])
    if not model.config.name_or_path:  # built in memory (the tiny models): the peer re-reads
        folder = tempfile.mkdtemp(prefix="peer-config-")  # the config from disk, so give it one
        model.config.save_pretrained(folder)
        model.config.name_or_path = folder
    windows = Dataset.from_dict({"input_ids": calib.tolist(),
                                 "attention_mask": torch.ones_like(calib).tolist()})
    oneshot(model=model, processor=tokenizer, dataset=windows, recipe=recipe, pipeline="sequential",
            num_calibration_samples=len(calib), max_seq_length=calib.shape[1],
            shuffle_calibration_samples=False, batch_size=1)


def peer_version() -> str:
    """Import llm-compressor, quietly (it logs every layer; METRIC is level 38)."""
    import llmcompressor
    from loguru import logger

    logging.getLogger("llmcompressor").setLevel(logging.WARNING)
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    return llmcompressor.__version__


def measure(side, method, pattern, windows, base, tokenizer):
    model = copy.deepcopy(base)  # each side prunes its own fresh copy
    start = time.perf_counter()
    side(method, model, tokenizer, windows.calib, pattern)
    seconds = time.perf_counter() - start
    zeros = metrics.total_sparsity(model)
    ppl = metrics.perplexity(model, windows.eval)
    del model
    return {"perplexity": ppl, "seconds": seconds, "sparsity": zeros}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="wanda and/or sparsegpt (default: both)")
    parser.add_argument("--pattern", action="append", choices=["50%", "2:4"],
                        help="repeatable; default: both 50%% unstructured and 2:4")
    parser.add_argument("--out", default=str(ROOT / "bench" / "peers"))
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--n-calib", type=int, default=32)
    parser.add_argument("--n-eval", type=int, default=16)
    args = parser.parse_args(argv)
    methods = args.methods or ["wanda", "sparsegpt"]
    unknown = set(methods) - {"wanda", "sparsegpt"}
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}: choose from wanda, sparsegpt")
    patterns = [None if p == "50%" else p for p in (args.pattern or ["50%", "2:4"])]

    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    peer = peer_version()

    base, tokenizer = models.load(args.model)
    windows = data.windows_for(tokenizer, args.model, seq_len=args.seq_len, n_calib=args.n_calib,
                               n_eval=args.n_eval)
    print(f"{args.model}: calibration {tuple(windows.calib.shape)}, evaluation "
          f"{tuple(windows.eval.shape)}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, llm-compressor {peer}",
          flush=True)
    header = ("| method | pattern | ppl ours | ppl theirs | ppl ours/theirs | s ours | s theirs "
              "| time ours/theirs | within targets |")
    rows, results = [header, "|---|---|---:|---:|---:|---:|---:|---:|---|"], []
    print(header, flush=True)
    for pattern in patterns:
        for method in methods:
            a = measure(ours, method, pattern, windows, base, tokenizer)
            b = measure(theirs, method, pattern, windows, base, tokenizer)
            ppl_ratio, time_ratio = a["perplexity"] / b["perplexity"], a["seconds"] / b["seconds"]
            ok = ppl_ratio <= PPL_TARGET and time_ratio <= TIME_TARGET
            row = (f"| {method} | {pattern or '50%'} | {a['perplexity']:.2f} | {b['perplexity']:.2f} "
                   f"| {ppl_ratio:.3f} | {a['seconds']:.1f} | {b['seconds']:.1f} | {time_ratio:.2f} "
                   f"| {'yes' if ok else 'NO'} |")
            rows.append(row)
            print(row, flush=True)
            results.append({"method": method, "pattern": pattern or "50%", "ours": a, "theirs": b,
                            "perplexity_ratio": ppl_ratio, "time_ratio": time_ratio,
                            "within_targets": ok})
    note = (f"\nTargets: perplexity ours/theirs <= {PPL_TARGET}, prune time ours/theirs <= "
            f"{TIME_TARGET}. Same model, windows and perplexity code on both sides; measured "
            f"in one run, the two sides alternating. torch {torch.__version__}, transformers "
            f"{transformers.__version__}, llm-compressor {peer}, "
            f"{torch.get_num_threads()} threads.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    protocol = ("reference protocol" if (args.seq_len, args.n_calib, args.n_eval) == (256, 32, 16)
                else f"{args.n_calib} x {args.seq_len} calibration, {args.n_eval} x {args.seq_len} "
                     "evaluation tokens")
    title = f"{'SmolLM2-135M' if args.model == MODEL else args.model}, {protocol}"
    (out / "results.md").write_text(f"# Ours vs llm-compressor, {title}\n\n"
                                    + "\n".join(rows) + "\n" + note + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(note.strip())
    print(f"wrote {out / 'results.md'}")
    return 0 if all(r["within_targets"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
