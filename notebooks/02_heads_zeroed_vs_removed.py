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
# # Lesson 2 — Zeroing heads vs removing them
#
# *Follows `pruning_unstructured_heads_tinyllama.py`, on SmolLM2-135M (offline);
# TinyLlama-1.1B is one parameter away.*
#
# In lesson 1 we switched attention heads off by zeroing their weights, and the
# model did not get faster. Here we ask why, on a second model family that uses
# **grouped-query attention** (GQA), and then cut the very same heads *out*.
#
# You will measure:
# 1. zeroing a query head vs zeroing a whole key/value group;
# 2. that removing those heads gives **the same perplexity** as zeroing them;
# 3. that only the removed model is **faster**, because only its matrices shrank.

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "TinyLlama/TinyLlama-1.1B-Chat-v1.0" (needs the internet once)
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens (more: steadier numbers, slower)

# %%
import torch

from course_lib.core import arch, metrics
from course_lib.pruning import heads
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model

# %% [markdown]
# ## Baseline

# %%
dense_ppl = run.perplexity()
print(f"dense perplexity: {dense_ppl:.2f}")

# %% [markdown]
# ## Grouped-query attention in one picture
#
# SmolLM2 has 9 query heads but only 3 key/value heads: each KV head serves a
# *group* of 3 query heads. The projections show it in their shapes.

# %%
shape = arch.attention_shape(model, 0)
attention = arch.attention(arch.decoder_layers(model)[0])
for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    print(f"{name}: {tuple(getattr(attention, name).weight.shape)}")
groups = {kv: list(range(kv * shape.group_size, (kv + 1) * shape.group_size))
          for kv in range(shape.n_kv_heads)}
print(f"{shape.n_heads} query heads, {shape.n_kv_heads} KV heads, head_dim {shape.head_dim}")
print("query heads per KV head:", groups)

# %% [markdown]
# ## The mechanism: a head is a block of columns of `o_proj`
#
# The attention output is `o_proj @ concat(head_0, …, head_8)`. Head *h* is read
# through columns `h*64 … h*64+63` of `o_proj`; zeroing that block silences the
# head exactly. Below, head 4 of layer 0 is zeroed: a black band of 64 columns.

# %%
handle = heads.zero_heads(model, {0: [4]})
o_weight = attention.o_proj.weight.detach()
zero_columns = (o_weight == 0).all(dim=0).nonzero().flatten()
print(f"zeroed columns of o_proj: {zero_columns.min().item()}..{zero_columns.max().item()}")
fig = plots.mask_image((o_weight != 0)[:, 192:384], rows=64, cols=192,
                       title="layer 0 o_proj, columns 192-383 (head 3, 4, 5): black = zero")
handle.restore()
fig

# %% [markdown]
# ## Which heads matter least?
#
# We score each head by how much it actually adds to the layer's output on the
# calibration text: `|o_proj[:, slice_h] @ head_h(x)|`, averaged over tokens — the
# very thing zeroing removes. (Lesson 1 compared cheaper and costlier scores.)

# %%
scores = heads.head_importance_contribution(model, run.windows.calib)
plots.heatmap(scores, title="head importance: contribution to the layer output")

# %% [markdown]
# ## Two ways to drop a third of the heads
#
# - **one query head per group** (3 of 9): the KV heads all stay;
# - **a whole KV group**: 3 query heads *and* the KV head they share.

# %%
per_group = heads.least_important_heads(scores, count=3, model=model)  # one per group
whole_group = heads.least_important_groups(scores, 1, model)
print("layer 0, one per group :", per_group[0])
print("layer 0, a whole group :", whole_group[0])

# %%
results = {}
for label, request in (("one per group", per_group), ("whole KV group", whole_group)):
    handle = heads.zero_heads(model, request)
    results[label] = run.perplexity()
    handle.restore()
    print(f"zeroed, {label:>15}: perplexity {results[label]:.2f} (dense {dense_ppl:.2f})")

# %% [markdown]
# Same number of query heads, very different damage: a whole group is often
# a cheaper loss than one head from every group.
#
# ## Zeroed vs removed: the same model, different shapes
#
# Now take the whole-group choice and remove the *same* heads structurally:
# new, smaller `q/k/v/o` matrices (a whole group also takes its KV head along).

