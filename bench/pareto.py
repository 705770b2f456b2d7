"""Width or depth, after recovery: four cuts of exactly equal size, each recovered, timed and scored.

    PYTHONPATH=. python bench/pareto.py [--layers 6] [--steps 40] [--out bench]

SmolLM2 loses the parameters of ``--layers`` whole decoder layers four ways
(``course_lib.pruning.budget``: depth, width in the MLP, width in attention + MLP,
depth + width). Each cut is then recovered by the long recovery's recipe
(``course_lib.recover.long``) at a shorter length, the same for every cut: the closed-form
refit where the layers still line up (kept only when it lowers the perplexity on validation
windows never trained on), then ``--steps`` steps of KL distillation from the dense model
on alternating prose and code (4 windows of 256 tokens a step, cosine schedule).

Measured for each cut, before and after recovery: perplexity on the protocol's evaluation
windows (pydoc, 16 x 256) and on held-out Python source (8 x 256), each paired with dense
on the same tokens, with its 95% interval; every pair of cuts compared the same way. Then
prefill (1 x 128 tokens) and decode (per token, after a 64-token prompt) of dense and the
four recovered cuts, interleaved run by run in one call; each speedup is the median of the
paired ratios with their interquartile range, next to its ideal (FLOPs for prefill, weight
bytes read per token for decode).

Writes ``bench/pareto.json`` (every figure, and where and when it was measured: lesson 4
loads it and prints that provenance). 27 minutes on 2 cores (measured);
run it on a quiet machine (the timings).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from course_lib.core import arch, metrics, models, provenance, stats, timing
from course_lib.pruning import budget
from course_lib.recover import long
from course_lib.runtime import speed

MODEL = "smollm2-135m"


def speedup_dict(s: timing.Speedup, ideal: float) -> dict:
    return {"median": round(s.median, 3), "low": round(s.low, 3), "high": round(s.high, 3), "runs": s.runs,
            "verdict": s.verdict, "ideal": round(ideal, 3), "plausible": speed.plausible(s.median, ideal)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6, help="the budget, in whole decoder layers")
    parser.add_argument("--steps", type=int, default=40, help="distillation steps per cut (4 x 256 tokens each)")
    parser.add_argument("--runs", type=int, default=9, help="paired timing runs")
    parser.add_argument("--out", default="bench")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.perf_counter()
    plan = replace(long.LONG, steps=args.steps, warmup=max(1, args.steps // 10),
                   n_prose=args.steps * 2, n_code=args.steps * 2, curve_points=1)
    dense, tokenizer = models.load(MODEL)
    windows = long.texts(tokenizer, MODEL, plan)

    def quality(model) -> dict:
        return {kind: stats.Quality(metrics.token_nll(model, windows[kind])) for kind in ("eval", "heldout")}

    dense_q = quality(dense)
    cuts = budget.equal_cuts(dense, windows["train"][:plan.n_score], args.layers)
    for cut in cuts.values():
        print(f"{cut.name}: {cut.describe()}", flush=True)
    rows, before_q, after_q, students = {}, {}, {}, {}
    for name, cut in cuts.items():
        student = budget.pruned_copies(dense, {name: cut})[name]
        before_q[name] = quality(student)
        info, _ = long.recover_in_place(student, dense, windows, plan, log=lambda *_: None)
        after_q[name] = quality(student)
        students[name] = student
        rows[name] = {
            "cut": {"layers": cut.layers,  # each layer's own group size and width: a model may vary them
                    "kv_groups": sum(len(v) // arch.attention_shape(dense, k).group_size for k, v in cut.heads.items()),
                    "heads": {str(k): v for k, v in cut.heads.items()},
                    "neurons": sum(map(len, cut.neurons.values())),
                    "mlp_widths": sorted({arch.mlp_width(dense, k) - len(v) for k, v in cut.neurons.items()}),
                    "description": cut.describe()},
            "parameters_removed": cut.parameters,
            "parameters": metrics.parameter_count(student),
            **info,
            "before": {kind: {"perplexity": round(q.perplexity, 3), "vs_dense": q.vs(dense_q[kind]).record()}
                       for kind, q in before_q[name].items()},
            "after": {kind: {"perplexity": round(q.perplexity, 3), "vs_dense": q.vs(dense_q[kind]).record()}
                      for kind, q in after_q[name].items()},
        }
        print(f"{name}: prose {rows[name]['before']['eval']['vs_dense']['ratio']:.3f}x -> "
              f"{rows[name]['after']['eval']['vs_dense']['text']}; code -> "
              f"{rows[name]['after']['heldout']['vs_dense']['text']}", flush=True)
    names = list(cuts)
    pairs = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pairs[f"{a} | {b}"] = {stage: {kind: qs[a][kind].vs(qs[b][kind]).record() for kind in ("eval", "heldout")}
                                   for stage, qs in (("before", before_q), ("after", after_q))}

    # the clock: dense and the four recovered cuts, interleaved run by run
    timed = {"dense": dense, **students}
    pre = timing.compare_prefill(timed, tokens=128, runs=args.runs, warmup=2, threads=2)
    fns, setup = speed.decode_workloads(timed, 64, 16)
    dec = timing.time_side_by_side(fns, setup=setup, runs=args.runs, warmup=1, threads=2, per=16)
    dense_flops, dense_params = metrics.flops_per_token(dense, 128), metrics.parameter_count(dense)
    for name, student in students.items():
        rows[name]["prefill"] = speedup_dict(timing.speedup(pre["dense"], pre[name]),
                                             speed.ideal_speedup(dense_flops, metrics.flops_per_token(student, 128)))
        rows[name]["decode"] = speedup_dict(timing.speedup(dec["dense"], dec[name]),
                                            dense_params / metrics.parameter_count(student))
        print(f"{name}: prefill {timing.speedup(pre['dense'], pre[name])}, "
              f"decode {timing.speedup(dec['dense'], dec[name])}", flush=True)
    record = {
        "model": MODEL,
        "budget_layers": args.layers,
        "budget_parameters": args.layers * budget.layer_parameters(dense),
        "dense": {"parameters": dense_params,
                  "perplexity": {kind: round(q.perplexity, 3) for kind, q in dense_q.items()},
                  "prefill_ms": round(pre["dense"].median_ms, 2), "decode_ms_per_token": round(dec["dense"].median_ms, 2)},
        "plan": asdict(plan),
        "scores": {**budget.SCORES, "windows": plan.n_score},  # what chose each cut, on how many training windows
        "tokens_per_cut": plan.tokens,
        "cuts": rows,
        "pairs": pairs,
        "times_ms": {"prefill": {label: [round(t, 3) for t in m.times_ms] for label, m in pre.items()},
                     "decode": {label: [round(t, 3) for t in m.times_ms] for label, m in dec.items()}},
        "timing": f"prefill 1 x 128 tokens, decode per token after a 64-token prompt (16 tokens); "
                  f"{args.runs} paired runs, interleaved; speedup = median of the paired ratios (IQR)",
        "provenance": provenance.record(f"python bench/pareto.py --layers {args.layers} --steps {args.steps} "
                                        f"--runs {args.runs}", time.perf_counter() - started),
    }
    out = Path(args.out)
    (out / "pareto.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out / 'pareto.json'} in {record['provenance']['seconds']} s")


if __name__ == "__main__":
    main()
