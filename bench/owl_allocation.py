"""Outlier-aware (OWL) per-layer sparsity against uniform, at the same total.

    python bench/owl_allocation.py [--model smollm2-135m] [--seq-len 256 --n-eval 16 --n-calib 32]

For magnitude and Wanda scores, at 60% and 70%: the perplexity of uniform pruning
and of the OWL allocation (``pruning.allocation``), on the course windows.
Prints a markdown table.
"""
from __future__ import annotations

import argparse

import torch

from course_lib.core import data, metrics, models
from course_lib.pruning import allocation


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--n-eval", type=int, default=16)
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--lam", type=float, default=0.08)
    p.add_argument("--targets", default="0.6,0.7")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model, tok = models.load(args.model)
    w = data.windows_for(tok, args.model, seq_len=args.seq_len, n_eval=args.n_eval, n_calib=args.n_calib)
    n = len(allocation.layer_modules(model))
    dense = metrics.perplexity(model, w.eval)
    shares = allocation.outlier_shares(model, w.calib)
    print(f"{args.model}: dense perplexity {dense:.2f} on {args.n_eval}x{args.seq_len} tokens; "
          f"calibration {args.n_calib}x{args.seq_len}; outlier share per layer (M=5): "
          + ", ".join(f"{x:.4f}" for x in shares))
    print("| scores | target | uniform | OWL (lam %.2f) | OWL / uniform | OWL layer sparsities (min-max) |" % args.lam)
    print("|---|---|---|---|---|---|")
    for method in ("magnitude", "wanda"):
        for target in (float(t) for t in args.targets.split(",")):
            owl = allocation.owl_sparsities(model, shares, target, args.lam)
            result = {}
            for label, alloc in (("uniform", [target] * n), ("owl", owl)):
                handle = allocation.prune_layers(model, alloc, method, w.calib)
                try:
                    result[label] = metrics.perplexity(model, w.eval)
                finally:
                    handle.restore()
            print(f"| {method} | {target:.0%} | {result['uniform']:.2f} | {result['owl']:.2f} | "
                  f"{result['owl'] / result['uniform']:.3f} | {owl.min():.3f}-{owl.max():.3f} |", flush=True)


if __name__ == "__main__":
    main()
