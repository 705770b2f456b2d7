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
# # Lesson 5 — SparseGPT, Wanda and magnitude pruning at 50%
#
# *Follows `pruning_sparsegpt_tinyllama.py`, on SmolLM2-135M (offline);
# TinyLlama-1.1B is one parameter away.*
#
# Half of the weights of every decoder matrix become zero. Which half? Magnitude
# pruning drops the smallest weights; **Wanda** weighs each weight by the size of
# the input it multiplies; **SparseGPT** also *adjusts the weights it keeps* to
# cancel the error. We measure the quality of each, then the question every
# folk claim skips: does a 50%-sparse model run any faster?

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "TinyLlama/TinyLlama-1.1B-Chat-v1.0" (needs the internet once)
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 4  # evaluation windows of 128 tokens
N_CALIB = 8  # calibration windows of 128 tokens (from the start of the text, never evaluated)

# %%
import time

import torch

from course_lib.core import arch, data, metrics, timing
from course_lib.pruning import allocation, masks, one_layer, sparsegpt, wanda
from course_lib.runtime import sparse
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL, n_calib=N_CALIB)
model, calib = run.model, run.windows.calib
geo = arch.geometry(model)  # layer count and projection names, read from the model

# %%
dense_ppl = run.perplexity()
print(f"dense perplexity: {dense_ppl:.2f}")

# %% [markdown]
# ## The mechanism on one matrix
#
# Take the MLP's `up_proj` of the middle layer and the inputs it really sees on the
# calibration text. Prune it to 50% three ways and measure how far its outputs
# move: `||(W - W_pruned) X|| / ||W X||`.

# %%
name = geo.mlp_module(geo.middle_layer(), geo.mlp_projections[-2])  # up_proj (GPT-2: c_fc)
errors = one_layer.compare_methods(model, name, calib, sparsity=0.5)
errors_24 = one_layer.compare_methods(model, name, calib, pattern="2:4")
for method in errors:
    print(f"{method:>10}: output error {errors[method]:.3f} at 50%, {errors_24[method]:.3f} at 2:4")
plots.bars(errors, ylabel="relative output error", title=f"{name}, 50% unstructured")

# %%
run.claim("on its own calibration inputs, SparseGPT moves this matrix's outputs least",
          errors["sparsegpt"] < min(errors["wanda"], errors["magnitude"]),
          f"errors {errors['sparsegpt']:.3f} < {errors['wanda']:.3f}, {errors['magnitude']:.3f}")

# %% [markdown]
# A 2:4 pattern keeps the 2 largest of every 4 consecutive weights of a row:
# the regular layout that GPU sparse tensor cores execute.

# %%
weight = arch.weight_matrix(model.get_submodule(name)).detach()
mask_24 = masks.nm_mask(weight.abs(), 2, 4)
per_group = mask_24.reshape(weight.shape[0], -1, 4).sum(-1)
print(f"kept per group of 4: min {per_group.min().item()}, max {per_group.max().item()}")
plots.mask_image(mask_24, rows=16, cols=48, title="2:4 mask (white = kept): two in every four")

# %% [markdown]
# ### In-sample is not the whole story
#
# Those errors were measured on the very inputs the methods were fitted to.
# SparseGPT *solves* for the kept weights on them (a least-squares fit with
# 576 unknowns per row), so part of its advantage may be fitted noise. Keep
# everything else fixed — the same matrix, the same 50%, the same pruned
# weights — and only change the inputs we measure on: held-out text (the
# evaluation windows, never used for calibration).

# %%
module = dict(model.named_modules())[name]
weight = arch.weight_matrix(module)
inputs_calib = one_layer.module_inputs(model, module, calib)
inputs_held = one_layer.module_inputs(model, module, run.windows.eval)
pruned_50 = {m: one_layer.prune_matrix(weight, inputs_calib, m, 0.5) for m in one_layer.METHODS}
in_sample = {m: one_layer.reconstruction_error(weight, w, inputs_calib) for m, w in pruned_50.items()}
held_out = {m: one_layer.reconstruction_error(weight, w, inputs_held) for m, w in pruned_50.items()}
for m in one_layer.METHODS:
    print(f"{m:>10}: in-sample {in_sample[m]:.3f}, held-out {held_out[m]:.3f}")
