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
# The MLP blocks hold a large share of a small transformer's FLOPs. A hidden
# *neuron* of the MLP is one row of the matrices that produce it (`gate_proj` and
# `up_proj`; GPT-2's `c_fc`) and one column of the matrix that reads it
# (`down_proj`; GPT-2's `c_proj`): remove it and every MLP matrix shrinks at once.
# Here we choose which neurons to remove, remove them, and compare the measured
# speedup with the ideal one.

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "gpt2" (needs the internet once); stand-in: "tiny-gpt2-124m"
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens
QUICK = False  # True: fewer timing runs (to check that the lesson runs, not to read its timings)

# %%
import torch

from course_lib.core import arch, metrics, timing
from course_lib.pruning import mlp
from course_lib.runtime import speed
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL)
model = run.model
geo = arch.geometry(model)  # layers, MLP width, projection names: read from the model
print(geo.describe())
print(f"MLP width {geo.mlp_width} neurons in each of {geo.n_layers} layers; MLP matrices: {geo.mlp_projections}")

# %% [markdown]
# ## Baseline, and where the FLOPs go

# %%
dense_ppl = run.perplexity()
dense_flops = metrics.flops_per_token(model, context=128)
shares = dense_flops.shares()
print(f"dense perplexity: {dense_ppl:.2f} ({N_EVAL} windows x 128 tokens, as in lessons 2 and 3)")
for part, share in shares.items():
    print(f"{part:>22}: {share:6.1%}")
run.claim("the MLP is the largest share of the FLOPs per token", max(shares, key=shares.get) == "mlp",
          f"MLP {shares['mlp']:.1%}")

# %% [markdown]
# ## The mechanism: one neuron, a slice of every MLP matrix
#
# For a gated MLP, `down( silu(gate(x)) * up(x) )`: neuron *j* is row *j* of
# `gate_proj` and `up_proj` and column *j* of `down_proj` (GPT-2: `c_proj(gelu(c_fc(x)))`,
# row *j* of `c_fc`, column *j* of `c_proj`). Zeroing column *j* of the reading matrix
# already silences it; removing it deletes every slice. Below: every other neuron of
# layer 0 removed.

# %%
block = arch.mlp(arch.decoder_layers(model)[0])
twin, _ = speed.pruned_copy(model, lambda m: mlp.remove_neurons(m, {0: list(range(0, geo.mlp_width, 2))}))
twin_block = arch.mlp(arch.decoder_layers(twin)[0])
for name in geo.mlp_projections:
    print(f"{name}: {tuple(arch.weight_matrix(getattr(block, name)).shape)} -> "
          f"{tuple(arch.weight_matrix(getattr(twin_block, name)).shape)}  (out x in)")
del twin

# %% [markdown]
# ## Which neurons matter least?
#
# Two scores: the **weight norm** of each neuron's slices, and its mean
# **activation** on the calibration text (a neuron that rarely fires can go).
# Which one will keep more of the quality? Predict first.

# %% tags=["prediction"]
my_guess_better_score = "weight norm"  # your prediction: "activation" or "weight norm"

# %%
norm_scores = mlp.neuron_importance_weight_norm(model)
activation_scores = mlp.neuron_importance_activation(model, run.windows.calib)
shown_layers = sorted({0, geo.middle_layer(), geo.n_layers - 1})
fig = plots.weight_histogram({f"layer {i}": activation_scores[i] for i in shown_layers},
                             xlabel="mean |activation| of a neuron on the calibration text",
                             show_zeros=False, title="most neurons are quiet, a few fire a lot")
fig

# %%
loud = {}
for i in shown_layers:
    a = activation_scores[i].float()
    loud[i] = float(a.max() / a.median())
    print(f"layer {i:>2}: median neuron activation {a.median():.3f}, loudest {a.max():.3f} "
          f"({loud[i]:.0f}x the median)")
run.claim("in every layer shown, the loudest neuron fires over 5x the median one", min(loud.values()) > 5,
          ", ".join(f"layer {i}: {v:.0f}x" for i, v in loud.items()), needs_real_model=True)

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
        else:
            del pruned

