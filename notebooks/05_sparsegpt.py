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
# # Lesson 5 — SparseGPT, Wanda and magnitude pruning at 50%
#
# *Follows `pruning_sparsegpt_tinyllama.py`, on SmolLM2-135M (offline);
# TinyLlama-1.1B is one parameter away.*
#
# Half of the weights of every decoder matrix become zero. Which half? Magnitude
# pruning drops the smallest weights; **Wanda** weighs each weight by the size of
# the input it multiplies; **SparseGPT** also *adjusts the weights it keeps* to
# cancel the error. We measure the quality of each, how much calibration text each
# needs, then the question every folk claim skips: does a 50%-sparse model run any
# faster?
#
# Wanda and SparseGPT learn from a calibration sample, so every ranking of methods
# below holds over `DRAWS` calibration draws, each decided by a paired interval on
# the same evaluation tokens (lesson 0), or it is not claimed.
#
# <!-- quoted: the replay tolerance this notebook's metadata sets (course.replay_rtol) -->
# *Replaying this lesson elsewhere*: its printed numbers are compared with the stored ones
# within 0.2% (or one unit of the last digit), except three cells of SparseGPT's figures,
# which say their own tolerance; timings are not compared (lesson 0).

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # original lesson: "TinyLlama/TinyLlama-1.1B-Chat-v1.0" (needs the internet once)
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 4  # evaluation windows of 128 tokens
N_CALIB = 16  # calibration windows of 128 tokens: 2048 tokens, more than the widest matrix has inputs
DRAWS = 3  # calibration draws behind every ranking of methods

# %%
import time

import torch

from course_lib.core import arch, data, metrics, stats, timing
from course_lib.pruning import allocation, masks, one_layer, sparsegpt, wanda
from course_lib.runtime import sparse
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL, n_calib=N_CALIB)
model, calib = run.model, run.windows.calib
geo = arch.geometry(model)  # layer count and projection names, read from the model
code = data.windows_for(run.tokenizer, MODEL, source="python-source", seq_len=calib.shape[1],
                        n_eval=N_EVAL, n_calib=N_CALIB)  # a second kind of text: Python source
widest = max(arch.weight_matrix(m).shape[1] for m in arch.prunable_linears(model).values())
print(f"calibration: {N_CALIB} windows = {calib.numel()} tokens; the widest decoder matrix has {widest} inputs")

# %%
dense = run.quality()  # per-token NLL: the perplexity, and paired comparisons with it
dense_ppl = round(dense.perplexity, 2)
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
run.claim("every method moves them more under 2:4 than at 50% unstructured (the same half of the weights)",
          all(errors_24[m] > errors[m] for m in errors),
          ", ".join(f"{m} {errors[m]:.3f} -> {errors_24[m]:.3f}" for m in errors))

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
# SparseGPT *solves* for the kept weights on them (a least-squares fit with one
# unknown per input of every row), so part of its advantage may be fitted noise. Keep
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
run.claim("even held out, SparseGPT's error is the lowest on this matrix",
          held_out["sparsegpt"] < min(held_out["wanda"], held_out["magnitude"]),
          ", ".join(f"{m} {e:.3f}" for m, e in held_out.items()), needs_real_model=True)

# %% [markdown]
# ### How much calibration does a fit need?
#
# SparseGPT's fit has one unknown per input of a row; its Hessian `X Xᵀ` is
# full-rank only with more calibration tokens than the matrix has inputs. The widest
# matrix here is `down_proj` (it reads every MLP neuron). Fit it on 256 to 2048
# calibration tokens, from `DRAWS` calibration draws each, and judge every fit on the
# same held-out inputs.
#
# **Predict**: below how many tokens will Wanda (no fit, one norm per input) beat
# SparseGPT on held-out text?

# %% tags=["prediction"]
my_guess_crossing = 512  # calibration tokens below which Wanda's held-out error is lower

