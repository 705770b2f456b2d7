# ---
# jupyter:
#   course:
#     replay_rtol: 0.002
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,course,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lesson 3 — Structured pruning: removing attention heads
#
# *Follows `pruning_structured_head_pruning_example_gpt2.py`, on SmolLM2-135M
# (offline); GPT-2 is one parameter away.*
#
# Lesson 2 showed that removing a head computes the same function as zeroing it,
# but with smaller matrices. Here we remove more heads, layer by layer, and ask
# the engineer's question: **how much faster should it be, and how much faster
# is it?** The first answer comes from counting FLOPs, the second from the clock.
#
# <!-- quoted: the replay tolerance this notebook's metadata sets (course.replay_rtol) -->
# *Replaying this lesson elsewhere*: its printed numbers are compared with the stored ones
# within 0.2% (or one unit of the last digit); timings are not compared (lesson 0).

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "gpt2" (needs the internet once); stand-in: "tiny-gpt2-124m"
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens
QUICK = False  # True: fewer timing runs (to check that the lesson runs, not to read its timings)
TOKENS = 512  # prompt length: the FLOPs (the ideal) and the clock are counted at the same length

# %%
from course_lib.core import arch, metrics, timing
from course_lib.pruning import heads
from course_lib.runtime import speed
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model
geo = arch.geometry(model)  # layers, heads, KV heads, head_dim, projection names: read from the model
print(geo.describe())

# %% [markdown]
# ## Baseline, and where the FLOPs of one token go

# %%
dense_quality = run.quality()  # per-token NLL: the perplexity, and paired comparisons with it
dense_ppl = round(dense_quality.perplexity, 2)
dense_flops = metrics.flops_per_token(model, context=TOKENS)
print(f"dense perplexity: {dense_ppl:.2f} ({N_EVAL} windows x 128 tokens, as in lessons 2 and 4)")
print(f"FLOPs of one token attending to {TOKENS} tokens (the prompt length timed below):")
for part, share in dense_flops.shares().items():
    print(f"{part:>22}: {share:6.1%}")
print(f"lm_head: {geo.vocab} x {geo.hidden} (one row per word of the vocabulary)")

# %% [markdown]
# The shares above bound what head removal can buy: it shrinks the attention
# projections and scores only. The `lm_head` scores every word of the vocabulary
# for every token, and no head removal touches it. Keep that in mind.
#
# ## The mechanism: slicing the projections
#
# Removing heads of layer 0 keeps only some rows of the query projection (and of
# the key/value projections when a whole KV group goes, or always without GQA) and
# the matching columns of the output projection.
#
# Under GQA not every count is possible (lesson 2's exercise): we ask for a third
# and two thirds of the heads and take the nearest valid sets, the lowest-scoring
# ones (`heads.nearest_gqa_removal`).

# %%
scores = heads.head_importance_contribution(model, run.windows.calib)  # see lesson 2


def plan(fraction):
    """{layer: heads}: in every layer, the lowest-scoring valid set nearest `fraction` of the heads."""
    wish = max(1, round(fraction * geo.n_heads))
    return {layer: heads.nearest_gqa_removal(geo.n_heads, geo.n_kv_heads, wish, scores[layer])
            for layer in range(geo.n_layers)}


request = plan(1 / 3)
print(f"layer 0 removes heads {request[0]} ({len(request[0])} of {geo.n_heads})")
copy_one_layer = run.copy_model()
heads.remove_heads(copy_one_layer, {0: request[0]})
before, after = arch.attention(arch.decoder_layers(model)[0]), arch.attention(arch.decoder_layers(copy_one_layer)[0])
for name in geo.attn_projections:
    print(f"{name}: {tuple(arch.weight_matrix(getattr(before, name)).shape)} -> "
          f"{tuple(arch.weight_matrix(getattr(after, name)).shape)}  (out x in)")
kept = sorted(set(range(geo.n_heads)) - set(request[0]))
print("kept query heads:", kept, "-> query rows",
      [f"{geo.head_columns(h).start}..{geo.head_columns(h).stop - 1}" for h in kept[:6]], "..." if len(kept) > 6 else "")
del copy_one_layer

# %% [markdown]
# ## Remove heads in every layer, measure, compare with the ideal
#
# A third of the heads, then two thirds. The *ideal* speedup is the ratio of
# FLOPs per token; the *measured* one times the dense and the pruned model side by
# side. Predict the ideal speedup of removing two thirds of the heads first.

# %% tags=["prediction"]
my_guess_ideal = 1.5  # your prediction: dense FLOPs / pruned FLOPs, two thirds of the heads removed

