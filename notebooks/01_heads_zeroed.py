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
# # Lesson 1 — Switching attention heads off
#
# *Follows `pruning_unstructured_heads_qwen.py`, on Gemma-3-270M (offline);
# Qwen2.5-0.5B is one parameter away.*
#
# An attention layer runs several *heads* side by side. Are they all needed? We
# switch heads off by **zeroing** their weights, find out which ones the model
# misses, and measure what that does to quality and to speed.
#
# You will measure: head importance two ways (a heatmap each), perplexity as more
# heads go dark, and the latency of the zeroed model next to the dense one.

# %% tags=["parameters"]
MODEL = "gemma3-270m"  # original lesson: "Qwen/Qwen2.5-0.5B" (needs the internet once)
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 4  # evaluation windows of 128 tokens

# %%
import numpy as np

from course_lib.core import arch
from course_lib.pruning import heads
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model
shape = arch.attention_shape(model, 0)
print(f"{len(arch.decoder_layers(model))} layers x {shape.n_heads} heads "
      f"(head_dim {shape.head_dim}, {shape.n_kv_heads} KV head)")

# %% [markdown]
# ## Baseline

# %%
dense_ppl = run.perplexity()
print(f"dense perplexity: {dense_ppl:.2f}")

# %% [markdown]
# ## The mechanism: a head is a block of columns of the output projection
#
# The layer's output is `o_proj @ concat(head_0, …, head_3)`. Head *h* enters
# only through columns `h*256 … h*256+255` of `o_proj`, so zeroing that block
# makes the model behave exactly as if the head had said nothing.

# %%
layer = 5
attention = arch.attention(arch.decoder_layers(model)[layer])
handle = heads.zero_heads(model, {layer: [2]})
o_weight = attention.o_proj.weight.detach()
zero_columns = (o_weight == 0).all(dim=0).nonzero().flatten()
print(f"o_proj {tuple(o_weight.shape)}: columns {zero_columns.min().item()}..{zero_columns.max().item()} are zero")
fig = plots.mask_image(o_weight != 0, rows=64, cols=1024,
                       title=f"layer {layer} o_proj (first 64 rows): head 2's columns are black")
handle.restore()
fig

# %% [markdown]
# ## Which heads matter? Two ways to ask
#
# - **weight norm**: the size of each head's block of `o_proj` (free to compute);
# - **ablation**: zero one head at a time and measure how much perplexity rises
#   (one evaluation per head, on a calibration window — never on the eval text).

# %%
norm_scores = heads.head_importance_weight_norm(model)
ablation_scores = heads.head_importance_ablation(model, run.windows.calib[:1, :64])
plots.heatmap(norm_scores, title="importance by weight norm")

# %%
plots.heatmap(ablation_scores, title="importance by ablation (perplexity increase)", cmap="magma")

# %%
rank = lambda a: np.argsort(np.argsort(a.ravel()))  # noqa: E731
agreement = np.corrcoef(rank(norm_scores), rank(ablation_scores))[0, 1]
print(f"rank correlation between the two scores: {agreement:.2f}")
print(f"most harmful single head to lose: layer {np.unravel_index(ablation_scores.argmax(), ablation_scores.shape)}")

# %% [markdown]
# ## Zero the least important heads
#
# We zero the lowest-scoring fraction of the heads of every layer and watch the
# perplexity, for both scores.

# %%
fractions = [0.0, 0.25, 0.5, 0.75]
criteria = {"ablation": ablation_scores, "weight norm": norm_scores}
curve = {name: [] for name in criteria}
for name, scores in criteria.items():
    for fraction in fractions:
        handle = heads.zero_heads(model, heads.least_important_heads(scores, fraction=fraction, respect_gqa=False)) \
            if fraction else None
        curve[name].append(run.perplexity())
        if handle:
            handle.restore()
    print(f"{name:>12}: " + ", ".join(f"{f:.0%} -> {p:.2f}" for f, p in zip(fractions, curve[name])))

# %%
plots.curves([f * 100 for f in fractions], curve, xlabel="% of heads zeroed in every layer",
             ylabel="perplexity", logy=True, title="quality as heads go dark")

# %% [markdown]
# ## And the speed?
#
# Zeroing keeps every matrix the same shape. The dense kernels multiply the
# zeros just like any other number. Measure it: the dense model and a copy with
# half of its heads zeroed, timed side by side.

# %% tags=["nbval-ignore-output"]
zeroed = run.copy_model()
heads.zero_heads(zeroed, heads.least_important_heads(ablation_scores, fraction=0.5, respect_gqa=False))
latency = run.latency({"dense": model, "half the heads zeroed": zeroed}, tokens=64, runs=7)
ratio = latency["half the heads zeroed"].ratio_to(latency["dense"])
plots.bars({"dense": 1.0, "50% heads zeroed": ratio}, ylabel="prefill latency / dense", reference=1.0)

# %%
print("zeroed model within 15% of dense latency:", abs(ratio - 1) < 0.15)
print(f"perplexity of that model: {run.perplexity(zeroed):.2f}")

# %% [markdown]
# ## Explore
#
# The slider sets the fraction of heads zeroed in every layer; the menu picks
# the importance score. Perplexity moves, latency does not.

# %%
def prune(model, criterion, fraction):
    scores = ablation_scores if criterion == "ablation" else norm_scores
    return heads.zero_heads(model, heads.least_important_heads(scores, fraction=fraction, respect_gqa=False))


explorer = Explorer(model, run.windows.eval[:2], prune, methods=("ablation", "weight norm"),
                    amount_label="fraction of heads zeroed", amount_max=0.75, step=0.25,
                    title="zeroing attention heads")
for criterion in ("ablation", "weight norm"):
    explorer.point(criterion, 0.5)  # measured now, so the slider answers at once
print(f"{len(explorer.cache)} points measured")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
#
# Write `zero_head(o_weight, head, head_dim)`: return a **copy** of the output
# projection with head `head`'s block of columns set to zero. The check runs it
# on matrices you cannot see and tells you what is off.

# %% tags=["solution"]
def zero_head(o_weight, head, head_dim):
    """A copy of o_weight (hidden x heads*head_dim) with one head's columns zeroed."""
    ### BEGIN SOLUTION
    out = o_weight.clone()
    out[:, head * head_dim:(head + 1) * head_dim] = 0
    return out
    ### END SOLUTION


# %%
checks.check_zero_head(zero_head)

# %% [markdown]
# ## Takeaways
#
# - A head is a block of columns of `o_proj`; zeroing it removes the head's voice exactly.
# - Heads are not equally important: ablation asks the model, the weight norm only guesses
#   (compare the two heatmaps and their rank correlation above).
# - Zeroed heads cost as much time as live ones: the shapes did not change.
#   Lesson 2 removes them for real.
# - With the original model (Qwen2.5-0.5B, 14 heads, 2 KV heads) the ablation takes
#   longer: use fewer windows, or a GPU.

# %% tags=["nbval-ignore-output"]
summary.record("01", MODEL, dense_ppl, run.perplexity(zeroed), ratio, "50% of heads zeroed per layer")