grew = {m: held_out[m] - in_sample[m] for m in one_layer.METHODS}
run.claim("SparseGPT's error grows most from in-sample to held-out inputs: part of its fit is to "
          "the calibration sample", grew["sparsegpt"] > max(grew["wanda"], grew["magnitude"]),
          ", ".join(f"{m} +{g:.3f}" for m, g in grew.items()), needs_real_model=True)

# %% [markdown]
# Now change only the *amount* of calibration: the first 1, 2, 4 or all 8
# calibration windows, the same held-out inputs to judge. With few tokens the
# fit has more unknowns than it can pin down.

# %%
amounts = [n for n in (1, 2, 4, 8) if n <= len(calib)]
tokens_per_window = calib.shape[1]
amount_errors = {m: [] for m in ("wanda", "sparsegpt")}
for n in amounts:
    inputs_n = inputs_calib[: n * tokens_per_window]
    for m in amount_errors:
        fitted = one_layer.prune_matrix(weight, inputs_n, m, 0.5)
        amount_errors[m].append(round(one_layer.reconstruction_error(weight, fitted, inputs_held), 3))
for m, values in amount_errors.items():
    print(f"{m:>10} held-out error with " + ", ".join(f"{n} window(s): {v:.3f}" for n, v in zip(amounts, values)))
plots.curves([n * tokens_per_window for n in amounts], amount_errors, xlabel="calibration tokens",
             ylabel="held-out output error", title=f"{name}: more calibration, better fit")

# %%
sgpt, wnd = amount_errors["sparsegpt"], amount_errors["wanda"]
run.claim("more calibration lowers SparseGPT's held-out error more than Wanda's",
          sgpt[0] - sgpt[-1] > wnd[0] - wnd[-1],
          f"SparseGPT {sgpt[0]:.3f} -> {sgpt[-1]:.3f}, Wanda {wnd[0]:.3f} -> {wnd[-1]:.3f}",
          needs_real_model=True)

# %% [markdown]
# One matrix with a good fit is not yet a good model: every layer's small
# held-out error feeds the next layer, and SparseGPT's fit to a small sample
# adds up over 210 matrices. Keep this in mind for the whole-model table.
#
# ## The whole model, layer by layer
#
# Wanda and SparseGPT walk the decoder one layer at a time: each layer is
# calibrated on what the already-pruned layers before it produce. The explorer
# below measures each (method, sparsity) once and keeps it: we fill it now.
#
# **Predict first.** With the 8 calibration windows of this lesson, which
# method will give the lowest perplexity at 50%?

# %%
PRUNERS = {
    "magnitude": lambda m, s, p=None: masks.magnitude_prune(m, s, pattern=p),
    "wanda": lambda m, s, p=None: wanda.wanda_prune(m, calib, s, pattern=p),
    "sparsegpt": lambda m, s, p=None: sparsegpt.sparsegpt_prune(m, calib, s, pattern=p),
}
my_guess_best_at_50 = "sparsegpt"  # "magnitude", "wanda" or "sparsegpt"
print(f"your guess: {my_guess_best_at_50}")

# %%
code = data.windows_for(run.tokenizer, MODEL, source="python-source", seq_len=128, n_eval=N_EVAL, n_calib=N_CALIB)
sparsities = [0.5, 0.7]
explorer = Explorer(model, run.windows.eval, lambda m, method, s: PRUNERS[method](m, s),
                    methods=tuple(PRUNERS), amount_label="sparsity", amount_max=0.7, step=0.2,
                    value=0.5, grid=sparsities, latency_tokens=32, latency_runs=3,
                    title="magnitude vs Wanda vs SparseGPT", also_on={"code": code.eval})