# %%
down_name = geo.mlp_module(geo.middle_layer(), geo.mlp_projections[-1])  # down_proj (GPT-2: c_proj)
down = dict(model.named_modules())[down_name]
down_weight = arch.weight_matrix(down)
down_held = one_layer.module_inputs(model, down, run.windows.eval)
draw_inputs = {d: one_layer.module_inputs(model, down, run.calibration(d)) for d in range(DRAWS)}
amounts = [n * calib.shape[1] for n in (2, 4, 8, 16) if n <= N_CALIB]
curve = {m: [] for m in ("wanda", "sparsegpt")}  # per amount: (mean, min, max) over the draws
for tokens in amounts:
    for m in curve:
        held = [one_layer.reconstruction_error(down_weight, one_layer.prune_matrix(
            down_weight, draw_inputs[d][:tokens], m, 0.5), down_held) for d in range(DRAWS)]
        curve[m].append((sum(held) / len(held), min(held), max(held)))
print(f"{down_name}: {down_weight.shape[1]} inputs; held-out error, min-max over {DRAWS} draws")
for i, tokens in enumerate(amounts):
    print(f"{tokens:>5} tokens: " + ", ".join(f"{m} {curve[m][i][1]:.3f}-{curve[m][i][2]:.3f}" for m in curve))
plots.curves(amounts, {m: [c[0] for c in v] for m, v in curve.items()}, xlabel="calibration tokens",
             ylabel="held-out output error (mean of the draws)",
             title=f"{down_name} ({down_weight.shape[1]} inputs): the fit needs more tokens than inputs")

# %%
wanda_wins = [curve["wanda"][i][2] < curve["sparsegpt"][i][1] for i in range(len(amounts))]
sgpt_wins = [curve["sparsegpt"][i][2] < curve["wanda"][i][1] for i in range(len(amounts))]
few = [t for t, w in zip(amounts, wanda_wins) if w]
many = [t for t, w in zip(amounts, sgpt_wins) if w]
print(f"Wanda lower in every draw at {few} tokens; SparseGPT lower in every draw at {many} tokens "
      f"(you guessed the crossing near {my_guess_crossing})")
run.claim(f"with fewer calibration tokens than {down_name}'s {down_weight.shape[1]} inputs, Wanda's held-out "
          "error is lower than SparseGPT's in every draw; with more, SparseGPT's is",
          bool(few) and bool(many) and max(few) < down_weight.shape[1] < min(many),
          f"Wanda lower at {few}, SparseGPT lower at {many} tokens", needs_real_model=True)

# %% [markdown]
# The crossing sits near the matrix's input count: below it, SparseGPT fits the
# calibration sample rather than the layer. That is why this lesson calibrates on
# 2048 tokens (earlier versions used 1024, where SparseGPT's whole-model result
# changed with the CPU it ran on: a rank-deficient fit is decided by rounding).
#
# ## The whole model, layer by layer
#
# Wanda and SparseGPT walk the decoder one layer at a time: each layer is
# calibrated on what the already-pruned layers before it produce. Magnitude needs
# no calibration; Wanda and SparseGPT are pruned once per calibration draw, and every
# model is evaluated on the same tokens.
#
# **Predict first.** Which method will give the lowest perplexity at 50%?

# %%
PRUNERS = {
    "magnitude": lambda m, s, cal=None, p=None: masks.magnitude_prune(m, s, pattern=p),
    "wanda": lambda m, s, cal, p=None: wanda.wanda_prune(m, cal, s, pattern=p),
    "sparsegpt": lambda m, s, cal, p=None: sparsegpt.sparsegpt_prune(m, cal, s, pattern=p),
}
my_guess_best_at_50 = "sparsegpt"  # "magnitude", "wanda" or "sparsegpt"
print(f"your guess: {my_guess_best_at_50}")

# %% [markdown]
# *Replaying these cells elsewhere.* SparseGPT chooses a row's zeros block by block, each
# choice after the updates of the ones before: a last-bit difference between CPU kinds
# (AVX2, AVX-512) can flip a near-tie, and the flip changes every later update of that row.
# Between the two, its perplexities moved by up to 0.3% at 50% and 2% at 70%, so the next
# two cells are compared within 1% and 2% on replay, and the 70% cell within 5%.

# %% tags=["replay-rtol-0.01"]
draws = [run.calibration(d) for d in range(DRAWS)]  # draw 0 is the lesson's calibration windows
at_50, seconds = {"magnitude": []}, {}
started = time.perf_counter()
handle = PRUNERS["magnitude"](model, 0.5)
seconds["magnitude"] = time.perf_counter() - started
at_50["magnitude"].append(run.quality())
handle.restore()
for method in ("wanda", "sparsegpt"):
    at_50[method] = []
    for d, cal in enumerate(draws):
        started = time.perf_counter()
        handle = PRUNERS[method](model, 0.5, cal)
        seconds.setdefault(method, time.perf_counter() - started)
        at_50[method].append(run.quality())
        handle.restore()
    print(f"{method:>10} 50%: " + ", ".join(f"draw {d} {q.perplexity:.2f}" for d, q in enumerate(at_50[method])))