# %%
zeroed, removed = run.copy_model(), run.copy_model()
heads.zero_heads(zeroed, whole_group)
heads.remove_heads(removed, whole_group)
removed_attention = arch.attention(arch.decoder_layers(removed)[0])
for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
    print(f"{name}: {tuple(getattr(attention, name).weight.shape)} -> "
          f"{tuple(getattr(removed_attention, name).weight.shape)}")

# %%
ppl_zeroed, ppl_removed = run.perplexity(zeroed), run.perplexity(removed)
print(f"perplexity zeroed : {ppl_zeroed:.2f}")
print(f"perplexity removed: {ppl_removed:.2f}")
print("identical to 2 decimals:", ppl_zeroed == ppl_removed)

# %% [markdown]
# Same function, so same perplexity. Now the latency, all three measured side
# by side in one run (interleaved, so machine drift hits them equally).

# %% tags=["nbval-ignore-output"]
latency = run.latency({"dense": model, "zeroed": zeroed, "removed": removed}, tokens=256, runs=9)
zeroed_ratio = latency["zeroed"].ratio_to(latency["dense"])
removed_ratio = latency["removed"].ratio_to(latency["dense"])

# %%
ideal = metrics.flops_per_token(model).total / metrics.flops_per_token(removed).total
print(f"FLOPs per token: removal saves {1 - 1 / ideal:.1%} (ideal speedup {ideal:.3f})")
print("zeroing left latency within 15% of dense:", abs(zeroed_ratio - 1) < 0.15)
print("removing made it faster than zeroing    :", removed_ratio < zeroed_ratio)

# %% tags=["nbval-ignore-output"]
fig = plots.bars({"dense": 1.0, "zeroed 1 KV group": zeroed_ratio, "removed 1 KV group": removed_ratio},
                 ylabel="prefill latency / dense", reference=1.0,
                 title=f"same perplexity ({ppl_removed:.2f}), different speed")
fig

# %% [markdown]
# ## Explore
#
# Drag the slider: the fraction of heads pruned in every layer (one whole KV
# group at 1/3, two at 2/3). Switch between *zero* and *remove*: perplexity
# stays identical, only latency and parameters move.

# %%
def prune(model, method, fraction):
    request = heads.least_important_groups(scores, round(fraction * 3), model)  # 1/3 -> one group
    return heads.zero_heads(model, request) if method == "zero" else heads.remove_heads(model, request)


explorer = Explorer(model, run.windows.eval[:2], prune, methods=("remove", "zero"),
                    amount_label="fraction of heads", amount_max=2 / 3, step=1 / 3,
                    title="heads zeroed vs removed")
for method, fraction in (("zero", 1 / 3), ("remove", 1 / 3), ("remove", 2 / 3)):
    explorer.point(method, fraction)  # measured now, so the slider answers at once
print(f"{len(explorer.cache)} points measured")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
#
# Write `removable_heads(n_heads, n_kv_heads, n_remove)`: return `n_remove` query
# heads whose removal grouped-query attention accepts (every group that stays keeps
# the same number of query heads). The check tries layouts you cannot see.

# %% tags=["solution"]
def removable_heads(n_heads, n_kv_heads, n_remove):
    """Query-head indices to remove, valid under GQA."""
    ### BEGIN SOLUTION
    group = n_heads // n_kv_heads
    if n_remove % n_kv_heads == 0:  # the same number from every group
        per_group = n_remove // n_kv_heads
        return [g * group + i for g in range(n_kv_heads) for i in range(per_group)]
    return list(range(n_remove))  # whole groups, from the first one on
    ### END SOLUTION


# %%
checks.check_gqa_choice(removable_heads)

# %% [markdown]
# ## Takeaways
#
# - Zeroing a head and removing it compute the same function: same perplexity.
# - Only removal changes the shapes of `q/k/v/o`, so only removal is faster.
# - Under GQA, heads come in groups that share a KV head: you can remove the same
#   number from every group, or whole groups — anything else breaks the layout.
# - The speedup is modest because attention projections and scores are only a
#   quarter of SmolLM2's FLOPs per token (the MLP and the lm_head hold the rest):
#   lesson 3 measures the ideal against the real speedup.
# - On a GPU the picture is the same, but short prompts leave a GPU idle enough
#   that smaller matrices barely show; try longer prompts or bigger batches.

# %% tags=["nbval-ignore-output"]
summary.record("02", MODEL, dense_ppl, ppl_removed, removed_ratio,
               "1 KV group (3 of 9 heads) removed per layer")