for method in PRUNERS:
    explorer.point(method, 0.5)
explorer.point("sparsegpt", 0.7)  # the folklore's method at the folklore's sparsity, for later
print(f"{len(explorer.cache)} points measured")

# %% [markdown]
# ## 50% unstructured and 2:4, side by side

# %%
table, seconds = {}, {}
for method, prune in PRUNERS.items():
    table[method] = {"50%": round(explorer.point(method, 0.5).perplexity, 2)}
    started = time.perf_counter()
    handle = prune(model, 0.5, "2:4")
    seconds[method] = time.perf_counter() - started
    table[method]["2:4"] = run.perplexity()
    handle.restore()
print(f"{'method':>10} | {'50%':>8} | {'2:4':>8}")
for method, row in table.items():
    print(f"{method:>10} | {row['50%']:8.2f} | {row['2:4']:8.2f}")
run.claim("SparseGPT and Wanda stay far below magnitude at 50% (less than half its perplexity)",
          max(table["sparsegpt"]["50%"], table["wanda"]["50%"]) < table["magnitude"]["50%"] / 2,
          f"{table['sparsegpt']['50%']:.2f}, {table['wanda']['50%']:.2f} vs {table['magnitude']['50%']:.2f}",
          needs_real_model=True)
best_at_50 = min(PRUNERS, key=lambda m: table[m]["50%"])
run.claim("with this little calibration, Wanda beats SparseGPT at 50% unstructured",
          best_at_50 == "wanda", f"Wanda {table['wanda']['50%']:.2f}, SparseGPT {table['sparsegpt']['50%']:.2f}",
          needs_real_model=True)
run.claim("under the stricter 2:4 pattern, SparseGPT beats Wanda", table["sparsegpt"]["2:4"] < table["wanda"]["2:4"],
          f"{table['sparsegpt']['2:4']:.2f} vs {table['wanda']['2:4']:.2f}", needs_real_model=True)
print(f"you guessed {my_guess_best_at_50}; the lowest perplexity at 50% is {best_at_50}'s")

# %% [markdown]
# Read the table against your guess. SparseGPT is the best on its own calibration
# inputs, yet with only 8 windows of 128 tokens Wanda is ahead at 50%: the
# one-matrix experiment above showed why — SparseGPT's fit degrades most on
# held-out text and needs more calibration to pin down. Under the stricter 2:4
# pattern, where the mask alone loses more, SparseGPT's repair of the kept
# weights pulls it ahead. With far more calibration SparseGPT also wins at 50%:
# `make bench` measures that protocol (`bench/results.md`).
#
# <!-- quoted: the original lesson's claim -->
# The folklore that SparseGPT prunes "50–90% with minimal loss" comes from
# models of billions of parameters: at 70% this 135M model's perplexity is
# several times the dense one. (Slide the explorer to 0.7 for the other methods.)

# %%
at_70 = round(explorer.point("sparsegpt", 0.7).perplexity, 2)
run.claim("at 70% SparseGPT more than doubles the dense perplexity of this model",
          at_70 > 2 * dense_ppl, f"SparseGPT at 70%: {at_70:.2f}, dense {dense_ppl:.2f}",
          needs_real_model=True)

# %% [markdown]
# How long each method takes to prune the whole model (2:4, this machine):
# magnitude only sorts weights; Wanda adds one calibration pass; SparseGPT also
# builds and factors one Hessian per input and updates the weights column by column.

# %% tags=["nbval-ignore-output"]
print("2:4 pruning time: " + ", ".join(f"{m} {t:.1f} s" for m, t in seconds.items()))
run.claim("magnitude is the quickest to make, then Wanda, then SparseGPT (each at least 1.5x the one before)",
          seconds["wanda"] > 1.5 * seconds["magnitude"] and seconds["sparsegpt"] > 1.5 * seconds["wanda"],
          ", ".join(f"{m} {t:.1f} s" for m, t in seconds.items()), needs_real_model=True)

