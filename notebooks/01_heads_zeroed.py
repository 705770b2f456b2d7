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
# Every index below (layers, heads, columns) is read from the model, so the lesson
# runs unchanged on another model. Comparisons of two models are paired and carry an
# interval (lesson 0 explains both).
#
# <!-- quoted: the replay tolerance this notebook's metadata sets (course.replay_rtol) -->
# *Replaying this lesson elsewhere*: its printed numbers are compared with the stored ones
# within 0.2% (or one unit of the last digit); timings are not compared.

# %% tags=["parameters"]
MODEL = "gemma3-270m"  # original lesson: "Qwen/Qwen2.5-0.5B" (needs the internet once); stand-in: "tiny-qwen2.5"
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens
QUICK = False  # True: fewer timing runs (to check that the lesson runs, not to read its timings)

# %%
import numpy as np

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
# ## Baseline
#
# Perplexity on this lesson's evaluation windows (`N_EVAL` windows of 128 tokens from
# the middle of the text). Other lessons use other windows, so their dense figure differs.

# %%
dense = run.quality()  # per-token NLL: the perplexity, and paired comparisons with it
dense_ppl = round(dense.perplexity, 2)
print(f"dense perplexity: {dense_ppl:.2f} ({N_EVAL} windows x 128 tokens)")

# %% [markdown]
# ## The mechanism: a head is a block of columns of the output projection
#
# The layer's output is `o_proj @ concat(head_0, …, head_{n-1})` (GPT-2 calls it
# `c_proj`). Head *h* enters only through columns `h*head_dim … (h+1)*head_dim - 1`,
# so zeroing that block makes the model behave exactly as if the head had said nothing.

# %%
layer, head = geo.middle_layer(), min(2, geo.n_heads - 1)
out_proj = model.get_submodule(geo.attn_module(layer))
handle = heads.zero_heads(model, {layer: [head]})
o_weight = arch.weight_matrix(out_proj).detach()  # (hidden, heads * head_dim), whatever the storage
zero_columns = (o_weight == 0).all(dim=0).nonzero().flatten()
want = geo.head_columns(head)
print(f"{geo.attn_module(layer)} {tuple(o_weight.shape)}: columns "
      f"{zero_columns.min().item()}..{zero_columns.max().item()} are zero")
run.claim(f"zeroing head {head} zeroes exactly its {geo.head_dim} columns",
          zero_columns.tolist() == list(want), f"expected {want.start}..{want.stop - 1}")
fig = plots.mask_image(o_weight != 0, rows=min(64, geo.hidden), cols=min(1024, o_weight.shape[1]),
                       title=f"layer {layer} {geo.out_projection}: head {head}'s columns are black")
handle.restore()
fig

# %% [markdown]
# ## Which heads matter? Two ways to ask
#
# - **weight norm**: the size of each head's block of `o_proj` (free to compute);
# - **ablation**: zero one head at a time and measure how much perplexity rises
#   (one evaluation per head, on 32 tokens of calibration text — never on the eval text).
#
# Before you look: will the two scores agree on which heads matter? Write a rank
# correlation between -1 and 1 (1: the same order, 0: unrelated).

# %% tags=["prediction"]
my_guess_agreement = 0.8  # your prediction: rank correlation of the two scores

# %%
norm_scores = heads.head_importance_weight_norm(model)
ablation_scores = heads.head_importance_ablation(model, run.windows.calib[:1, :32])  # one short window: one evaluation per head
plots.heatmap(norm_scores, title="importance by weight norm")

# %%
plots.heatmap(ablation_scores, title="importance by ablation (perplexity increase)", cmap="magma")

# %%
rank = lambda a: np.argsort(np.argsort(a.ravel()))  # noqa: E731
agreement = float(np.corrcoef(rank(norm_scores), rank(ablation_scores))[0, 1])
worst_layer, worst_head = (int(i) for i in np.unravel_index(ablation_scores.argmax(), ablation_scores.shape))
print(f"rank correlation between the two scores: {agreement:.2f} (you guessed {my_guess_agreement:.2f})")
print(f"most harmful single head to lose: layer {worst_layer}, head {worst_head}")
run.claim("the weight norm is a poor guide to what ablation measures (rank correlation below 0.5)",
          agreement < 0.5, f"rank correlation {agreement:.2f}", needs_real_model=True)

# %% [markdown]
# A head's weights can be large while the model barely needs its output: the
# norm sees the weights, ablation sees what the model does with them.
#
# ## Zero the least important heads
#
# We zero the lowest-scoring fraction of the heads of every layer and watch the
# perplexity, for both scores. Which score will hurt less, at 25% and at 50%?

# %% tags=["prediction"]
my_guess_better_score = "weight norm"  # your prediction: "ablation" or "weight norm"

# %%
fractions = [0.0, 0.25, 0.5]
criteria = {"ablation": ablation_scores, "weight norm": norm_scores}
measured = {name: [dense] for name in criteria}
for name, scores in criteria.items():
    for fraction in fractions[1:]:
        handle = heads.zero_heads(model, heads.least_important_heads(scores, fraction=fraction, respect_gqa=False))
        measured[name].append(run.quality())
        handle.restore()
