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
# 1. zeroing query heads spread over the groups vs zeroing a whole key/value group;
# 2. that removing those heads gives **the same perplexity** as zeroing them;
# 3. whether only the removed model is **faster**, because only its matrices shrank.
#
# <!-- quoted: the replay tolerance this notebook's metadata sets (course.replay_rtol) -->
# *Replaying this lesson elsewhere*: its printed numbers are compared with the stored ones
# within 0.2% (or one unit of the last digit); timings are not compared (lesson 0).

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "TinyLlama/TinyLlama-1.1B-Chat-v1.0" (needs the internet once); stand-in: "tiny-tinyllama"
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens (more: steadier numbers, slower)
QUICK = False  # True: fewer timing runs (to check that the lesson runs, not to read its timings)

# %%
from course_lib.core import arch, metrics, timing
from course_lib.pruning import heads
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model
geo = arch.geometry(model)  # layers, heads, KV heads, head_dim, projection names: read from the model
print(geo.describe())

# %% [markdown]
# ## Baseline
#
# Perplexity on this lesson's `N_EVAL` windows of 128 tokens (lesson 1 and lesson 5
# evaluate fewer windows, so their dense figures differ).

# %%
dense_quality = run.quality()  # per-token NLL: the perplexity, and paired comparisons with it
dense_ppl = round(dense_quality.perplexity, 2)
print(f"dense perplexity: {dense_ppl:.2f} ({N_EVAL} windows x 128 tokens)")

# %% [markdown]
# ## Grouped-query attention in one picture
#
# Under GQA a model has fewer key/value heads than query heads: each KV head serves
# a *group* of query heads. The projections show it in their shapes.

# %%
attention = arch.attention(arch.decoder_layers(model)[0])
for name in geo.attn_projections:
    print(f"{name}: {tuple(arch.weight_matrix(getattr(attention, name)).shape)}  (out x in)")
print(f"{geo.n_heads} query heads, {geo.n_kv_heads} KV heads, head_dim {geo.head_dim}")
if geo.gqa:
    print("query heads per KV head:", geo.groups())
else:
    print("no GQA: every query head has its own key/value head (a 'group' below is one head)")

# %% [markdown]
# ## The mechanism: a head is a block of columns of `o_proj`
#
# The attention output is `o_proj @ concat(head_0, …, head_{n-1})`. Head *h* is read
# through columns `h*head_dim … (h+1)*head_dim - 1` of `o_proj`; zeroing that block
# silences the head exactly. Below, one head of layer 0 is zeroed: a black band.

# %%
head = min(4, geo.n_heads - 1)
handle = heads.zero_heads(model, {0: [head]})
o_weight = arch.weight_matrix(model.get_submodule(geo.attn_module(0))).detach()
zero_columns = (o_weight == 0).all(dim=0).nonzero().flatten()
print(f"head {head}: zeroed columns of {geo.out_projection}: {zero_columns.min().item()}..{zero_columns.max().item()}")
run.claim(f"exactly head {head}'s {geo.head_dim} columns are zero",
          zero_columns.tolist() == list(geo.head_columns(head)))
shown = range(max(0, head - 1), min(geo.n_heads, head + 2))  # the head and its neighbours
first, last = shown[0] * geo.head_dim, shown[-1] * geo.head_dim + geo.head_dim
fig = plots.mask_image((o_weight != 0)[:, first:last], rows=min(64, geo.hidden), cols=last - first,
                       title=f"layer 0 {geo.out_projection}, columns {first}-{last - 1} "
                             f"(heads {list(shown)}): black = zero")
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
# ## Two ways to drop one group's worth of heads
#
# - **spread over the groups**: the same number of query heads from every group;
#   the KV heads all stay;
# - **a whole KV group**: its query heads *and* the KV head they share.
#
# Which of the two costs less perplexity? Predict first.

# %% tags=["prediction"]
my_guess_cheaper = "spread"  # your prediction: "spread" or "whole group"