# %% [markdown]
# ## Does a 50%-sparse model run faster?
#
# Folklore says half the weights means half the work; the original lesson adds
# that a sparse model is "sometimes even slower due to cache behaviour". With
# dense kernels the zeros are multiplied like any other number. Measure the dense
# model and a 50%-sparse copy (magnitude's: the quickest to make, and any 50% of
# zeros is the same to a dense kernel) side by side, interleaved.
#
# **Predict first**: dense latency / sparse latency =

# %%
my_guess_speedup = 1.5
print(f"your guess: {my_guess_speedup:.2f}x")

# %% tags=["nbval-ignore-output"]
sparse50 = run.copy_model()
masks.magnitude_prune(sparse50, 0.5)
latency = run.latency({"dense": model, "50% sparse": sparse50}, tokens=128, runs=7)
dense_kernel_ratio = latency["50% sparse"].ratio_to(latency["dense"])
zeros_speedup = timing.speedup(latency["dense"], latency["50% sparse"])
print(f"speedup {zeros_speedup}; you guessed {my_guess_speedup:.2f}x")

# %%
print(f"sparsity of the copy: {metrics.total_sparsity(sparse50):.1%}")
run.claim("50% zeros on dense kernels are not the 2x that half the work suggests: even the top of "
          "the paired runs' spread is below 1.5x", zeros_speedup.high < 1.5,
          f"{zeros_speedup.median:.2f}x, spread {zeros_speedup.low:.2f}x-{zeros_speedup.high:.2f}x",
          needs_real_model=True)  # a tiny stand-in's forward pass is overhead: its spread decides nothing
run.claim("nor far slower: the spread reaches 0.8x or above", zeros_speedup.high >= 0.8,
          f"{zeros_speedup.median:.2f}x, spread {zeros_speedup.low:.2f}x-{zeros_speedup.high:.2f}x",
          needs_real_model=True)

# %% [markdown]
# If you guessed near 2x, you counted multiplications; the dense kernel does
# every one of them, zero or not. Read the verdict printed above the claims: on
# a quiet machine it says "within noise". The clearly "slower" of the folklore
# shows with a *sparse* format at this sparsity, next.

# %% [markdown]
# ### A sparse-aware runtime: CSR on the CPU
#
# A sparse format stores only the non-zeros and their positions, and its kernel
# skips the zeros — but pays for reading the positions. One MLP matrix, 128
# tokens, dense vs CSR and block-sparse (BSR) at rising sparsity:

# %% tags=["nbval-ignore-output"]
sparse_curve = sparse.sparse_layer_ratios(weight, [0.5, 0.7, 0.9, 0.95], tokens=128)
for layout in ("csr", "bsr"):
    even = sparse_curve.break_even(layout)
    print(f"{layout}: break-even sparsity ~ " + ("beyond the measured range" if even is None else f"{even:.0%}"))
plots.curves([s * 100 for s in sparse_curve.sparsities],
             {layout: sparse_curve.speedups[layout] for layout in ("csr", "bsr")},
             xlabel="% zeros in the matrix", ylabel="speedup vs dense (same matrix)",
             reference={"dense = 1": [1.0] * len(sparse_curve.sparsities)},
             title="sparse kernels pay off only at high sparsity")

# %%
run.claim("CSR is slower than the dense kernel at 50% sparsity", sparse_curve.speedups["csr"][0] < 1,
          f"{sparse_curve.speedups['csr'][0]:.2f}x")

# %% [markdown]
# ### 2:4 on a GPU
#
# NVIDIA GPUs from Ampere on run 2:4 matrices on sparse tensor cores
# (`torch.sparse.to_sparse_semi_structured`, fp16/bf16). torch has no CPU kernel
# for it, so on a laptop this cell only explains.

