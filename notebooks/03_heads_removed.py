# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
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

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "gpt2" (needs the internet once)
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens

# %%
from course_lib.core import arch, metrics
from course_lib.pruning import heads
from course_lib.runtime import speed
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model
shape = arch.attention_shape(model, 0)
print(f"{shape.n_heads} query heads, {shape.n_kv_heads} KV heads per layer, head_dim {shape.head_dim}")

# %% [markdown]
# ## Baseline, and where the FLOPs of one token go

# %%
dense_ppl = run.perplexity()
dense_flops = metrics.flops_per_token(model, context=128)
print(f"dense perplexity: {dense_ppl:.2f}")
for part, share in dense_flops.shares().items():
    print(f"{part:>22}: {share:6.1%}")

# %% [markdown]
# Attention (projections and scores) is only about a quarter of the work. The
# `lm_head` — one 49152 × 576 matrix that scores every word of the vocabulary —
# is about a fifth, and no head removal touches it. Keep that in mind.
#
# ## The mechanism: slicing the projections
#
# Removing heads of layer 0 keeps only some rows of `q_proj` (and of `k_proj` /
# `v_proj` when a whole KV group goes) and the matching columns of `o_proj`.

# %%
scores = heads.head_importance_contribution(model, run.windows.calib)  # see lesson 2
request = heads.least_important_groups(scores, 1, model)
print("layer 0 removes heads", request[0])
copy_one_layer = run.copy_model()
heads.remove_heads(copy_one_layer, {0: request[0]})
before, after = arch.attention(arch.decoder_layers(model)[0]), arch.attention(arch.decoder_layers(copy_one_layer)[0])
for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    print(f"{name}: {tuple(getattr(before, name).weight.shape)} -> {tuple(getattr(after, name).weight.shape)}")
kept_rows = sorted(set(range(shape.n_heads)) - set(request[0]))
print("kept query heads:", kept_rows, "-> q_proj rows", [f"{h * 64}..{h * 64 + 63}" for h in kept_rows])
del copy_one_layer

# %% [markdown]
# ## Remove heads in every layer, measure, compare with the ideal
#
# Under GQA we remove whole KV groups: 3 query heads per layer (one group, with
# its KV head) or 6 (two groups). The *ideal* speedup is the
# ratio of FLOPs per token; the *measured* one times the dense and the pruned
# model side by side.

# %%
rows = []
pruned_models = {}
for count in (3, 6):
    pruned, _ = speed.pruned_copy(model, lambda m: heads.remove_heads(
        m, heads.least_important_groups(scores, count // 3, m)))
    pruned_models[count] = pruned
    params = metrics.count_parameters(pruned)["total"]
    ideal = speed.ideal_speedup(dense_flops, metrics.flops_per_token(pruned, context=128))
    rows.append({"heads removed per layer": count, "parameters (M)": round(params / 1e6, 1),
                 "perplexity": run.perplexity(pruned), "ideal speedup": round(ideal, 3)})
    print(rows[-1])

# %% tags=["nbval-ignore-output"]
measured = {}
for count, pruned in pruned_models.items():
    comparison = speed.measure_speedup(model, pruned, label=f"-{count} heads", tokens=128, runs=9)
    measured[count] = comparison
    print(f"{count} heads removed: measured {comparison.prefill_speedup:.2f}x vs ideal "
          f"{comparison.ideal_speedup:.2f}x ({comparison.efficiency:.0%} of ideal)")

# %%
print("removing 6 heads per layer measured faster than dense:", measured[6].prefill_speedup > 1)

# %% tags=["nbval-ignore-output"]
counts = list(measured)
plots.curves(counts, {"measured": [measured[c].prefill_speedup for c in counts]},
             xlabel="heads removed per layer (of 9)", ylabel="prefill speedup vs dense",
             reference={"ideal (FLOPs)": [measured[c].ideal_speedup for c in counts]},
             title="structured head removal: measured vs ideal")

# %%
plots.curves([0] + counts, {"perplexity": [dense_ppl] + [r["perplexity"] for r in rows]},
             xlabel="heads removed per layer (of 9)", ylabel="perplexity", logy=True,
             title="the price in quality")

# %% [markdown]
# ## Why is the measured speedup below the ideal?

# %% tags=["nbval-ignore-output"]
print(speed.explain_gap(dense_flops, metrics.flops_per_token(pruned_models[6], context=128),
                        measured[6].prefill_speedup))

# %% [markdown]
# ## Explore
#
# The slider sets the fraction of heads removed in every layer (1/3 = one KV
# group, 2/3 = two groups).

# %%
def prune(model, method, fraction):
    return heads.remove_heads(model, heads.least_important_groups(scores, round(fraction * 3), model))


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
# - Removing heads shrinks `q/k/v/o` and the attention scores: fewer FLOPs, real speed.
# - The ideal speedup is modest because attention is a quarter of the FLOPs here;
#   the measured one is lower still (see the gap explained above).
# - Quality drops fast on a 135M model: every head carries more than in a 7B one.
#   Recovering it takes fine-tuning or distillation (the next stage of the pipeline).
# - With GPT-2 (12 heads, no GQA) any number of heads per layer can go; on a GPU,
#   use longer prompts or batches to see the speedup.

# %% tags=["nbval-ignore-output"]
summary.record("03", MODEL, dense_ppl, rows[0]["perplexity"], 1 / measured[3].prefill_speedup,
               "1 KV group (3 of 9 heads) removed per layer")