print(f" magnitude 50%: {at_50['magnitude'][0].perplexity:.2f} (no calibration)")

# %% tags=["replay-rtol-0.02"]
vs_magnitude = {m: [q.vs(at_50["magnitude"][0]) for q in at_50[m]] for m in ("wanda", "sparsegpt")}
run.claim("SparseGPT and Wanda stay far below magnitude at 50%: under half its perplexity in every draw",
          all(c.high < 0.5 for cs in vs_magnitude.values() for c in cs),
          "; ".join(f"{m}/magnitude at most {max(c.high for c in cs):.3f}" for m, cs in vs_magnitude.items()),
          needs_real_model=True)
ranking = stats.compare_over_draws("Wanda", [q.nll for q in at_50["wanda"]],
                                   "SparseGPT", [q.nll for q in at_50["sparsegpt"]])
print(ranking)
run.claim(f"calibrated on {N_CALIB * calib.shape[1]} tokens, SparseGPT beats Wanda at 50%: over the draws "
          "(draws and evaluation blocks both redrawn) and in each draw's own estimate",
          ranking.b_lower_everywhere, ranking.verdict, needs_real_model=True)
best = "sparsegpt" if ranking.b_lower_everywhere else "wanda" if ranking.b_higher_everywhere else "not decided"
print(f"you guessed {my_guess_best_at_50}; the lowest perplexity at 50%, over the draws: {best}")
plots.intervals({f"draw {d}": (c.ratio, c.low, c.high) for d, c in enumerate(ranking.draws)},
                xlabel="perplexity ratio SparseGPT / Wanda, paired (1 = a tie)",
                title=f"50%: SparseGPT against Wanda, {DRAWS} calibration draws")

# %% [markdown]
# The matrix curve above predicts the other side: with fewer calibration tokens than
# `down_proj` has inputs, SparseGPT's fit follows its sample and its advantage goes.
#
# <!-- quoted: this lesson's earlier versions, calibrated on 8 windows of 128 tokens -->
# With 1024 calibration tokens this lesson once measured Wanda at 36.80 and SparseGPT at
# 38.93 on these evaluation windows, and SparseGPT's figure moved with the CPU it ran on.
#
# The published comparisons calibrate on 128 windows of 2048 tokens (Wanda's and
# SparseGPT's papers, on 7B models); `make bench` measures this model on 32 windows of 256
# tokens (`bench/reference_protocol.md`).
#
# ### 2:4
#
# The stricter pattern keeps two of every four consecutive weights. On the matrix of
# the first section every method lost more under 2:4 than at 50% unstructured (the
# claim there). This lesson does not rank the methods under 2:4 on the whole model:
# that takes a walk per method and per draw.
# <!-- quoted: bench/reference_protocol.md, one calibration draw -->
# At the reference protocol's size (8192 calibration tokens, one draw, `make bench`),
# 2:4 left Wanda at 66.84 and SparseGPT at 29.89, against a dense 13.69.

# %% [markdown]
# <!-- quoted: the original lesson's claim -->
# The folklore that SparseGPT prunes "50–90% with minimal loss" comes from
# models of billions of parameters. At 70%, this 135M model, with SparseGPT (one
# draw; the explorer below has the other methods):

# %% tags=["replay-rtol-0.05"]
handle = PRUNERS["sparsegpt"](model, 0.7, calib)
at_70 = run.quality()
handle.restore()
seventy = at_70.vs(dense)
run.claim("at 70% SparseGPT more than doubles the dense perplexity of this model",
          seventy.low > 2, f"SparseGPT at 70%: {seventy}", needs_real_model=True)

# %% [markdown]
# How long each method took to prune the whole model (50%, draw 0, this machine):
# magnitude only sorts weights; Wanda adds one calibration pass; SparseGPT also
# builds and factors one Hessian per input and updates the weights column by column.