# %% tags=["nbval-ignore-output"]
reason = sparse.semi_structured_support()
if reason is None:
    print(sparse.semi_structured_layer_ratio())
else:
    print("2:4 kernels not available here:", reason)

# %% [markdown]
# ### On disk
#
# Zeros only shrink a file in a format that leaves them out. For 50% sparsity a
# CSR index costs as much as the values it saves; a bitmask does better.

# %%
for label, m in (("dense", model), ("50% sparse", sparse50)):
    sizes = metrics.storage_bytes(m)
    print(f"{label:>14}: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()))

# %% [markdown]
# ## Calibration data matters
#
# Wanda and SparseGPT learn from their calibration text. Calibrate on English
# prose or on Python source code, then evaluate on both: who wins where? (The
# prose-calibrated models are the explorer's 50% points: it measured them on the
# code windows too, so only the code calibration prunes again.)

# %%
texts = {"prose": run.windows, "code": code}
print(f"dense: prose {dense_ppl:.2f}, code {run.perplexity(windows=code.eval):.2f}")
grid = {}
for method, prune_fn in (("wanda", wanda.wanda_prune), ("sparsegpt", sparsegpt.sparsegpt_prune)):
    measured = explorer.point(method, 0.5)  # calibrated on prose: the explorer measured it on both texts
    grid[method, "prose", "prose"], grid[method, "prose", "code"] = measured.perplexity, measured.other_perplexity["code"]
    handle = prune_fn(model, code.calib, 0.5)  # calibrated on code
    for eval_name, eval_text in texts.items():
        grid[method, "code", eval_name] = run.perplexity(windows=eval_text.eval)
    handle.restore()
    for calib_name in texts:
        print(f"{method:>10} calibrated on {calib_name:>5}: prose {grid[method, calib_name, 'prose']:.2f}, "
              f"code {grid[method, calib_name, 'code']:.2f}")

# %%
for calib_name in texts:
    for eval_name in texts:
        best = min(("wanda", "sparsegpt"), key=lambda m: grid[m, calib_name, eval_name])
        where = "same kind of text" if calib_name == eval_name else "other kind of text"
        print(f"calibrated on {calib_name:>5}, evaluated on {eval_name:>5} ({where}): {best} wins")
gain = {}
for method in ("wanda", "sparsegpt"):
    gain[method] = sum(grid[method, other, e] - grid[method, e, e] for e in texts for other in texts if other != e) / 2
    print(f"{method:>10}: matching calibration to the evaluated text lowers perplexity by {gain[method]:.2f} on average")
run.claim("SparseGPT does better when calibrated on the kind of text it is evaluated on, for both texts",
          all(grid["sparsegpt", e, e] < grid["sparsegpt", o, e] for e in texts for o in texts if o != e),
          ", ".join(f"on {e}: {grid['sparsegpt', e, e]:.2f} matched" for e in texts), needs_real_model=True)
run.claim("matching the calibration text matters more to SparseGPT than to Wanda", gain["sparsegpt"] > gain["wanda"],
          f"{gain['sparsegpt']:.2f} vs {gain['wanda']:.2f}", needs_real_model=True)
run.claim("Wanda evaluated on code does better with prose calibration than with code",
          grid["wanda", "prose", "code"] < grid["wanda", "code", "code"],
          f"{grid['wanda', 'prose', 'code']:.2f} vs {grid['wanda', 'code', 'code']:.2f}", needs_real_model=True)

# %% [markdown]
# SparseGPT reconstructs the kept weights from its calibration inputs: it gains
# when calibration matches what is served, and loses when it does not. Wanda
# only uses the size of each input channel, and matching helps it less — here,
# on code, prose calibration even served it better. The lesson for SparseGPT:
# calibrate on data like the data you will serve; for Wanda, measure rather
# than assume.
#
# ## Which layers can lose more?
#
# Uniform pruning takes the same share from every layer. Prune **one layer
# alone** to 80% (magnitude) and measure the perplexity: a few layers, first,
# middle and last, on 2 evaluation windows to keep it quick (the figures are on
# those 2 windows, not the lesson's 4).

# %%
n_layers = len(arch.decoder_layers(model))
scan_layers = sorted({0, n_layers // 2, n_layers - 1})
scan_sparsities = [0.8]
scan_windows = run.windows.eval[:2]
scan_dense = round(metrics.perplexity(model, scan_windows), 2)
scan = allocation.sensitivity_scan(model, scan_windows, scan_sparsities, layers=scan_layers).round(2)
for layer, row in zip(scan_layers, scan):
    print(f"layer {layer:>2} alone at 80%: perplexity {row[0]:.2f} (dense {scan_dense:.2f})")
plots.sensitivity(scan, scan_layers, scan_sparsities, scan_dense)

# %%
middle = scan[scan_layers.index(n_layers // 2), 0]
run.claim("a middle layer tolerates 80% far better than the first or the last one",
          middle < min(scan[0, 0], scan[-1, 0]),
          ", ".join(f"layer {l}: {v:.2f}" for l, v in zip(scan_layers, scan[:, 0])), needs_real_model=True)

# %% [markdown]
# ### Challenge: beat uniform at the same total
#
# Choose one sparsity per decoder layer so that the total is still 60% (every
# layer of this model has the same size, so the mean must be 0.6) and the
# perplexity is lower than uniform 60%. The check prunes with your allocation
# (magnitude scores), measures, and says by how much you beat uniform — or not.

# %%
def my_allocation(n_layers):
    """One sparsity per decoder layer, 60% in total."""
    ### BEGIN SOLUTION
    # spare the sensitive ends, take it from the tolerant middle
    ends = 0.45
    middle = (0.6 * n_layers - 2 * ends) / (n_layers - 2) if n_layers > 2 else 0.6
    return [ends] + [middle] * (n_layers - 2) + [ends] if n_layers > 2 else [0.6] * n_layers
    ### END SOLUTION


print(f"your allocation, mean sparsity: {sum(my_allocation(n_layers)) / n_layers:.2f}")

# %%
checks.check_allocation(model, scan_windows, my_allocation(n_layers), 0.6)

# %% [markdown]
# ### The worked answer: allocate by outliers (OWL)
#
# OWL (Yin et al., 2024) counts, in each layer, the share of Wanda scores
# |W|·||X|| above 5 times the layer's mean: layers with many such outliers carry
# features the model relies on, so they get a lower sparsity, the others a higher
# one, within ±8 points and the same total (`pruning/allocation.py` derives it).
# Measured against uniform at 60% (magnitude scores, same 2 windows):

# %%
shares = allocation.outlier_shares(model, calib[:2])
owl = allocation.owl_sparsities(model, shares, 0.6)
print("outlier share per layer: " + ", ".join(f"{x:.2%}" for x in shares))
print("OWL sparsity per layer : " + ", ".join(f"{x:.2f}" for x in owl))
owl_result = {}
for label, alloc in (("uniform", [0.6] * n_layers), ("OWL", owl)):
    handle = allocation.prune_layers(model, alloc)
    owl_result[label] = round(metrics.perplexity(model, scan_windows), 2)
    handle.restore()
print(f"60% in total: uniform {owl_result['uniform']:.2f}, OWL {owl_result['OWL']:.2f}")
run.claim("at 60% the outlier-aware allocation beats uniform, same total",
          owl_result["OWL"] < owl_result["uniform"],
          f"OWL {owl_result['OWL']:.2f} vs uniform {owl_result['uniform']:.2f}", needs_real_model=True)

# %% [markdown]
# With magnitude scores at 70% the model is destroyed either way and the
# allocation no longer rescues it; `bench/results.md` records uniform against OWL
# at 60% and 70%, with magnitude and Wanda scores, on the lesson's 4 windows.
#
# ## Explore
#
# Browse the points measured above (instant), or ask for new ones. Each new
# point shows its perplexity first, then times the dense model and the pruned one
# by turns; the bars are the interval of the median speedup, narrowing run by run
# until it clears 1 or the runs are spent.

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
#
# Write `mask_2_4(weight)`: a bool mask of the same shape that keeps the 2 largest
# `|w|` of every 4 consecutive weights of each row.

# %% tags=["solution"]
def mask_2_4(weight):
    """Keep-mask for 2:4 sparsity along the input dimension."""
    ### BEGIN SOLUTION
    groups = weight.abs().reshape(weight.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(weight.shape)
    ### END SOLUTION


# %%
checks.check_2_4_mask(mask_2_4)

# %% [markdown]
# Write Wanda's selection: `wanda_mask(weight, inputs, sparsity)` returns the bool
# keep-mask of an `(out, in)` weight, given the layer's inputs `(tokens, in)`.
# Score each weight by `|W_ij| · ||X_j||₂` (the L2 norm of input channel j over
# all tokens) and, **in every output row**, prune the lowest `sparsity` share.

# %% tags=["solution"]
def wanda_mask(weight, inputs, sparsity):
    """Keep-mask by Wanda's score, the same number pruned in every row."""
    ### BEGIN SOLUTION
    score = weight.abs() * inputs.pow(2).sum(0).sqrt()
    n_prune = int(weight.shape[1] * sparsity)
    lowest = score.argsort(dim=1)[:, :n_prune]
    keep = torch.ones_like(weight, dtype=torch.bool)
    keep.scatter_(1, lowest, False)
    return keep
    ### END SOLUTION


# %%
checks.check_wanda_mask(wanda_mask)

# %% [markdown]
# Write one SparseGPT step: `sparsegpt_step(W, U, i, prune)` removes the weights of
# column `i` in the rows where `prune` is True, and repairs each such row with the
# inverse-Hessian row: `err = W[r, i] / U[i, i]`, then `W[r, j] -= err * U[i, j]`
# for every `j >= i` (`U`: the upper Cholesky factor of H⁻¹). Return a new tensor
# whose pruned weights are exactly 0.

# %% tags=["solution"]
def sparsegpt_step(W, U, i, prune):
    """Prune column i where `prune` is True and compensate the later columns."""
    ### BEGIN SOLUTION
    W = W.clone()
    err = torch.where(prune, W[:, i] / U[i, i], torch.zeros_like(W[:, i]))
    W[:, i:] -= err[:, None] * U[i, i:][None, :]
    W[prune, i] = 0.0
    return W
    ### END SOLUTION


# %%
checks.check_sparsegpt_step(sparsegpt_step)

# %% [markdown]
# ## Takeaways
#
# - At 50%, SparseGPT and Wanda keep far more quality than magnitude pruning, because
#   they look at the inputs. SparseGPT also repairs the kept weights: best on its own
#   calibration inputs, it needs enough calibration to carry that to held-out text;
#   with 8 short windows Wanda wins at 50%, SparseGPT under 2:4.
# - The 50%-sparse model runs as long as the dense one with dense kernels, within
#   the noise: zeros are not speed.
# - Sparse CPU kernels win only well above 50% sparsity; 2:4 needs a GPU's sparse tensor cores.
# - SparseGPT should be calibrated on the kind of text the model will see; for Wanda it mattered less here.
# - Layers differ: sparing the sensitive ones (by a scan, or by outliers as OWL does)
#   beats uniform at the same total.
# - At 70% this small model degrades badly whatever the method: the folklore's
#   "minimal loss" was measured on models of billions of parameters.

# %% tags=["nbval-ignore-output"]
summary.record("05", MODEL, dense_ppl, table["sparsegpt"]["50%"], dense_kernel_ratio,
               "SparseGPT 50% (perplexity); 50% zeros on dense kernels (latency)")