curve = {name: [q.perplexity for q in qs] for name, qs in measured.items()}
for name in criteria:
    print(f"{name:>12}: " + ", ".join(f"{f:.0%} -> {p:.2f}" for f, p in zip(fractions, curve[name])))
by_score = {f: measured["ablation"][i].vs(measured["weight norm"][i])  # paired, same tokens
            for i, f in enumerate(fractions) if f > 0}
for f, comparison in by_score.items():
    print(f"at {f:.0%}, ablation-chosen vs weight-norm-chosen: {comparison}")
print(f"(you guessed the better score: {my_guess_better_score})")
run.claim("at 25% the ablation-chosen heads hurt less than the weight-norm-chosen ones",
          by_score[0.25].verdict == "lower", str(by_score[0.25]), needs_real_model=True)
run.claim("at 50% both choices leave the model broken, and the difference between them is not decided",
          not by_score[0.5].decided and min(curve["ablation"][-1], curve["weight norm"][-1]) > 10 * dense_ppl,
          str(by_score[0.5]), needs_real_model=True)
steps = [measured["ablation"][i + 1].vs(measured["ablation"][i]) for i in range(len(fractions) - 1)]
run.claim("perplexity rises as more heads go dark (ablation order), each step decided",
          all(step.verdict == "higher" for step in steps),
          "; ".join(f"{fractions[i]:.0%} -> {fractions[i + 1]:.0%}: {step.ratio:.3f} ({step.interval()})"
                    for i, step in enumerate(steps)), needs_real_model=True)

# %%
plots.curves([f * 100 for f in fractions], curve, xlabel="% of heads zeroed in every layer",
             ylabel="perplexity", logy=True, title="quality as heads go dark")

# %% [markdown]
# ## And the speed?
#
# Zeroing keeps every matrix the same shape. The dense kernels multiply the
# zeros just like any other number. Predict first: how much faster is the model
# with half of its heads zeroed? (1.0 = the same speed.)

# %% tags=["prediction"]
my_guess_speedup = 1.5  # your prediction: dense time / zeroed time

# %%
zeroed = run.copy_model()
heads.zero_heads(zeroed, heads.least_important_heads(ablation_scores, fraction=0.5, respect_gqa=False))
same_flops = metrics.flops_per_token(zeroed) == metrics.flops_per_token(model)
skipped = speed.ideal_speedup(metrics.flops_per_token(model), speed.nonzero_flops_per_token(zeroed))
run.claim("zeroing keeps every matrix its shape: a dense kernel does exactly the dense FLOPs", same_flops,
          f"{metrics.flops_per_token(zeroed).total / 1e6:.1f} M FLOPs per token, as dense")
print(f"a kernel that skipped the zeros could at best be {skipped:.3f}x faster: the zeroed weights are "
      f"{1 - 1 / skipped:.1%} of this model's FLOPs per token (the lm_head and the MLPs stay whole)")
print(f"perplexity of that model: {run.perplexity(zeroed):.2f}")

# %% tags=["nbval-ignore-output"]
dense_copy = run.copy_model()  # a fresh copy, like the zeroed one: memory placement treats both alike
latency = run.latency({"dense": dense_copy, "half the heads zeroed": zeroed}, tokens=64, runs=3 if QUICK else 9)
zeroed_speedup = timing.speedup(latency["dense"], latency["half the heads zeroed"])
ratio = latency["half the heads zeroed"].ratio_to(latency["dense"])
print(f"measured: {zeroed_speedup}; you guessed {my_guess_speedup:.2f}x")
plots.bars({"dense": 1.0, "50% heads zeroed": ratio}, ylabel="prefill latency / dense", reference=1.0)

# %% [markdown]
# The clock agrees with the count when its verdict reads "within noise": the paired
# runs' spread straddles 1, and the zeros cost as much time as the numbers they
# replaced. (Even a kernel that skipped zeros could gain only the few percent printed
# above on this model: too little to tell from the noise at this size. Lesson 5 zeroes
# half of *every* decoder matrix, where a zero-skipping kernel would approach 2x.)
#
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
print(f"{len(explorer.cache)} point measured (the dense one); each new setting is measured once, then cached")

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
# - Heads are not equally important; the weight norm and ablation rank them differently
#   (their rank correlation, and the 25% and 50% comparisons, are printed above, each with
#   its mark): ablation's choice hurt less at 25%; at 50% both leave the model broken.
# - Zeroed heads cost as much time as live ones: the shapes did not change.
#   Lesson 2 removes them for real.
# - With the original model (Qwen2.5-0.5B: 24 layers x 14 heads, 2 KV heads) the
#   ablation makes 336 evaluations instead of 72: use fewer windows, or a GPU.

# %% tags=["nbval-ignore-output"]
summary.record("01", MODEL, dense_ppl, run.perplexity(zeroed), ratio, "50% of heads zeroed per layer")
