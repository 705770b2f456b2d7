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
# # Lesson 4 — Structured pruning: removing MLP neurons
#
# *Follows `pruning_structured_mlp_gpt2.py`, on SmolLM2-135M (offline); GPT-2 is
# one parameter away.*
#
# The MLP blocks hold most of a small transformer's FLOPs. A hidden *neuron* of
# the MLP is one row of `gate_proj` and `up_proj` and one column of `down_proj`:
# remove it and three matrices shrink at once. Here we choose which neurons to
# remove, remove them, and compare the measured speedup with the ideal one.

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "gpt2" (needs the internet once)
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens

# %%
from course_lib.core import arch, metrics
from course_lib.pruning import mlp
from course_lib.runtime import speed
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model
print(f"MLP width {arch.mlp_width(model, 0)} neurons in each of {len(arch.decoder_layers(model))} layers")

# %% [markdown]
# ## Baseline, and where the FLOPs go

# %%
dense_ppl = run.perplexity()
dense_flops = metrics.flops_per_token(model, context=128)
print(f"dense perplexity: {dense_ppl:.2f}")
print(f"MLP share of the FLOPs per token: {dense_flops.shares()['mlp']:.1%}")

# %% [markdown]
# ## The mechanism: one neuron, three slices
#
# For a gated MLP, `down( silu(gate(x)) * up(x) )`: neuron *j* is row *j* of
# `gate_proj` and `up_proj` and column *j* of `down_proj`. Zeroing column *j* of
# `down_proj` already silences it; removing it deletes all three slices.

# %%
block = arch.mlp(arch.decoder_layers(model)[0])
twin, _ = speed.pruned_copy(model, lambda m: mlp.remove_neurons(m, {0: list(range(0, 1536, 2))}))
twin_block = arch.mlp(arch.decoder_layers(twin)[0])
for name in ("gate_proj", "up_proj", "down_proj"):
    print(f"{name}: {tuple(getattr(block, name).weight.shape)} -> {tuple(getattr(twin_block, name).weight.shape)}")
del twin

# %% [markdown]
# ## Which neurons matter least?
#
# Two scores: the **weight norm** of each neuron's slices, and its mean
# **activation** on the calibration text (a neuron that rarely fires can go).

# %%
norm_scores = mlp.neuron_importance_weight_norm(model)
activation_scores = mlp.neuron_importance_activation(model, run.windows.calib)
fig = plots.weight_histogram({"activation score, layer 10": activation_scores[10],
                              "activation score, layer 20": activation_scores[20]},
                             title="most neurons are quiet, a few fire a lot")
fig

# %% [markdown]
# ## Remove a fraction of the neurons of every layer

# %%
rows, pruned_models = [], {}
for fraction in (0.25, 0.5):
    for name, scores in (("activation", activation_scores), ("weight norm", norm_scores)):
        pruned, _ = speed.pruned_copy(model, lambda m: mlp.remove_neurons(
            m, mlp.least_important_neurons(scores, fraction)))
        ideal = speed.ideal_speedup(dense_flops, metrics.flops_per_token(pruned, context=128))
        rows.append({"removed": fraction, "score": name, "perplexity": run.perplexity(pruned),
                     "MLP width": arch.mlp_width(pruned, 0), "ideal speedup": round(ideal, 3)})
        print(rows[-1])
        if name == "activation":
            pruned_models[fraction] = pruned

# %% [markdown]
# Folklore says small weights mean an unimportant neuron. The measurement says
# otherwise: on SmolLM2 the weight norm picks neurons the model cannot live
# without (a few small-weight neurons of the first layers fire very hard), while
# the activation score, measured on real text, keeps most of the quality.
# Now the clock: dense and pruned side by side.

# %% tags=["nbval-ignore-output"]
measured = {f: speed.measure_speedup(model, p, label=f"-{f:.0%} neurons", tokens=128, runs=9)
            for f, p in pruned_models.items()}
for fraction, c in measured.items():
    print(f"{fraction:.0%} of neurons removed: measured {c.prefill_speedup:.2f}x vs ideal "
          f"{c.ideal_speedup:.2f}x ({c.efficiency:.0%} of ideal)")

# %%
print("every removal measured faster than dense:", all(c.prefill_speedup > 1 for c in measured.values()))
print("50% removal reaches at least 80% of its ideal:", measured[0.5].efficiency >= 0.8)

# %% tags=["nbval-ignore-output"]
fractions = [0.0] + list(measured)
plots.curves([f * 100 for f in fractions], {"measured": [1.0] + [c.prefill_speedup for c in measured.values()]},
             xlabel="% of MLP neurons removed", ylabel="prefill speedup vs dense",
             reference={"ideal (FLOPs)": [1.0] + [c.ideal_speedup for c in measured.values()]},
             title="MLP neuron removal: measured vs ideal")

# %%
plots.stacked_shares({
    "dense": {k: v / dense_flops.total for k, v in dense_flops.__dict__.items()},
    **{f"-{f:.0%} MLP": {k: v / dense_flops.total for k, v in metrics.flops_per_token(p, 128).__dict__.items()}
       for f, p in pruned_models.items()}}, title="FLOPs per token, as a share of the dense model")

# %% [markdown]
# ## Explore

# %%
def prune(model, score, fraction):
    scores = activation_scores if score == "activation" else norm_scores
    return mlp.remove_neurons(model, mlp.least_important_neurons(scores, fraction))


explorer = Explorer(model, run.windows.eval[:2], prune, methods=("activation", "weight norm"),
                    amount_label="fraction of neurons removed", amount_max=0.75, step=0.25,
                    title="removing MLP neurons")
explorer.point("activation", 0.5)  # measured now, so the slider answers at once
print(f"{len(explorer.cache)} points measured")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
#
# Write `slice_mlp(gate, up, down, keep)`: the three matrices of a gated MLP with
# only the neurons in `keep` (a tensor of indices). The check compares your sliced
# MLP with the zeroed one on inputs you cannot see.

# %% tags=["solution"]
def slice_mlp(gate, up, down, keep):
    """(gate, up, down) keeping the neurons ``keep``."""
    ### BEGIN SOLUTION
    return gate[keep], up[keep], down[:, keep]
    ### END SOLUTION


# %%
checks.check_slice_mlp(slice_mlp)

# %% [markdown]
# ## Takeaways
#
# - A neuron is a row of `gate`/`up` and a column of `down`: removing it shrinks all three.
# - The MLP holds over half the FLOPs, so MLP removal buys the largest structured speedup;
#   the lm_head and attention cap it (the ideal line).
# - Choose neurons with data (activations), not only weights: the perplexity gap is large.
# - With GPT-2 the MLP is `c_fc`/`c_proj` (no gate); the same functions handle it.

# %% tags=["nbval-ignore-output"]
summary.record("04", MODEL, dense_ppl, rows[0]["perplexity"], 1 / measured[0.25].prefill_speedup,
               "25% of MLP neurons removed (activation score)")