# %%
made = {m: seconds[m] for m in PRUNERS}
print("50% pruning time (draw 0): " + ", ".join(f"{m} {t:.1f} s" for m, t in made.items()))
run.claim("magnitude is the quickest to make, then Wanda, then SparseGPT (each at least 1.5 times the one before)",
          made["wanda"] > 1.5 * made["magnitude"] and made["sparsegpt"] > 1.5 * made["wanda"],
          ", ".join(f"{m} {t:.1f} s" for m, t in made.items()), needs_real_model=True)

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
latency = run.latency({"dense": model, "50% sparse": sparse50}, tokens=128, runs=7,  # too wide a spread: again
                      decides=lambda t: timing.speedup(t["dense"], t["50% sparse"]).rules_out(1.5))
dense_kernel_ratio = latency["50% sparse"].ratio_to(latency["dense"])
zeros_speedup = timing.speedup(latency["dense"], latency["50% sparse"])
print(f"speedup {zeros_speedup}; you guessed {my_guess_speedup:.2f}x")

# %%
print(f"sparsity of the copy: {metrics.total_sparsity(sparse50):.1%}")
run.claim("50% zeros on dense kernels are not the 2x that half the work suggests: the paired runs rule "
          "out a speedup above 1.5x (halfway to 2x)", zeros_speedup.rules_out(1.5),
          f"{zeros_speedup.median:.2f}x, spread {zeros_speedup.low:.2f}x-{zeros_speedup.high:.2f}x",
          needs_real_model=True)  # a tiny stand-in's forward pass is overhead: its spread decides nothing
run.claim("nor far slower: the spread reaches 0.8x or above", zeros_speedup.high >= 0.8,
          f"{zeros_speedup.median:.2f}x, spread {zeros_speedup.low:.2f}x-{zeros_speedup.high:.2f}x",
          needs_real_model=True)

# %% [markdown]
# If you guessed near 2x, you counted multiplications; the dense kernel does
# every one of them, zero or not. The verdict printed with the timing is this
# run's ("within noise", or a few percent either way on a busy machine: the zeros
# are not what moves it); the claims hold whatever it reads. The clearly "slower"
# of the folklore shows with a *sparse* format at this sparsity, next.

# %% [markdown]
# ### A sparse-aware runtime: CSR on the CPU
#
# A sparse format stores only the non-zeros and their positions, and its kernel
# skips the zeros — but pays for reading the positions. One MLP matrix, 128
# tokens, dense vs CSR and block-sparse (BSR) at rising sparsity. Where a format
# breaks even depends on the matrix, the tokens and the machine's state (lesson 6
# and `bench/results.md` measured it at other shapes and loads, from about 70% to
# beyond 95%); what holds everywhere is that 50% is far below it:

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
          f"{sparse_curve.speedups['csr'][0]:.2f}x", needs_real_model=True)

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
# prose or on Python source code, then evaluate on both: who wins where? First on
# the matrix above (`down_proj`, cheap enough for every draw), judged on held-out
# inputs of each text; then the whole model, on one draw.

# %%
texts = {"prose": run.windows, "code": code}
held = {"prose": down_held, "code": one_layer.module_inputs(model, down, code.eval)}
fitted = {("prose", d): draw_inputs[d] for d in range(DRAWS)}  # the amount curve's prose draws
for d in range(DRAWS):
    code_draw = data.windows_for(run.tokenizer, MODEL, source="python-source", seq_len=calib.shape[1],
                                 n_eval=N_EVAL, n_calib=N_CALIB, draw=d).calib
    fitted["code", d] = one_layer.module_inputs(model, down, code_draw)
matrix = {}  # (method, calibrated on, evaluated on, draw) -> held-out error
for (calib_name, d), inputs in fitted.items():
    for method in ("wanda", "sparsegpt"):
        pruned_w = one_layer.prune_matrix(down_weight, inputs, method, 0.5)
        for eval_name, x in held.items():
            matrix[method, calib_name, eval_name, d] = one_layer.reconstruction_error(down_weight, pruned_w, x)
for method in ("wanda", "sparsegpt"):
    for calib_name in texts:
        print(f"{method:>10} calibrated on {calib_name:>5}: " + ", ".join(
            f"on {e} {min(matrix[method, calib_name, e, d] for d in range(DRAWS)):.3f}-"
            f"{max(matrix[method, calib_name, e, d] for d in range(DRAWS)):.3f}" for e in texts))

