"""Recovery benchmark: prune SmolLM2 four ways, then refit and distil; perplexity, time, speedup.

    PYTHONPATH=. python bench/recovery.py [--steps 20] [--out bench]

Writes bench/recovery.json and bench/recovery.md (the section of bench/results.md;
`python -m course_lib bench --render` puts it there without measuring the rest again).
Everything runs on the CPU; one row takes a few minutes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import torch

from course_lib.core import data, metrics, models
from course_lib.pruning import heads as H
from course_lib.pruning import layers as Lyr
from course_lib.pruning import mlp as M
from course_lib.pruning import recipes
from course_lib.recover import distil as D
from course_lib.recover import repair as R
from course_lib.runtime import speed


def configurations(model, calib):
    """name -> a function that prunes a model in place (scores computed on the dense model)."""
    act = M.neuron_importance_activation(model, calib[:8])
    head_scores = H.head_importance_contribution(model, calib[:8])
    bi = Lyr.block_influence(model, calib[:8])
    return {
        "MLP neurons 25% (activation score)":
            lambda m: M.remove_neurons(m, recipes.neurons_request(m, 0.25, act)),
        "MLP neurons 50% (activation score)":
            lambda m: M.remove_neurons(m, recipes.neurons_request(m, 0.50, act)),
        "one KV group per layer (1 of 3, contribution score)":
            lambda m: H.remove_heads(m, H.least_important_groups(head_scores, 1, m)),
        "20% of layers (6 of 30, block influence)":
            lambda m: Lyr.remove_layers(m, Lyr.least_important_layers(bi, Lyr.layers_for_fraction(m, 0.2))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default=None, help="run configurations whose name contains this")
    parser.add_argument("--out", default="bench")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="combine the recovery.json of runs made with --only into OUT")
    parser.add_argument("--render", action="store_true",
                        help="write OUT/recovery.md again from OUT/recovery.json and recovery_curve.json")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, Path(args.out))
    if args.render:
        part = json.loads((Path(args.out) / "recovery.json").read_text())
        page = Path(args.out) / "recovery.md"
        notes = kept_notes(page.read_text()) if page.is_file() else ""
        page.write_text(markdown(part["meta"], part["rows"], Path(args.out), notes))
        return None
    torch.manual_seed(0)
    torch.set_num_threads(2)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    dense, tok = models.load("smollm2-135m")
    win = data.windows_for(tok, "smollm2-135m", seq_len=256, n_eval=args.n_eval, n_calib=32)
    held = data.windows_for(tok, "smollm2-135m", source="python-source", seq_len=256, n_eval=4,
                            n_calib=0).eval

    def ppl(m):
        return metrics.perplexity(m, win.eval), metrics.perplexity(m, held)

    dense_ppl = ppl(dense)
    print(f"dense: eval {dense_ppl[0]:.2f}  held-out {dense_ppl[1]:.2f}", flush=True)
    rows = []
    for name, prune in configurations(dense, win.calib).items():
        if args.only and args.only not in name:
            continue
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        prune(model).make_permanent()
        prune_s = time.perf_counter() - t0
        row = {"config": name, "prune_seconds": prune_s, "pruned": ppl(model)}
        if R.changed_projections(model, dense) if len(Lyr.kept_layers(model)) == 30 else False:
            t0 = time.perf_counter()
            handle = R.refit(model, dense, win.calib)
            row["refit_seconds"] = time.perf_counter() - t0
            row["refit"] = ppl(model)
            errs = handle.info["errors"]
            row["refit_kept"] = f"{sum(e['refit'] for e in errs.values())}/{len(errs)}"
        t0 = time.perf_counter()
        _, report = D.distil(model, dense, win.calib, steps=args.steps, lr=args.lr,
                             batch_size=args.batch_size, quiet=True)
        row["distil_seconds"] = time.perf_counter() - t0
        row["distil"] = ppl(model)
        cmp = speed.measure_speedup(dense, model, "pruned", tokens=128, runs=args.runs)
        row["prefill_speedup"] = cmp.prefill_speedup
        row["ideal_speedup"] = cmp.ideal_speedup
        m = cmp.measurements
        row["speedup_range"] = [m["prefill dense"].median_ms / m["prefill pruned"].median_ms]
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model
    meta = {"dense": dense_ppl, "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
            "seq_len": 256, "n_eval": args.n_eval, "heldout": "python-source 4 x 256",
            "load_start": load_start, "load_end": os.getloadavg()[0],
            "wall_seconds": time.perf_counter() - started, "torch": torch.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}
    out = Path(args.out)
    (out / "recovery.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "recovery.md").write_text(markdown(meta, rows, out))
    print(markdown(meta, rows, out))


def merge(folders, out: Path) -> None:
    """One table from several partial runs (e.g. one configuration per process, run in parallel)."""
    parts = [json.loads((Path(f) / "recovery.json").read_text()) for f in folders]
    order = ["MLP neurons 25%", "MLP neurons 50%", "one KV group", "20% of layers"]
    rows = [row for part in parts for row in part["rows"]]
    rows.sort(key=lambda r: next((i for i, c in enumerate(order) if r["config"].startswith(c)), 99))
    meta = dict(parts[0]["meta"])
    meta["load_start"] = max(p["meta"]["load_start"] for p in parts)
    meta["load_end"] = max(p["meta"]["load_end"] for p in parts)
    meta["wall_seconds"] = max(p["meta"]["wall_seconds"] for p in parts)
    meta["parallel_runs"] = len(parts)
    (out / "recovery.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "recovery.md").write_text(markdown(meta, rows, out))
    print(markdown(meta, rows, out))


def curve_section(record: dict, out: Path) -> str:
    """The long recovery's cost curve (``make recover``: recovery_curve.json) as markdown + a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan, d = record["plan"], record["dense"]
    curve = record["curve"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for kind, label in (("eval", f"prose (protocol, {plan['n_eval']} x {plan['seq_len']})"),
                        ("heldout", f"held-out code ({plan['n_heldout']} x {plan['seq_len']})")):
        ax.plot([p["tokens"] / 1e3 for p in curve], [p[kind] / d[kind] for p in curve], "o-", label=label)
    ax.axhline(1.10, color="grey", ls="--", lw=1, label="1.10x dense")
    ax.set_xlabel("distillation tokens (thousands)")
    ax.set_ylabel("perplexity / dense")
    ax.set_title(f"What recovery costs: SmolLM2, {plan['fraction']:.0%} of every MLP removed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recovery_curve.png", dpi=110)
    plt.close(fig)
    refit = record["refit"]
    half = min(curve, key=lambda p: abs(p["tokens"] - curve[-1]["tokens"] / 2))  # the run's middle point

    def verdict(kind: str) -> str:  # decided by the paired interval, not by the estimate alone
        p = record["paired"][kind]
        return ("within 1.10x" if p["high"] <= 1.10 else "above 1.10x" if p["low"] > 1.10
                else "not distinguishable from 1.10x")
    verdicts = {k: verdict(k) for k in ("eval", "heldout")}
    met = all(v == "within 1.10x" for v in verdicts.values())
    lines = [
        "",
        "## What recovery costs: the long recovery (`make recover`)",
        "",
        f"- Cut: {plan['fraction']:.0%} of every layer's MLP neurons by {plan['score']} on "
        f"{plan['n_score']} windows of the training text; "
        f"{record['parameters']['dense']:,} -> {record['parameters']['recovered']:,} parameters "
        f"({record['parameters']['recovered'] / record['parameters']['dense']:.1%}).",
        f"- Text: {plan['n_prose']} pydoc windows (the start of the text) and {plan['n_code']} windows of "
        "Python source (`python-train`: standard-library modules the held-out code does not contain), "
        f"alternating, {plan['seq_len']} tokens each; validation: "
        f"{plan['n_valid']} of each kind that are never trained on.",
        f"- Refit (`repair.refit`, 32 training windows): {'kept' if refit['kept'] else 'undone'} "
        f"(validation perplexity {refit['valid_before']:.2f} -> {refit['valid_after']:.2f}).",
        f"- Distillation: KL(dense || student), AdamW, {plan['steps']} steps of {plan['batch_size']} windows "
        f"({record['tokens']:,} tokens), peak lr {plan['lr']:g}, {plan['warmup']} warm-up steps, cosine to a "
        f"tenth; {record['distil_seconds'] / 60:.0f} min of the {record['provenance']['seconds'] / 60:.0f} min wall time.",
        f"- Built by `{record['provenance']['command']}` at commit {record['provenance']['commit']} on "
        f"{record['provenance']['machine']} ({record['provenance']['threads']} torch threads, torch "
        f"{record['provenance']['torch']}), {record['provenance']['measured']}; cache key `{record['key']}`.",
        "- The curve's points are one run's checkpoints under the schedule of the whole run (the "
        "learning rate is not yet annealed at the middle points: a shorter run would end a little lower).",
        "",
        "| distillation tokens | prose (x dense) | held-out code (x dense) | minutes |",
        "|---:|---:|---:|---:|",
        f"| dense | {d['eval']:.2f} | {d['heldout']:.2f} | |",
        f"| pruned, no recovery | {record['pruned']['eval']:.2f} ({record['pruned']['eval'] / d['eval']:.2f}x) | "
        f"{record['pruned']['heldout']:.2f} ({record['pruned']['heldout'] / d['heldout']:.2f}x) | |",
    ]
    start = " (after the refit)" if refit["kept"] else " (the refit undone)"  # the curve's step 0
    for p in curve:
        lines.append(f"| {p['tokens']:,}{start if not p['tokens'] else ''} | {p['eval']:.2f} ({p['eval'] / d['eval']:.2f}x) | "
                     f"{p['heldout']:.2f} ({p['heldout'] / d['heldout']:.2f}x) | {p['seconds'] / 60:.1f} |")
    lines += [
        "",
        "![recovery cost curve](recovery_curve.png)",
        "",
        f"Recovered vs dense, paired on the same tokens: prose {record['paired']['eval']['text']}; held-out "
        f"code {record['paired']['heldout']['text']}.",
        f"Where the tokens went: the first {curve[1]['tokens']:,} took prose from "
        f"{curve[0]['eval'] / d['eval']:.2f}x to {curve[1]['eval'] / d['eval']:.2f}x dense and code from "
        f"{curve[0]['heldout'] / d['heldout']:.2f}x to {curve[1]['heldout'] / d['heldout']:.2f}x; the second half "
        f"of the run ({half['tokens']:,} -> {curve[-1]['tokens']:,} tokens) moved prose "
        f"{half['eval'] / d['eval']:.2f}x -> {curve[-1]['eval'] / d['eval']:.2f}x and code "
        f"{half['heldout'] / d['heldout']:.2f}x -> {curve[-1]['heldout'] / d['heldout']:.2f}x.",
        f"Within 1.10x dense on both texts, decided by the intervals: **{'yes' if met else 'no'}** "
        f"(prose {record['paired']['eval']['ratio']:.3f}x: {verdicts['eval']}; held-out code "
        f"{record['paired']['heldout']['ratio']:.3f}x: {verdicts['heldout']}).",
    ]
    return "\n".join(lines) + "\n"


NOTES = "What the table says:"  # the written reading of the table, kept when the page is rendered again


def kept_notes(page: str) -> str:
    """The written notes under the table (from ``NOTES`` to the next section), to render again."""
    start = page.find("\n" + NOTES)
    if start < 0:
        return ""
    end = page.find("\n## ", start)
    return page[start:end if end >= 0 else len(page)].strip("\n") + "\n"


def markdown(meta, rows, out: Path | None = None, notes: str = "") -> str:
    d = meta["dense"]

    def cell(pair):
        return f"{pair[0]:.2f} / {pair[1]:.2f}" if pair else "n/a"

    lines = [
        "## Recovery: prune, then refit and distil (smollm2-135m)",
        "",
        f"- Perplexity as `eval / held-out`: eval = {meta['n_eval']} x 256 windows from the middle of the "
        f"pydoc text (course protocol), held-out = {meta['heldout']} (another kind of text, never "
        f"trained on). Dense: **{d[0]:.2f} / {d[1]:.2f}**.",
        "- Refit: closed-form ridge least squares of each changed output projection "
        "(`recover.repair.refit`: layer by layer, ridge towards the kept weights, damp 0.1) on 32 x 256 calibration windows (start of the pydoc text).",
        f"- Distillation: KL(dense || pruned), AdamW lr {meta['lr']}, {meta['steps']} steps of "
        f"{meta['batch_size']} x 256 calibration tokens, embeddings frozen (`recover.distil.distil`), "
        "after the refit where there is one.",
        "- Speedup: prefill 1 x 128, dense and pruned interleaved in one run, median of 5 "
        "(`speed.measure_speedup`); ideal = FLOPs ratio.",
        f"- Machine: {meta['machine']}, 2 torch threads, torch {meta['torch']}; "
        + ("nothing else running" if max(meta['load_start'], meta['load_end']) < 2.5 else
           "**shared with other jobs**, times are noisy")
        + f" (load average {meta['load_start']:.1f} at start, {meta['load_end']:.1f} at end; this "
        f"run's own 2 threads count about 2). Wall time {meta['wall_seconds']:.0f} s"
        + (f" ({meta['parallel_runs']} configurations run in parallel processes)." if meta.get("parallel_runs") else "."),
        "",
        "| pruned | after pruning | after refit | after distillation | refit s | distil s "
        "| within 10% of dense (eval) | speedup measured | ideal |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        final = r["distil"]
        lines.append(
            f"| {r['config']} | {cell(r['pruned'])} | {cell(r.get('refit'))} | {cell(final)} | "
            f"{format(r['refit_seconds'], '.1f') if 'refit_seconds' in r else 'n/a'} | {r['distil_seconds']:.0f} | "
            f"{'yes' if final[0] <= 1.1 * d[0] else 'no'} ({final[0] / d[0]:.2f}x) | "
            f"{r['prefill_speedup']:.2f}x | {r['ideal_speedup']:.2f}x |")
    text = "\n".join(lines) + "\n" + ("\n" + notes if notes else "")
    curve = None if out is None else Path(out) / "recovery_curve.json"
    if curve is not None and curve.is_file():
        text += curve_section(json.loads(curve.read_text()), Path(out))
    return text


if __name__ == "__main__":
    main()