# %%
n_remove = geo.group_size if geo.n_kv_heads > 1 else max(1, geo.n_heads // 4)
per_group_k = min(max(1, round(n_remove / geo.n_kv_heads)), geo.group_size - 1) if geo.gqa else 1
spread = heads.least_important_heads(scores, count=per_group_k * geo.n_kv_heads if geo.gqa else n_remove,
                                     model=model)
if geo.n_kv_heads > 1:
    whole_group = heads.least_important_groups(scores, 1, model)
else:  # one KV head: the only group is the whole layer, and a layer keeps a head
    whole_group = None
    print(f"this model has a single KV head: removing its group would remove all {geo.n_heads} heads. "
          "Only the spread choice exists; the lesson continues with it.")
choices = {"spread": spread} | ({"whole group": whole_group} if whole_group else {})
for label, request in choices.items():
    print(f"layer 0, {label:>11}: heads {request[0]} ({len(request[0])} of {geo.n_heads})")
if whole_group and len(spread[0]) != len(whole_group[0]):
    print(f"{n_remove} heads do not split evenly over {geo.n_kv_heads} groups: the spread choice takes the "
          f"nearest even count, {len(spread[0])} ({per_group_k} per group)")

# %%
qualities = {}
for label, request in choices.items():
    handle = heads.zero_heads(model, request)
    qualities[label] = run.quality()
    handle.restore()
    print(f"zeroed, {label:>11}: perplexity {qualities[label].perplexity:.2f} (dense {dense_ppl:.2f})")
results = {label: q.perplexity for label, q in qualities.items()}
cheaper = min(results, key=results.get)
print(f"the lower perplexity here: {cheaper} (you guessed {my_guess_cheaper})")
if len(results) == 2:
    same_count = len(spread[0]) == len(whole_group[0])
    group_vs_spread = qualities["whole group"].vs(qualities["spread"])  # paired, same tokens
    print(f"whole group vs spread, paired: {group_vs_spread}")
    run.claim("a whole KV group is a cheaper loss than " + ("the same number of heads spread over the groups"
              if same_count else "heads spread over the groups"), group_vs_spread.verdict == "lower",
              str(group_vs_spread), needs_real_model=True)

# %% [markdown]
# A whole group takes the query heads that all read the *same* keys and values,
# often redundant with each other; spreading the cut takes a head from every group.
#
# ## Zeroed vs removed: the same model, different shapes
#
# Now take the whole-group choice (or the spread one, where no group can go) and
# remove the *same* heads structurally: new, smaller `q/k/v/o` matrices (a whole
# group also takes its KV head along).

# %%
chosen = whole_group or spread
zeroed, removed = run.copy_model(), run.copy_model()
heads.zero_heads(zeroed, chosen)
heads.remove_heads(removed, chosen)
removed_attention = arch.attention(arch.decoder_layers(removed)[0])
for name in geo.attn_projections:
    print(f"{name}: {tuple(arch.weight_matrix(getattr(attention, name)).shape)} -> "
          f"{tuple(arch.weight_matrix(getattr(removed_attention, name)).shape)}")

# %%
ppl_zeroed, ppl_removed = run.perplexity(zeroed), run.perplexity(removed)
print(f"perplexity zeroed : {ppl_zeroed:.2f}")
print(f"perplexity removed: {ppl_removed:.2f}")
run.claim("zeroing and removing the same heads give the same perplexity (2 decimals)", ppl_zeroed == ppl_removed,
          f"{ppl_zeroed:.2f} vs {ppl_removed:.2f}")

# %% [markdown]
# Same function, so same perplexity. Now the latency, all three measured side
# by side in one run (interleaved, so machine drift hits them equally). Predict
# the speedup of the removed model first; the FLOPs count comes with the answer.

# %% tags=["prediction"]
my_guess_removed_speedup = 1.3  # your prediction: dense time / removed time

# %% tags=["nbval-ignore-output"]
dense = run.copy_model()  # a fresh copy, like the other two: memory placement treats all three alike
latency = run.latency({"dense": dense, "zeroed": zeroed, "removed": removed}, tokens=256, runs=3 if QUICK else 11,
                      # a spread too wide to decide "not faster" is measured again
                      decides=None if QUICK else lambda t: timing.speedup(t["dense"], t["zeroed"]).rules_out(
                          timing.NOT_FASTER_BOUND))
zeroed_speedup = timing.speedup(latency["dense"], latency["zeroed"])
removed_speedup = timing.speedup(latency["dense"], latency["removed"])
print("zeroed  vs dense  :", zeroed_speedup)
print("removed vs dense  :", removed_speedup)
print("removed vs zeroed :", timing.speedup(latency["zeroed"], latency["removed"]))

# %%
ideal = metrics.flops_per_token(model).total / metrics.flops_per_token(removed).total
print(f"FLOPs per token: removal saves {1 - 1 / ideal:.1%} (ideal speedup {ideal:.2f}x); "
      f"you guessed {my_guess_removed_speedup:.2f}x")
run.claim(f"zeroing does not make the model faster: the paired runs rule out a speedup above "
          f"{timing.NOT_FASTER_BOUND:.2f}x", zeroed_speedup.rules_out(timing.NOT_FASTER_BOUND),
          f"{zeroed_speedup.median:.2f}x, paired runs' IQR {zeroed_speedup.low:.2f}x-{zeroed_speedup.high:.2f}x",
          needs_real_model=True)

# %% tags=["nbval-ignore-output"]
zeroed_ratio = latency["zeroed"].ratio_to(latency["dense"])
removed_ratio = latency["removed"].ratio_to(latency["dense"])
fig = plots.bars({"dense": 1.0, "zeroed": zeroed_ratio, "removed": removed_ratio},
                 ylabel="prefill latency / dense", reference=1.0,
                 title=f"same perplexity ({ppl_removed:.2f}), different speed")
fig

# %% [markdown]
# The verdicts printed with the timings say whether the removed model was faster
# than the dense and the zeroed one on this run. Removing the heads printed above
# saves only the share of the FLOPs printed above (one KV group of SmolLM2: about 8%),
# an effect close to the noise of a busy machine: the verdict can read "within noise".
# Lesson 3 removes more heads, where the effect stands clear of the noise.
#
# ## Explore
#
# Drag the slider: the fraction of heads pruned in every layer, in whole KV groups
# (or, with a single KV head, in heads of that group). Switch between *zero* and
# *remove*: perplexity stays identical, only latency and parameters move.

# %%
units = geo.n_kv_heads if geo.n_kv_heads > 1 else geo.n_heads  # what the slider counts in


def prune(model, method, fraction):
    n = round(fraction * units)
    request = (heads.least_important_groups(scores, n, model) if geo.n_kv_heads > 1
               else heads.least_important_heads(scores, count=n, model=model))
    return heads.zero_heads(model, request) if method == "zero" else heads.remove_heads(model, request)


explorer = Explorer(model, run.windows.eval[:2], prune, methods=("remove", "zero"),
                    amount_label="fraction of heads", amount_max=(units - 1) / units, step=1 / units,
                    title="heads zeroed vs removed")
explorer.point("remove", 1 / units)  # measured now, so the slider answers at once
print(f"{len(explorer.cache)} points measured")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn: a valid head set for any count
#
# Under GQA every group that stays must keep the same number of query heads. So
# from 9 heads in 3 groups you can remove 3 (one per group, or one whole group),
# 5 (a whole group plus one from each group left), 6, 7 or 8 — but not 4.
#
# Write `nearest_valid_removal(n_heads, n_kv_heads, n_remove)`: return the heads to
# remove, a valid set of the valid size **nearest** `n_remove` (ties: the smaller,
# at least 1 head). The check tries layouts you cannot see, with counts that are not
# a multiple of the KV heads, and compares with `heads.nearest_gqa_removal`.

# %% tags=["solution"]
def nearest_valid_removal(n_heads, n_kv_heads, n_remove):
    """Query-head indices to remove: GQA-valid, of the valid count nearest n_remove."""
    ### BEGIN SOLUTION
    group = n_heads // n_kv_heads
    options = {}  # count -> (m whole groups, k per group left)
    for m in range(n_kv_heads):
        for k in range(group):
            count = m * group + (n_kv_heads - m) * k
            if 0 < count < n_heads:
                options.setdefault(count, (m, k))
    count = min(options, key=lambda c: (abs(c - n_remove), c))
    m, k = options[count]
    chosen = list(range(m * group))  # the first m groups, whole
    for g in range(m, n_kv_heads):  # k heads from each group left
        chosen += list(range(g * group, g * group + k))
    return chosen
    ### END SOLUTION


# %%
checks.check_gqa_nearest(nearest_valid_removal)

# %%
wish = geo.group_size + 1 if geo.gqa else 3
print(f"on this model ({geo.n_heads} heads, {geo.n_kv_heads} KV): asked for {wish}, "
      f"your set {sorted(nearest_valid_removal(geo.n_heads, geo.n_kv_heads, wish))}, "
      f"the library's {heads.nearest_gqa_removal(geo.n_heads, geo.n_kv_heads, wish)}")

# %% [markdown]
# ## Takeaways
#
# - Zeroing a head and removing it compute the same function: same perplexity.
# - Only removal changes the shapes of `q/k/v/o`, so only removal can be faster (the
#   verdicts above are decided against the spread of the paired runs).
# - Under GQA, heads come in groups that share a KV head: you can remove the same
#   number from every group, whole groups, or both — anything else breaks the layout.
# - The speedup is modest because the attention projections and scores are a small
#   part of the FLOPs per token (lesson 3 prints the shares and compares the ideal
#   with the measured speedup).
# - This lesson was measured on a CPU. On a GPU, expect the same shapes and FLOPs but not
#   the same timings: short prompts leave a GPU idle enough that smaller matrices may not
#   show at all (run it there, with longer prompts or bigger batches, and measure).

# %% tags=["nbval-ignore-output"]
summary.record("02", MODEL, dense_ppl, ppl_removed, removed_ratio,
               f"{len(chosen[0])} of {geo.n_heads} heads removed per layer")