# %%
rows, pruned_models, qualities, ideals = [], {}, {}, {}
for fraction in (1 / 3, 2 / 3):
    request = plan(fraction)
    count = len(request[0])
    pruned, _ = speed.pruned_copy(model, lambda m: heads.remove_heads(m, request))
    pruned_models[count], qualities[count] = pruned, run.quality(pruned)
    params = metrics.count_parameters(pruned)["total"]
    ideals[count] = speed.ideal_speedup(dense_flops, metrics.flops_per_token(pruned, context=TOKENS))
    rows.append({"heads removed per layer": count, "parameters (M)": round(params / 1e6, 2),
                 "perplexity": round(qualities[count].perplexity, 2), "ideal speedup": round(ideals[count], 3)})
    print(rows[-1])
counts = list(pruned_models)
print(f"ideal speedup with {counts[-1]} of {geo.n_heads} heads removed: {rows[-1]['ideal speedup']:.2f}x "
      f"(you guessed {my_guess_ideal:.2f}x)")

# %% [markdown]
# Now the clock, on a prompt of `TOKENS` = 512 tokens, the length the ideal above was
# counted at: the attention scores, which shrink with the heads, weigh more in a long
# prompt, and one run lasts long enough to rise above the machine's jitter. What fraction
# of the ideal will it show? (1.0: all of it.)

# %% tags=["prediction"]
my_guess_efficiency = 0.7  # your prediction: measured speedup / ideal speedup

# %% tags=["nbval-ignore-output"]
measured, verdicts = {}, {}
for count, pruned in pruned_models.items():
    label = f"-{count} heads"
    comparison = speed.measure_speedup(model, pruned, label=label, tokens=TOKENS if not QUICK else 64,
                                       runs=3 if QUICK else 7, ideal=ideals[count])
    measured[count], verdicts[count] = comparison, comparison.paired
    print(f"{count} heads removed: measured {verdicts[count]}; ideal {comparison.ideal_speedup:.2f}x "
          f"({comparison.efficiency:.0%} of ideal)" + (f", re-measured {comparison.remeasured}x" if comparison.remeasured else ""))
most = counts[-1]
s = verdicts[most]
relation = ("below the ideal" if s.high < measured[most].ideal_speedup else
            "above the ideal" if s.low > measured[most].ideal_speedup else "at the ideal, within noise")
print(f"{most} heads removed: the measured speedup is {relation} "
      f"(you guessed {my_guess_efficiency:.0%} of the ideal)")

# %%
run.claim(f"removing {most} heads per layer makes the model faster than dense, and no faster than "
          f"{speed.PLAUSIBLE_MARGIN:.2f} x its ideal allows", s.verdict == "faster" and measured[most].plausible,
          f"ideal {measured[most].ideal_speedup:.2f}x; measured {s}", needs_real_model=True)

# %% tags=["nbval-ignore-output"]
plots.curves(counts, {"measured": [measured[c].prefill_speedup for c in counts]},
             xlabel=f"heads removed per layer (of {geo.n_heads})", ylabel="prefill speedup vs dense",
             reference={"ideal (FLOPs)": [measured[c].ideal_speedup for c in counts]},
             title="structured head removal: measured vs ideal")

# %%
plots.curves([0] + counts, {"perplexity": [dense_ppl] + [r["perplexity"] for r in rows]},
             xlabel=f"heads removed per layer (of {geo.n_heads})", ylabel="perplexity", logy=True,
             title="the price in quality")

# %%
doubled = qualities[most].vs(dense_quality)  # paired, same tokens
run.claim(f"removing {most} of {geo.n_heads} heads per layer more than doubles the perplexity",
          doubled.low > 2, str(doubled), needs_real_model=True)

# %% [markdown]
# ## Repairing what the heads wrote
#
# After the cut, each attention output projection (`o_proj`; GPT-2's `c_proj`)
# reads only the kept heads. Their outputs are correlated with the removed heads'
# outputs, so a *different* projection can write much of what the dense layer
# wrote. The best one on the calibration tokens has a closed form, a ridge
# least-squares fit `W' = (C + λW_K)(G + λI)⁻¹`: `G` is the Gram matrix of the
# kept heads' outputs, `C` their correlation with the dense layer's output, and
# the ridge pulls towards the kept weights `W_K`, so directions the calibration
# does not pin down stay as they were (`course_lib/recover/repair.py`: the same
# algebra as SparseGPT's update, on a smaller matrix). Layer by layer, each fit on
# the inputs the already-repaired layers produce; no gradient, seconds.
#
# **Predict**: will the repaired model's perplexity land nearer the dense one or
# the cut one?

# %%
from course_lib.recover import repair

