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

from course_lib.core import arch, data, metrics
from course_lib.pruning import masks, one_layer, sparsegpt, wanda
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
# ## The whole model, layer by layer
#
# Wanda and SparseGPT walk the decoder one layer at a time: each layer is
# calibrated on what the already-pruned layers before it produce. The explorer
# below measures each (method, sparsity) once and keeps it: we fill it now.

# %%
PRUNERS = {
    "magnitude": lambda m, s, p=None: masks.magnitude_prune(m, s, pattern=p),
    "wanda": lambda m, s, p=None: wanda.wanda_prune(m, calib, s, pattern=p),
    "sparsegpt": lambda m, s, p=None: sparsegpt.sparsegpt_prune(m, calib, s, pattern=p),
}
explorer = Explorer(model, run.windows.eval, lambda m, method, s: PRUNERS[method](m, s),
                    methods=tuple(PRUNERS), amount_label="sparsity", amount_max=0.7, step=0.2,
                    value=0.5, title="magnitude vs Wanda vs SparseGPT")
sparsities = [0.3, 0.5, 0.7]
for method in PRUNERS:
    for s in sparsities:
        explorer.point(method, s)
print(f"{len(explorer.cache)} points measured")

# %%
curve = {m: [dense_ppl] + [round(explorer.point(m, s).perplexity, 2) for s in sparsities] for m in PRUNERS}
for method, values in curve.items():
    print(f"{method:>10}: " + ", ".join(f"{s:.0%} -> {v:.2f}" for s, v in zip([0] + sparsities, values)))
plots.curves([0] + [s * 100 for s in sparsities], curve, xlabel="% of decoder weights pruned",
             ylabel="perplexity", logy=True, title="quality vs sparsity")

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
print("SparseGPT and Wanda far below magnitude at 50%:",
      max(table["sparsegpt"]["50%"], table["wanda"]["50%"]) < table["magnitude"]["50%"] / 2)
print("SparseGPT beats Wanda at 2:4:", table["sparsegpt"]["2:4"] < table["wanda"]["2:4"])

# %% [markdown]
# Read the table: with only 8 calibration windows of 128 tokens, Wanda is ahead
# at 50%, while SparseGPT pulls ahead under the stricter 2:4 pattern. SparseGPT
# fits the kept weights to its calibration data, so it needs more of it: with 32
# windows of 256 tokens it wins at 50% too (20.12 against Wanda's 24.83 on
# another evaluation set: `make bench` measures it, `bench/results.md`). The last
# section below measures how much the *kind* of calibration text matters.

# %% tags=["nbval-ignore-output"]
print("2:4 pruning time: " + ", ".join(f"{m} {t:.1f} s" for m, t in seconds.items()))

# %% [markdown]
# ## Does a 50%-sparse model run faster?
#
# Folklore says half the weights means half the work. With dense kernels the
# zeros are multiplied like any other number. Measure the dense model and a
# 50%-sparse copy (Wanda's, the quickest to make) side by side:

# %% tags=["nbval-ignore-output"]
sparse50 = run.copy_model()
wanda.wanda_prune(sparse50, calib, 0.5)  # any 50% of zeros: the pattern does not matter to a dense kernel
latency = run.latency({"dense": model, "50% sparse": sparse50}, tokens=128, runs=9)
dense_kernel_ratio = latency["50% sparse"].ratio_to(latency["dense"])

# %%
print(f"sparsity of the copy: {metrics.total_sparsity(sparse50):.1%}")
print("50% zeros, dense kernels: latency within 15% of dense:", abs(dense_kernel_ratio - 1) < 0.15)

# %% [markdown]
# ### A sparse-aware runtime: CSR on the CPU
#
# A sparse format stores only the non-zeros and their positions, and its kernel
# skips the zeros — but pays for reading the positions. One MLP matrix, 128
# tokens, dense vs CSR and block-sparse (BSR) at rising sparsity:

# %% tags=["nbval-ignore-output"]
sparse_curve = sparse.sparse_layer_ratios(weight, [0.5, 0.7, 0.9, 0.95], tokens=128)
for layout in ("csr", "bsr"):
    print(f"{layout}: break-even sparsity ~ {sparse_curve.break_even(layout)}")
plots.curves([s * 100 for s in sparse_curve.sparsities],
             {layout: sparse_curve.speedups[layout] for layout in ("csr", "bsr")},
             xlabel="% zeros in the matrix", ylabel="speedup vs dense (same matrix)",
             reference={"dense = 1": [1.0] * len(sparse_curve.sparsities)},
             title="sparse kernels pay off only at high sparsity")

# %%
print("CSR slower than dense at 50%:", sparse_curve.speedups["csr"][0] < 1)

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
# prose or on Python source code, then evaluate on both: who wins where?

# %%
code = data.windows_for(run.tokenizer, MODEL, source="python-source", seq_len=128, n_eval=N_EVAL, n_calib=N_CALIB)
texts = {"prose": run.windows, "code": code}
print(f"dense: prose {dense_ppl:.2f}, code {run.perplexity(windows=code.eval):.2f}")
grid = {}
for method, prune_fn in (("wanda", wanda.wanda_prune), ("sparsegpt", sparsegpt.sparsegpt_prune)):
    for calib_name, calib_text in texts.items():
        handle = prune_fn(model, calib_text.calib, 0.5)
        for eval_name, eval_text in texts.items():
            grid[method, calib_name, eval_name] = run.perplexity(windows=eval_text.eval)
        handle.restore()
        print(f"{method:>10} calibrated on {calib_name:>5}: prose {grid[method, calib_name, 'prose']:.2f}, "
              f"code {grid[method, calib_name, 'code']:.2f}")

# %%
for calib_name in texts:
    for eval_name in texts:
        best = min(("wanda", "sparsegpt"), key=lambda m: grid[m, calib_name, eval_name])
        where = "same kind of text" if calib_name == eval_name else "other kind of text"
        print(f"calibrated on {calib_name:>5}, evaluated on {eval_name:>5} ({where}): {best} wins")
for method in ("wanda", "sparsegpt"):
    gain = sum(grid[method, other, e] - grid[method, e, e] for e in texts for other in texts if other != e) / 2
    print(f"{method:>10}: matching calibration to the evaluated text lowers perplexity by {gain:.2f} on average")

# %% [markdown]
# SparseGPT reconstructs the kept weights from its calibration inputs, so it
# gains most when calibration matches what is served, and loses most when it
# does not; Wanda only uses the size of each input channel. Calibrate on data
# like the data you will serve.
#
# ## Explore
#
# Browse the points measured above (instant), or ask for new ones.

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
# ## Takeaways
#
# - At 50%, SparseGPT and Wanda keep far more quality than magnitude pruning, because
#   they look at the inputs; SparseGPT also repairs the kept weights, which pays off
#   under 2:4 and with enough calibration data.
# - The 50%-sparse model runs exactly as long with dense kernels: zeros are not speed.
# - Sparse CPU kernels win only well above 50% sparsity; 2:4 needs a GPU's sparse tensor cores.
# - Calibrate on the kind of text the model will see.
# - Small models are fragile: TinyLlama-1.1B (the original lesson) loses far less at 50%.

# %% tags=["nbval-ignore-output"]
summary.record("05", MODEL, dense_ppl, table["sparsegpt"]["50%"], dense_kernel_ratio,
               "SparseGPT 50% (perplexity); 50% zeros on dense kernels (latency)")