# %%
ppl = {(r["removed"], r["score"]): r["perplexity"] for r in rows}
better = "activation" if ppl[(0.25, "activation")] < ppl[(0.25, "weight norm")] else "weight norm"
print(f"at 25% the lower perplexity comes from: {better} (you guessed {my_guess_better_score})")
run.claim("the activation score keeps more quality than the weight norm, at 25% and at 50%",
          all(ppl[(f, "activation")] < ppl[(f, "weight norm")] for f in (0.25, 0.5)),
          ", ".join(f"{f:.0%}: {ppl[(f, 'activation')]:.2f} vs {ppl[(f, 'weight norm')]:.2f}" for f in (0.25, 0.5)),
          needs_real_model=True)
# the loudest neuron the weight norm would remove at 25%, against its layer's median activation
norm_choice = mlp.least_important_neurons(norm_scores, 0.25)
loudness = {i: float(activation_scores[i][idx].max() / activation_scores[i].median()) for i, idx in norm_choice.items()}
loudest_layer = max(loudness, key=loudness.get)
print(f"the weight norm removes, in layer {loudest_layer}, a neuron that fires "
      f"{loudness[loudest_layer]:.0f}x that layer's median activation")
run.claim("the weight norm removes some neurons that fire more than 10x their layer's median",
          loudness[loudest_layer] > 10, f"{loudness[loudest_layer]:.0f}x in layer {loudest_layer}",
          needs_real_model=True)

# %% [markdown]
# Folklore says small weights mean an unimportant neuron. The measurements above
# test it: the two scores' perplexities, and how loud the loudest neuron is that the
# weight norm would throw away (its layer is printed). A neuron with small weights
# can still carry a large activation; only data shows it.
#
# Now the clock: dense and pruned side by side. Predict the speedup of removing
# half of the neurons first.

# %% tags=["prediction"]
my_guess_speedup_half = 1.5  # your prediction: dense time / time with 50% of the MLP neurons removed

# %% tags=["nbval-ignore-output"]
measured, verdicts = {}, {}
for f, p in pruned_models.items():
    label = f"-{f:.0%} neurons"
    measured[f] = speed.measure_speedup(model, p, label=label, tokens=128, runs=3 if QUICK else 9)
    verdicts[f] = timing.speedup(measured[f].measurements["prefill dense"], measured[f].measurements[f"prefill {label}"])
for fraction, c in measured.items():
    print(f"{fraction:.0%} of neurons removed: measured {verdicts[fraction]}; ideal "
          f"{c.ideal_speedup:.2f}x ({c.efficiency:.0%} of ideal)")
print("(a verdict 'within noise' means the spread of the paired runs covers 1: on a busy machine the\n"
      " 25% removal's smaller effect can drown; the 50% one is the effect this lesson relies on)")

# %%
print(f"you guessed {my_guess_speedup_half:.2f}x for 50%")
half = verdicts[0.5]
run.claim("removing half of the MLP neurons makes the model faster than dense", half.verdict == "faster",
          str(half), needs_real_model=True)
run.claim("50% removal reaches at least three quarters of its ideal speedup (median of the paired runs)",
          half.median >= 0.75 * measured[0.5].ideal_speedup,
          f"{half.median:.2f}x vs 0.75 x {measured[0.5].ideal_speedup:.2f}x", needs_real_model=True)

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
# - The MLP is the largest share of the FLOPs (printed above), so MLP removal buys the
#   largest structured speedup; the lm_head and attention cap it (the ideal line).
# - Choose neurons with data (activations), not only weights: compare the two scores'
#   perplexities above.
# - With GPT-2 the MLP is `c_fc`/`c_proj` (no gate); the same functions handle it.

# %% tags=["nbval-ignore-output"]
summary.record("04", MODEL, dense_ppl, rows[0]["perplexity"], 1 / measured[0.25].prefill_speedup,
               "25% of MLP neurons removed (activation score)")