cut = pruned_models[counts[0]]  # the smaller cut of the table above
held_before = repair.reconstruction_errors(cut, model, run.windows.eval[:4])
fix = repair.refit(cut, model, run.windows.calib)
held_after = repair.reconstruction_errors(cut, model, run.windows.eval[:4])
repaired = run.quality(cut)
repaired_ppl = round(repaired.perplexity, 2)
errors = fix.info["errors"]
lowered = sum(held_after[n] < held_before[n] for n in held_before)
print(f"output projection refit in {sum(e['refit'] for e in errors.values())} of {len(errors)} layers "
      f"(fit on {fix.info['fit_windows']} calibration windows; by rule a refit is kept only where it lowers the "
      f"error both on them and on the {fix.info['check_windows']} calibration windows kept out of the fit)")
print(f"error on the evaluation windows (never fitted, never checked) lowered in {lowered} of {len(held_before)} layers")
print(f"perplexity: dense {dense_ppl:.2f}, {counts[0]} heads removed {rows[0]['perplexity']:.2f}, "
      f"after the refit {repaired_ppl:.2f}")
run.claim("the refit lowers the error on the evaluation windows in most layers", lowered > len(held_before) / 2,
          f"{lowered} of {len(held_before)} layers", needs_real_model=True)
won = repaired.vs(qualities[counts[0]])  # paired: the same cut before and after the refit
run.claim("the refit lowers the perplexity after head removal", won.verdict == "lower", str(won),
          needs_real_model=True)
recovered_share = (rows[0]["perplexity"] - repaired_ppl) / (rows[0]["perplexity"] - dense_ppl)
print(f"the refit wins back {recovered_share:.0%} of the perplexity the cut cost")
fix.restore()  # back to the plain cut, for what follows
print(f"restored: perplexity {run.perplexity(cut):.2f}")

# %% [markdown]
# ## Measured vs ideal: what the FLOPs count leaves out
#
# The ideal assumes time follows FLOPs. The account below is printed with this
# model's numbers; the measured figure is the median of the runs timed above.

# %% tags=["nbval-ignore-output"]
print(speed.explain_gap(dense_flops, metrics.flops_per_token(pruned_models[most], context=TOKENS),
                        measured[most].prefill_speedup))

# %% [markdown]
# ## Explore
#
# The slider sets the fraction of heads removed in every layer (the nearest valid
# set under GQA, as above).

# %%
def prune(model, method, fraction):
    return heads.remove_heads(model, plan(fraction))


explorer = Explorer(model, run.windows.eval[:2], prune, methods=("remove",),
                    amount_label="fraction of heads removed", amount_max=2 / 3, step=1 / 3,
                    title="removing attention heads")
explorer.point("remove", 1 / 3)  # measured now, so the slider answers at once
print(f"{len(explorer.cache)} points measured")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
#
# Write `ideal_speedup(hidden, n_heads, head_dim, removed, vocab)` for a model of one
# multi-head attention layer plus the lm_head: per token, the q/k/v/o projections
# cost `2 * 4 * hidden * n_heads * head_dim` FLOPs and the lm_head `2 * hidden * vocab`.

# %% tags=["solution"]
def ideal_speedup(hidden, n_heads, head_dim, removed, vocab):
    """Dense FLOPs / pruned FLOPs per token."""
    ### BEGIN SOLUTION
    lm_head = 2 * hidden * vocab
    dense = 2 * 4 * hidden * n_heads * head_dim + lm_head
    pruned = 2 * 4 * hidden * (n_heads - removed) * head_dim + lm_head
    return dense / pruned
    ### END SOLUTION


# %%
checks.check_ideal_speedup(ideal_speedup)

# %% [markdown]
# ## Takeaways
#
# - Removing heads shrinks `q/k/v/o` and the attention scores: fewer FLOPs, and a
#   speedup whose verdict is printed above against the spread of the runs.
# - The ideal speedup is bounded by the share of the FLOPs that attention holds (the
#   shares printed at the top); where the clock falls short of it, the account above says why.
# - Quality drops fast as heads go (the perplexity curve above). A closed-form refit
#   of the output projections wins part of it back in seconds (the share is printed
#   above); lesson 4 adds distillation from the dense model.
# - With GPT-2 (12 heads, no GQA) any number of heads per layer can go; under GQA
#   only the counts lesson 2's exercise lists. On a GPU, use longer prompts or
#   batches to see the speedup.

# %% tags=["nbval-ignore-output"]
summary.record("03", MODEL, dense_ppl, rows[0]["perplexity"], 1 / measured[counts[0]].prefill_speedup,
               f"{counts[0]} of {geo.n_heads} heads removed per layer")