# %%
def matching_gain(method, d):
    """How much lower the held-out error is with calibration of the evaluated kind, summed over both texts."""
    return sum(matrix[method, other, e, d] - matrix[method, e, e, d] for e in texts for other in texts if other != e)


gains = {m: [matching_gain(m, d) for d in range(DRAWS)] for m in ("wanda", "sparsegpt")}
print("matching gain per draw: " + "; ".join(f"{m} " + ", ".join(f"{g:.3f}" for g in v) for m, v in gains.items()))
run.claim("on this matrix, SparseGPT does better calibrated on the kind of text it is evaluated on, "
          "for both texts, in every draw",
          all(matrix["sparsegpt", e, e, d] < matrix["sparsegpt", o, e, d]
              for e in texts for o in texts if o != e for d in range(DRAWS)),
          f"matching gain {min(gains['sparsegpt']):.3f}-{max(gains['sparsegpt']):.3f}", needs_real_model=True)
run.claim("matching the calibration text matters more to SparseGPT than to Wanda, in every draw",
          all(s_ > w_ for s_, w_ in zip(gains["sparsegpt"], gains["wanda"])),
          f"SparseGPT {min(gains['sparsegpt']):.3f}-{max(gains['sparsegpt']):.3f}, "
          f"Wanda {min(gains['wanda']):.3f}-{max(gains['wanda']):.3f}", needs_real_model=True)

# %% [markdown]
# SparseGPT reconstructs the kept weights from its calibration inputs: it gains
# when calibration matches what is served, and loses when it does not. Wanda only
# uses the size of each input channel, and matching helps it less. The lesson for
# SparseGPT: calibrate on data like the data you will serve; for Wanda, measure
# rather than assume.
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
alone = {}
for layer in scan_layers:
    handle = allocation.prune_layers(model, [0.8 if i == layer else 0.0 for i in range(n_layers)])
    alone[layer] = run.quality(windows=scan_windows)
    handle.restore()
scan = [[round(alone[layer].perplexity, 2)] for layer in scan_layers]
for layer in scan_layers:
    print(f"layer {layer:>2} alone at 80%: perplexity {alone[layer].perplexity:.2f} (dense {scan_dense:.2f})")
plots.sensitivity(scan, scan_layers, scan_sparsities, scan_dense)

# %%
mid = n_layers // 2
ends = {layer: alone[mid].vs(alone[layer]) for layer in scan_layers if layer != mid}  # paired
run.claim("a middle layer tolerates 80% better than the first or the last one",
          all(c.verdict == "lower" for c in ends.values()),
          "; ".join(f"layer {mid} / layer {l}: {c.ratio:.3f} ({c.interval()})" for l, c in ends.items()),
          needs_real_model=True)

# %% [markdown]
# ### Challenge: beat uniform at the same total
#
# Choose one sparsity per decoder layer so that the total is still 60% (every
# layer of this model has the same size, so the mean must be 0.6) and the
# perplexity is lower than uniform 60%. The check prunes with your allocation
# (magnitude scores), measures, and says by how much you beat uniform — or not.

# %% tags=["solution"]
def my_allocation(n_layers):
    """One sparsity per decoder layer, 60% in total."""
    ### BEGIN SOLUTION
    # spare the sensitive ends, take it from the tolerant middle
    ends = 0.45
    middle = (0.6 * n_layers - 2 * ends) / (n_layers - 2) if n_layers > 2 else 0.6
    return [ends] + [middle] * (n_layers - 2) + [ends] if n_layers > 2 else [0.6] * n_layers
    ### END SOLUTION


# %%
checks.check_allocation(model, scan_windows, my_allocation, 0.6)

# %% [markdown]
# ### The worked answer: allocate by outliers (OWL)
#
# OWL (Yin et al., 2024) counts, in each layer, the share of Wanda scores
# |W|·||X|| above 5 times the layer's mean: layers with many such outliers carry
# features the model relies on, so they get a lower sparsity, the others a higher
# one: 8 points either side of the target, then one common shift that restores the
# total (`pruning/allocation.py` derives it; the shifts are printed). An allocation matters where the model is still usable, so compare it
# with uniform where Wanda leaves this model at a few times its dense perplexity:
# 60%, with Wanda's scores, over the calibration draws (a quarter of each draw's
# windows: Wanda fits nothing, one norm per input), on the lesson's evaluation windows.

# %%
OWL_TARGET = 0.6
owl_quality = {"uniform": [], "OWL": []}
for d, cal in enumerate(draws):
    owl = allocation.owl_sparsities(model, allocation.outlier_shares(model, cal[:2]), OWL_TARGET)
    for label, alloc in (("uniform", [OWL_TARGET] * n_layers), ("OWL", owl)):
        handle = allocation.prune_layers(model, alloc, method="wanda", calib_windows=cal[: N_CALIB // 4])
        owl_quality[label].append(run.quality())
        handle.restore()
    if d == 0:
        shifts = [x - OWL_TARGET for x in owl]
        print(f"draw 0, OWL sparsity per layer: {min(owl):.2f}-{max(owl):.2f} "
              f"(shifts {min(shifts):+.2f} to {max(shifts):+.2f} around {OWL_TARGET:.0%})")
owl_ranking = stats.compare_over_draws("uniform", [q.nll for q in owl_quality["uniform"]],
                                       "OWL", [q.nll for q in owl_quality["OWL"]])
print(f"Wanda {OWL_TARGET:.0%} in total: {owl_ranking}")
usable = max(q.perplexity for q in owl_quality["uniform"]) / dense.perplexity
print(f"uniform {OWL_TARGET:.0%} Wanda is at most {usable:.1f} times the dense perplexity: still a usable model")
run.claim(f"at {OWL_TARGET:.0%} with Wanda's scores, the outlier-aware allocation does not beat uniform on this "
          "model: uniform is lower, over the draws and in each draw's own estimate",
          owl_ranking.b_higher_everywhere, owl_ranking.verdict, needs_real_model=True)

# %% [markdown]
# The folklore says OWL beats uniform; its paper measured that on models of billions of
# parameters, at 70% and beyond. On this 135M model, at a sparsity where it is still
# usable, the outlier-aware allocation cost perplexity in every draw: an allocation is a
# hypothesis about the model, to be measured before it is trusted.

# %% [markdown]
# ## Explore
#
# Every method at every sparsity (draw 0 of the calibration). The points this lesson
# measured above are handed to the explorer (their perplexities, not pruned again); a new
# point shows its perplexity first, then times the dense model and the pruned one by
# turns; the bars are the interval of the median speedup, narrowing run by run until it
# clears 1 or the runs are spent.

# %%
explorer = Explorer(model, run.windows.eval, lambda m, method, s: PRUNERS[method](m, s, calib),
                    methods=tuple(PRUNERS), amount_label="sparsity", amount_max=0.7, step=0.2,
                    value=0.5, grid=[0.5, 0.7], latency_tokens=32, title="magnitude vs Wanda vs SparseGPT")
for method in PRUNERS:
    explorer.seed(method, 0.5, at_50[method][0].perplexity)
explorer.seed("sparsegpt", 0.7, at_70.perplexity)
print(f"{len(explorer.cache)} points known (the dense one and 4 measured above); every other setting is "
      "measured once, then cached")

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
#   they look at the inputs (every draw decided it).
# - SparseGPT also repairs the kept weights, a least-squares fit with one unknown per
#   input: with more calibration tokens than the widest matrix has inputs it beats Wanda
#   in every draw; with fewer, its fit follows the sample and Wanda is as good or better
#   (the one-matrix curve, and the 1024-token line). Calibration size is part of the method.
# - The 50%-sparse model runs as long as the dense one with dense kernels: zeros are not
#   speed. Sparse CPU kernels win only well above 50% sparsity; 2:4 needs a GPU's sparse
#   tensor cores, and few runtimes still ship them (lesson 6).
# - SparseGPT should be calibrated on the kind of text the model will see; matching
#   mattered less to Wanda.
# - Layers differ: a single layer pruned alone shows it, and on a model ruined by magnitude
#   pruning an allocation that spares the ends beats uniform (the challenge). OWL's
#   outlier rule, at a usable 60% with Wanda, lost to uniform on this model in every draw.
# - At 70% SparseGPT leaves this small model at several times its dense perplexity: the
#   folklore's "minimal loss" was measured on models of billions of parameters.

# %% tags=["nbval-ignore-output"]
summary.record("05", MODEL, dense_ppl, at_50["sparsegpt"][0].perplexity, dense_kernel_ratio,
               "SparseGPT 50% (perplexity); 50% zeros on dense kernels (latency)")
