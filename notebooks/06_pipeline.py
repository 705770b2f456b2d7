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
# # Lesson 6 — From pruned to shipped: quantize, export, store, serve
#
# Pruning is one stage of a pipeline: **prune → recover → quantize → run in a
# runtime → serve**. This lesson takes SmolLM2 through every stage and measures
# each one the same way, against the dense float32 PyTorch model in the same run:
# perplexity, prefill latency, decoding speed, and the bytes of the file you
# would ship. You will see which stage buys speed, which buys size, which costs
# quality, and whether the gains multiply.
#
# <!-- quoted: the replay tolerance this notebook's metadata sets (course.replay_rtol) -->
# *Replaying this lesson elsewhere*: its printed numbers are compared with the stored ones
# within 0.2% (or one unit of the last digit), except the cells that print the quality of
# int8 models, whose arithmetic rounds differently on each CPU kind: they say their own
# tolerance. Timings are not
# compared (lesson 0).

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # stand-in for a quick check: "tiny-llama"
N_EVAL = 4  # evaluation windows of 128 tokens
N_CALIB = 8  # calibration windows (neuron scores, the refit, activation outliers)
FRACTIONS = (0.125, 0.1875, 0.25)  # MLP neurons removed from every layer: the candidates
BUDGET = 1.25  # the target: the shipped model's perplexity at most 1.25x dense
PRUNE_SHARE = 1.10  # of which pruning may take 1.10x; int8 weights and activations need the rest
KEEP_FLOAT = 8  # projections with the largest activation outliers kept in float32
NEW_TOKENS = 32  # generated when serving
QUICK = False  # True: fewer timing runs (to check that the lesson runs, not to read its timings)

# %%
import copy
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from course_lib.core import arch, metrics, timing
from course_lib.pruning import io, masks, mlp, recipes
from course_lib.recover import repair
from course_lib.runtime import export, pipeline, quantize, serve, smooth, sparse, speed, store
from course_lib.teaching import checks, lesson, plots, summary
from course_lib.teaching.widgets import Explorer

RUNS = 2 if QUICK else 5  # timed prefill runs per stage
run = lesson.start(MODEL, device="cpu", n_eval=N_EVAL, n_calib=N_CALIB)
dense = run.model
WORK = Path(tempfile.mkdtemp(prefix="course-lesson06-"))  # this run's own folder for every stage's file
stages, files, seconds = {"dense": dense}, {}, {"dense": 0.0}
notes = {"dense": "float32 PyTorch"}
files["dense"] = store.save_safetensors(dense, WORK / "dense.safetensors")
quality = {"dense": run.quality()}  # per-token NLL of every stage: perplexities and paired comparisons
ppl = {"dense": round(quality["dense"].perplexity, 2)}
print(f"dense: perplexity {ppl['dense']:.2f} ({N_EVAL} windows x 128 tokens), "
      f"{metrics.file_bytes(files['dense']) / 1e6:.1f} MB on disk (safetensors, float32)")

# %% [markdown]
# **Predict before you run.** Which stage will write the smallest file, and how
# much faster than dense will the shipped model decode? Write your guesses down.

# %%
my_guess_smallest = "int8 (PyTorch)"  # "pruned", "recovered", "int8 (PyTorch)", "ONNX Runtime" or "shipped"
my_guess_decode_speedup = 1.5  # shipped vs dense float32 PyTorch, tokens per second
print(f"your guesses: smallest file: {my_guess_smallest}; shipped decodes {my_guess_decode_speedup}x faster")

# %% [markdown]
# ## Stage 1 — structured prune, as much as the quality budget allows
# Lesson 4's recipe: remove the MLP neurons that fire least on calibration text,
# the same number from every layer. How many? The target allows the shipped model
# 1.25x dense perplexity; pruning may take 1.10x of it, because the shipped model will
# round its activations to int8 too (stage 4), and that needs the rest. Measure a few
# cuts and take the largest within that share.

# %%
started = time.perf_counter()
scores = mlp.neuron_importance_activation(dense, run.windows.calib)
score_seconds = time.perf_counter() - started
scan = {}
for fraction in FRACTIONS:
    trial = copy.deepcopy(dense)
    mlp.remove_neurons(trial, recipes.uniform_neurons_request(trial, fraction, scores=scores))
    trial_quality = run.quality(trial)
    scan[fraction] = round(trial_quality.perplexity, 2)
    print(f"{fraction:.2%} of the neurons removed: {trial_quality.vs(quality['dense'])}")
    del trial
within = [f for f in FRACTIONS if scan[f] <= PRUNE_SHARE * ppl["dense"]]
FRACTION = max(within) if within else min(FRACTIONS)
print(f"chosen: {FRACTION:.2%}" + ("" if within else " (none is within the share: the smallest cut)"))

# %% [markdown]
# A uniform cut keeps every layer alike, so the pruned model is a *standard*
# checkpoint: the config says the new `intermediate_size` and any tool opens it
# with plain `from_pretrained`.

# %%
started = time.perf_counter()
pruned = copy.deepcopy(dense)
mlp.remove_neurons(pruned, recipes.uniform_neurons_request(pruned, FRACTION, scores=scores))
seconds["pruned"] = score_seconds + time.perf_counter() - started
stages["pruned"], notes["pruned"] = pruned, f"{FRACTION:.2%} of every layer's MLP neurons removed"
files["pruned"] = io.export_pretrained(pruned, WORK / "pruned", tokenizer=run.tokenizer)
quality["pruned"] = run.quality(pruned)
ppl["pruned"] = round(quality["pruned"].perplexity, 2)
print(f"pruned: MLP width {arch.mlp_width(dense, 0)} -> {arch.mlp_width(pruned, 0)} neurons in every layer, "
      f"perplexity {ppl['dense']:.2f} -> {ppl['pruned']:.2f}")

# %%
plain = AutoModelForCausalLM.from_pretrained(files["pruned"])  # what another tool does: no course_lib
probe = run.windows.eval[:1]
with torch.no_grad():
    same = torch.equal(plain(probe).logits, pruned(probe).logits)
width_field = "n_inner" if arch.family(plain) == "gpt2" else "intermediate_size"  # GPT-2 names it n_inner
run.claim("the pruned checkpoint opens with plain from_pretrained and gives the same logits", same,
          f"config {width_field} {arch.mlp_width(plain, 0)}, logits bit-identical: {same}")
del plain

# %% [markdown]
# ## Stage 2 — recover
# Each layer's `down_proj` lost the inputs of the removed neurons. `repair.refit` re-solves
# it, layer by layer, so the kept neurons reproduce the dense layer's output on
# the calibration text (a ridge least-squares fit, derived in its docstring; lesson
# 3 used it after removing heads). No gradient steps.

# %%
started = time.perf_counter()
recovered = copy.deepcopy(pruned)
repair.refit(recovered, dense, run.windows.calib)
seconds["recovered"] = time.perf_counter() - started
stages["recovered"], notes["recovered"] = recovered, "down_proj refitted (repair.refit)"
files["recovered"] = io.export_pretrained(recovered, WORK / "recovered", tokenizer=run.tokenizer)
quality["recovered"] = run.quality(recovered)
ppl["recovered"] = round(quality["recovered"].perplexity, 2)
print(f"perplexity: dense {ppl['dense']:.2f}, pruned {ppl['pruned']:.2f}, refitted {ppl['recovered']:.2f}")
won_back = (ppl["pruned"] - ppl["recovered"]) / (ppl["pruned"] - ppl["dense"])
refit_gain = quality["recovered"].vs(quality["pruned"])  # paired: the same cut before and after
print(f"refitted vs pruned, paired: {refit_gain} ({won_back:.0%} of the loss won back by the estimate)")

# %% [markdown]
# After this MLP cut the refit's gain is within what 4 evaluation windows can tell apart
# (the line above says how much more text would decide it), as lesson 4 found for the
# same kind of cut; after head removal (lesson 3) it wins back far more. Recovering an
# MLP cut takes training (lesson 4's distillation).
#
# How much training? `make recover` measured it once (half an hour on 2 cores, too long
# for this lesson): SmolLM2 with 25% of every MLP removed, refitted, then 200 steps of
# distillation on prose and code, the perplexity measured every 25 steps on the protocol's
# prose (16 x 256) and on held-out Python source. Its record is committed with the course
# (`bench/recovery_curve.json`); the cell loads it and says where it was built.

# %%
from course_lib.teaching import stored

long_run = stored.load("recovery_curve")
print(stored.provenance(long_run))
curve = long_run["curve"]
dense_long = long_run["dense"]
for row in curve:
    print(f"{row['tokens']:>8,} tokens: prose {row['eval'] / dense_long['eval']:.3f}x dense, "
          f"code {row['heldout'] / dense_long['heldout']:.3f}x")
plots.curves([row["tokens"] / 1e3 for row in curve],
             {text: [row[key] / dense_long[key] for row in curve] for text, key in
              (("prose (protocol)", "eval"), ("held-out code", "heldout"))},
             xlabel="distillation tokens (thousands)", ylabel="perplexity / dense",
             title="what recovery costs: 25% of every MLP of SmolLM2",
             reference={"1.10x dense": [1.10] * len(curve)})

# %%
half = next(row for row in curve if row["tokens"] >= curve[-1]["tokens"] / 2)
moved = {key: 1 - curve[-1][key] / half[key] for key in ("eval", "heldout")}
prose_end, code_end = long_run["paired"]["eval"], long_run["paired"]["heldout"]
run.claim("the first eighth of the tokens wins back more than half of what the whole run wins back, on both texts",
          all(curve[0][k] - curve[1][k] > 0.5 * (curve[0][k] - curve[-1][k]) for k in ("eval", "heldout")),
          ", ".join(f"{k}: {curve[0][k]:.2f} -> {curve[1][k]:.2f} after {curve[1]['tokens']:,} tokens, "
                    f"{curve[-1][k]:.2f} at the end" for k in ("eval", "heldout")))
first = {key: 1 - curve[1][key] / curve[0][key] for key in ("eval", "heldout")}  # the first eighth's gain
run.claim("the second half of the tokens lowers each perplexity by less than a third of what the first eighth did",
          all(moved[k] < first[k] / 3 for k in moved),
          ", ".join(f"{k}: first eighth -{first[k]:.1%}, second half -{moved[k]:.1%} ({half[k]:.2f} -> "
                    f"{curve[-1][k]:.2f})" for k in ("eval", "heldout")))
run.claim("after 200 steps, prose is decidedly within 1.10x dense, while code stays decidedly above it",
          prose_end["high"] < 1.10 and code_end["low"] > 1.10,
          f"prose {prose_end['text']}; code {code_end['text']}")

# %% [markdown]
# Recovery is cheap at first and expensive after: the first 25,600 tokens do most of what
# 205k do, and the second half of the run buys a few percent more. The cut matters as much
# as the training: this run removes the neurons of smallest measured contribution (lesson
# 4's sharper score); chosen by mean |activation|, the same recipe ended at 1.09x dense on
# prose and 1.28x on code, and 1.12x / 1.32x with more code in its text. What is left to
# try for code (a higher peak learning rate did worse in short trials): a smaller cut, a
# score calibrated on more code, or a recovery that refits more than the down projection. <!-- quoted: bench/recovery.md, earlier builds of make recover -->

# %% [markdown]
# ## Stage 3 — int8 in PyTorch: why the naive way breaks this model
# `quantize_dynamic` rounds weights *and activations* to int8 with one scale per
# tensor. If a few activation channels are far larger than the rest, one scale
# set by them leaves the ordinary channels only a few int8 steps. The ratio
# max|x| / mean|x| at each projection's input says where that happens.

# %%
ratios = quantize.activation_outlier_ratio(recovered, run.windows.calib)
sensitive = quantize.most_sensitive(ratios, KEEP_FLOAT)
for name in sensitive[:4]:
    print(f"{name:<34} max|x| / mean|x| = {ratios[name]:7.1f}")
print(f"median over all {len(ratios)} projections: {sorted(ratios.values())[len(ratios) // 2]:.1f}")
plots.bars({n.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", ""): ratios[n]
            for n in sensitive}, ylabel="max|x| / mean|x|", reference=127,
           title=f"the {KEEP_FLOAT} projections with the largest input outliers (line: 127)")

# %% [markdown]
# A model that per-tensor int8 breaks is chaotic: the last bits in which CPU kinds differ
# (FBGEMM runs other int8 code on AVX2 than on AVX-512; float32 rounds differently; the
# refit's weights follow) flip int8 codes, and 30 layers of rounding to a few steps amplify
# the flips into percent of perplexity. So the *quality* of the int8 scheme is measured on
# its arithmetic simulated in float64 (`quantize.simulated_copy`: the same codes and scales
# as the kernel, tested equal to it on one projection), which removes the kernels' part;
# the refit's last bits remain: between AVX2 and AVX-512 on one Intel CPU, 2% here and 5%
# for int8 in every projection; between an Intel and an AMD CPU, both AVX-512, 7% here.
# These two cells are compared within 10% on replay; the *speed* is measured on the
# kernels themselves, below.
# <!-- quoted: this lesson replayed on other CPUs when its tolerances were set (AVX2 caps on an Intel Xeon; an AMD EPYC) -->

# %% tags=["replay-rtol-0.1"]
variants = {  # the kernels: what runs, and what is timed
    "int8, every projection": quantize.quantized_copy(recovered, "dynamic"),
    f"int8, {KEEP_FLOAT} outliers kept float": quantize.quantized_copy(recovered, "dynamic", keep_float=sensitive),
    "torchao int8 weight-only": quantize.quantized_copy(recovered, "torchao-int8-weight"),
}
naive, kept, weight_only = variants
quant_quality = {naive: run.quality(quantize.simulated_copy(recovered)),  # the scheme, in float64
                 kept: run.quality(quantize.simulated_copy(recovered, keep_float=sensitive)),
                 weight_only: run.quality(variants[weight_only])}  # float activations: not chaotic
quant_ppl = {label: round(q.perplexity, 2) for label, q in quant_quality.items()}
for label in (kept, weight_only):
    print(f"{label:<32} perplexity {quant_ppl[label]:7.2f}  (vs the float model: "
          f"{quant_quality[label].vs(quality['recovered'])})")
weight_only_cost = quant_quality[weight_only].vs(quality["recovered"])
run.claim("weight-only int8 (activations stay float) costs less than 2% perplexity",
          weight_only_cost.high < 1.02, str(weight_only_cost))

# %% [markdown]
# And with every projection int8, the outlier channels set every scale:

# %% tags=["replay-rtol-0.1"]
naive_vs_kept = quant_quality[naive].vs(quant_quality[kept])  # paired, same tokens
print(f"{naive:<32} perplexity {quant_ppl[naive]:7.2f}  ({quant_ppl[naive] / ppl['recovered']:.1f} times the "
      f"float model's {ppl['recovered']:.2f})")
run.claim("int8 activations in every projection cost more perplexity than keeping the outlier projections in float",
          naive_vs_kept.verdict == "higher", f"ratio above {naive_vs_kept.low:.1f}", needs_real_model=True)

# %% [markdown]
# Quality says weight-only; now speed. Dynamic int8 runs int8 matrix products;
# weight-only int8 must turn the weights back into floats at every call. Which is
# faster than float32 on this CPU?

# %% tags=["nbval-ignore-output"]
quant_time = run.latency({"float32": recovered, **variants}, runs=RUNS)
for label in variants:
    print(f"{label:<32} prefill {timing.speedup(quant_time['float32'], quant_time[label])}")
on_this_cpu = {label: round(run.quality(variants[label]).perplexity, 2) for label in (naive, kept)}
print("the int8 kernels' own perplexity on this CPU (the simulation's figure plus this CPU's rounding): "
      + ", ".join(f"{label} {value:.2f} (simulated {quant_ppl[label]:.2f})" for label, value in on_this_cpu.items()))

# %%
stages["int8 (PyTorch)"] = variants[kept]
seconds["int8 (PyTorch)"], notes["int8 (PyTorch)"] = 0.0, f"dynamic int8, {KEEP_FLOAT} projections float"
files["int8 (PyTorch)"] = store.save_torch(variants[kept], WORK / "int8.pt")
ppl["int8 (PyTorch)"], quality["int8 (PyTorch)"] = quant_ppl[kept], quant_quality[kept]
del variants[naive], variants[weight_only]
print(f"the PyTorch int8 stage: {len(quantize.quantized_names(stages['int8 (PyTorch)']))} projections int8, "
      f"{KEEP_FLOAT} float; saved with torch.save ({metrics.file_bytes(files['int8 (PyTorch)']) / 1e6:.1f} MB)")

# %% [markdown]
# ## Stage 4 — a runtime, and int8 arithmetic for prefill
# Decoding reads every weight once per token: fewer bytes make it faster. Prefill does
# the arithmetic of 128 tokens at once: only *integer* arithmetic makes it faster, and
# that needs int8 activations, which stage 3 just showed this model cannot take with one
# scale per tensor: a few outlier channels set the scale. Keeping them in float (stage 3)
# spends speed; there is a better way.
#
# **SmoothQuant: move the outliers into the weights.** For any positive vector $s$ over
# the input channels of a projection,
# $$X W^\top = \big(X \operatorname{diag}(s)^{-1}\big)\big(W \operatorname{diag}(s)\big)^\top$$
# exactly. Divide activation channel $j$ by $s_j$ and multiply weight column $j$ by $s_j$:
# the product is unchanged, but the range moves. With
# $s_j = \max|X_j|^{\alpha} / \max|W_j|^{1-\alpha}$ the outliers are shared between the
# two operands; the weights are rounded one scale per output row, so they absorb the
# larger columns cheaply. Nothing runs at inference time: $\operatorname{diag}(s)^{-1}$ is
# folded into whatever produces $X$ — the RMSNorm gain before q/k/v and gate/up, the rows
# of `up_proj` before `down_proj`, the rows of `v_proj` before `o_proj` (one $s$ per KV
# group), the final norm before the `lm_head` (`runtime/smooth.py` derives each fold).
#
# **Predict:** after smoothing, does the float model compute anything different? And how
# much smaller does the largest outlier ratio get?

# %%
peaks = smooth.channel_peaks(recovered, run.windows.calib)  # max|x_j| per input channel, calibration text
smoothed = smooth.smoothed_copy(recovered, peaks, smooth.ALPHA)
smoothed_ratios = quantize.activation_outlier_ratio(smoothed, run.windows.calib)
for name in sensitive[:4]:
    print(f"{name:<34} max|x| / mean|x|: {ratios[name]:7.1f} -> {smoothed_ratios[name]:6.1f} after smoothing")
worst, worst_after = max(ratios.values()), max(smoothed_ratios.values())
run.claim("smoothing divides the largest outlier ratio of any projection at least by 4",
          worst_after < worst / 4, f"{worst:.1f} -> {worst_after:.1f} (alpha {smooth.ALPHA:g})",
          needs_real_model=True)
gap = export.max_logit_gap(recovered, smoothed, probe)
run.claim("and the float model is the same function: its logits move by float32 rounding only",
          gap < export.LOGIT_TOLERANCE, f"max gap {gap:.0e} of the largest logit, tolerance {export.LOGIT_TOLERANCE:.0e}")

# %% [markdown]
# The smoothed model is exported with its KV cache as plain tensors, so one ONNX file
# runs both the prefill and the decoding steps. ONNX Runtime's quantizer then stores every
# projection's weights in int8 with one scale per output row, and rounds the activations
# to int8 at each call (one scale per tensor: the smoothed range); the embedding goes to 4
# bits. The int8 arithmetic differs between CPU kinds (AVX2, AVX-512 VNNI): the
# perplexities of this cell are compared within 2% on replay.

# %% tags=["replay-rtol-0.02"]
started = time.perf_counter()
fp32_file = export.export_onnx(smoothed, WORK / "smoothed.onnx")
seconds["ONNX Runtime"] = time.perf_counter() - started
started = time.perf_counter()
int8_file = export.quantize_onnx(fp32_file, WORK / "shipped-int8.onnx", "int8", 8)
seconds["shipped"] = time.perf_counter() - started
stages["ONNX Runtime"], stages["shipped"] = export.OrtModel(fp32_file), export.OrtModel(int8_file)
files["ONNX Runtime"], files["shipped"] = fp32_file, int8_file
notes["ONNX Runtime"], notes["shipped"] = "float32 ONNX (smoothed)", pipeline.shipped_note("int8", 8)
gap = export.max_logit_gap(recovered, stages["ONNX Runtime"], run.windows.eval[:1])
run.claim("ONNX Runtime computes the same logits as PyTorch", gap < export.LOGIT_TOLERANCE,
          f"max gap {gap:.0e} of the largest logit, tolerance {export.LOGIT_TOLERANCE:.0e}")
ops = stages["shipped"].op_types()
print("shipped graph: " + ", ".join(f"{ops[op]} {op}" for op in sorted(ops) if "Integer" in op or "Quant" in op))
for label in ("ONNX Runtime", "shipped"):
    quality[label] = run.quality(stages[label])
    ppl[label] = round(quality[label].perplexity, 2)
print(f"perplexity: PyTorch {ppl['recovered']:.2f}, ONNX float32 {ppl['ONNX Runtime']:.2f}, "
      f"ONNX int8 {ppl['shipped']:.2f}")
int8_cost = quality["shipped"].vs(quality["ONNX Runtime"])  # paired: the same graph, int8 vs float
print(f"int8 (smoothed) vs float32 ONNX, paired: {int8_cost}")

# %% [markdown]
# Against int8 with one scale per tensor and no smoothing (stage 3; its figure moves 10%
# between CPU kinds):

# %% tags=["replay-rtol-0.1"]
run.claim("smoothed int8 costs less than a quarter of what int8 with one scale per tensor costs",
          int8_cost.high - 1 < 0.25 * (naive_vs_kept.low - 1),
          f"perplexity ratio at most {int8_cost.high:.2f} vs at least {naive_vs_kept.low:.1f}",
          needs_real_model=True)

# %% [markdown]
# ## Disk: bytes of real files
# Zeros shrink a file only in the right format. Lesson 5's unstructured 50% keeps
# every tensor's shape; here it is saved three ways (magnitude pruning: the size
# depends on how many zeros, not on which).

# %%
half = copy.deepcopy(dense)
masks.magnitude_prune(half, 0.5)
disk = {"dense safetensors": files["dense"],
        "50% sparse, plain": store.save_safetensors(half, WORK / "sparse50.safetensors")}
disk["50% sparse, zstd"] = store.compress_file(disk["50% sparse, plain"], "zstd")
disk["50% sparse, bitmask"] = store.save_bitmask(half, WORK / "sparse50-bitmask.safetensors")
for label in ("pruned", "int8 (PyTorch)", "ONNX Runtime", "shipped"):
    disk[label] = files[label]
sizes = {label: metrics.file_bytes(path) for label, path in disk.items()}
for label, size in sizes.items():
    print(f"{label:<22} {size / 1e6:7.1f} MB  ({sizes['dense safetensors'] / size:.2f}x smaller than dense)")
run.claim("zeros alone do not shrink a file: the plain 50% sparse file is as large as the dense one",
          abs(sizes["50% sparse, plain"] / sizes["dense safetensors"] - 1) < 0.01,
          f"{sizes['50% sparse, plain'] / 1e6:.1f} vs {sizes['dense safetensors'] / 1e6:.1f} MB")
run.claim("a compressor or a sparse format is what shrinks it: zstd and the bitmask both write fewer bytes",
          max(sizes["50% sparse, zstd"], sizes["50% sparse, bitmask"]) < sizes["50% sparse, plain"],
          f"zstd {sizes['50% sparse, zstd'] / 1e6:.1f} MB, bitmask {sizes['50% sparse, bitmask'] / 1e6:.1f} MB, "
          f"plain {sizes['50% sparse, plain'] / 1e6:.1f} MB")
embedding = dense.get_input_embeddings().weight
weights_file = metrics.file_bytes(next(Path(files["pruned"]).glob("*.safetensors")))
untied = sizes["ONNX Runtime"] - weights_file
print(f"the float32 ONNX file is {untied / 1e6:.1f} MB larger than the weights of the pruned checkpoint "
      "it was exported from")
if getattr(dense.config, "tie_word_embeddings", False):
    run.claim("that is the lm_head written a second time: the checkpoint ties it to the embedding, "
              "the ONNX file stores it as a matrix of its own", abs(untied - embedding.numel() * 4) < 0.03 * untied,
              f"{untied / 1e6:.1f} MB vs the {tuple(embedding.shape)} float32 embedding's "
              f"{embedding.numel() * 4 / 1e6:.1f} MB", needs_real_model=True)
smallest = min(files, key=lambda label: metrics.file_bytes(files[label]))
print(f"you guessed {my_guess_smallest!r}; the smallest stage file is {smallest!r}")

# %% [markdown]
# ## Does this runtime skip zeros?
# The scripts this course follows say a sparse-aware runtime turns SparseGPT's 50%
# zeros into speed. ONNX Runtime on this CPU is the runtime at hand: export the 50%
# sparse model above and its dense original, and time them side by side. (Magnitude
# zeros stand in for SparseGPT's: the kernels see how many zeros there are, not which.)
# Beside it, the course's own sparse kernels (CSR and BSR, lesson 5) on one MLP matrix.
# A kernel that skipped the zeros would do half the multiplications: up to 2x.

# %% tags=["nbval-ignore-output"]
files["dense ONNX"] = export.export_onnx(dense, WORK / "dense.onnx")
zeros = {"dense PyTorch": dense, "50% sparse PyTorch": half,
         "dense ONNX": export.OrtModel(files["dense ONNX"]),
         "50% sparse ONNX": export.OrtModel(export.export_onnx(half, WORK / "sparse50.onnx"))}
zero_prefill, zero_decode = pipeline.latencies(zeros, dense.config.vocab_size, runs=7 if not QUICK else 2,
                                               decode_runs=3 if not QUICK else 2)
zeros_speedup = {"prefill": timing.speedup(zero_prefill["dense ONNX"], zero_prefill["50% sparse ONNX"]),
                 "decode": timing.speedup(zero_decode["dense ONNX"], zero_decode["50% sparse ONNX"])}
torch_zeros = {"prefill": timing.speedup(zero_prefill["dense PyTorch"], zero_prefill["50% sparse PyTorch"]),
               "decode": timing.speedup(zero_decode["dense PyTorch"], zero_decode["50% sparse PyTorch"])}
for kind, ratio in zeros_speedup.items():
    print(f"50% sparse vs dense, both in ONNX Runtime, {kind}: {ratio}")
for kind, ratio in torch_zeros.items():
    print(f"50% sparse vs dense, both in PyTorch, {kind}: {ratio}")
stages["dense ONNX"], notes["dense ONNX"] = zeros["dense ONNX"], "the dense model in float32 ONNX Runtime"
geo = arch.geometry(dense)
mlp_matrix = arch.weight_matrix(dict(dense.named_modules())[geo.mlp_module(geo.middle_layer())])
curve = sparse.sparse_layer_ratios(mlp_matrix, [0.5, 0.7, 0.9, 0.95], tokens=128, runs=10 if not QUICK else 2)
for layout in sparse.LAYOUTS:
    even = curve.break_even(layout)
    print(f"course_lib {layout.upper()} kernel, {curve.what}: break-even at "
          + ("no measured sparsity" if even is None else f"{even:.0%} sparsity"))
del half, zeros

# %%
# a kernel that skipped the zeros would do half the multiplications: up to 2x. Where does this one stay?
run.claim("ONNX Runtime does not turn 50% zeros into speed: both paired IQRs stay below halfway to 2x",
          all(ratio.high < 1.5 for ratio in zeros_speedup.values()),
          ", ".join(f"{kind} up to {ratio.high:.2f}x" for kind, ratio in zeros_speedup.items()),
          needs_real_model=True)

# %% [markdown]
# ## Every stage, measured side by side
# Prefill: 128 tokens, every stage interleaved run by run. Decode: 16 tokens after
# a 32-token prompt, KV cache on, interleaved the same way. Ratios are to dense
# float32 PyTorch, with the interquartile range of the paired runs. The dense model in
# ONNX Runtime runs beside them (the runtime alone, without any pruning), and greedy
# generation of the dense and the shipped model is timed at batch 1 and 8 (tokens per second).

# %% tags=["nbval-ignore-output"]
rows = pipeline.measure(stages, files, run.windows.eval, seconds, notes, perplexities=ppl, runs=RUNS,
                         decode_runs=2 if QUICK else 3)
print(pipeline.table(rows))
by_stage = {r.stage: r for r in rows}
plots.stage_panels(rows)

# %% [markdown]
# Decoding one token reads every weight once for little arithmetic: the bytes
# read decide its speed. Prefill is arithmetic. Does the runtime alone (same float32
# weights) decode faster, and what do int8 weights and activations add to each?

# %%
for label in ("ONNX Runtime", "shipped"):
    run.claim(f"{label} decodes faster than dense float32 PyTorch", by_stage[label].decode_speedup.verdict == "faster",
              str(by_stage[label].decode_speedup), needs_real_model=True)
run.claim("int8 GEMMs make prefill faster than the same model in float32 ONNX Runtime: integer arithmetic, "
          "where prefill spends its time",
          by_stage["shipped"].prefill_speedup.low > by_stage["ONNX Runtime"].prefill_speedup.high,
          f"prefill, paired IQRs {by_stage['shipped'].prefill_speedup.low:.2f}x-{by_stage['shipped'].prefill_speedup.high:.2f}x "
          f"vs {by_stage['ONNX Runtime'].prefill_speedup.low:.2f}x-{by_stage['ONNX Runtime'].prefill_speedup.high:.2f}x",
          needs_real_model=True)
run.claim("int8 decodes faster than the same model in float32 ONNX Runtime: a quarter of the bytes to read",
          by_stage["shipped"].decode_speedup.low > by_stage["ONNX Runtime"].decode_speedup.high,
          f"paired IQRs {by_stage['shipped'].decode_speedup.low:.2f}x-{by_stage['shipped'].decode_speedup.high:.2f}x "
          f"vs {by_stage['ONNX Runtime'].decode_speedup.low:.2f}x-{by_stage['ONNX Runtime'].decode_speedup.high:.2f}x",
          needs_real_model=True)

# %% [markdown]
# ## The targets
# The shipped model (pruned, refitted, smoothed, int8 in ONNX Runtime) against
# dense float32 PyTorch: at least 2x faster in prefill, 3x in decoding, at least
# 3x smaller on disk, perplexity at most 1.25x dense.

# %% tags=["nbval-ignore-output"]
final, base = by_stage["shipped"], by_stage["dense"]
targets = {"prefill >= 2x faster": (final.prefill_speedup.median >= 2, str(final.prefill_speedup)),
           "decode >= 3x faster": (final.decode_speedup.median >= 3, str(final.decode_speedup)),
           "disk >= 3x smaller": (base.disk_bytes >= 3 * final.disk_bytes,
                                  f"{base.disk_bytes / final.disk_bytes:.2f}x smaller"),
           f"perplexity <= {BUDGET}x dense": (final.perplexity <= BUDGET * base.perplexity,
                                         f"{final.perplexity / base.perplexity:.2f}x")}
for name, (met, evidence) in targets.items():
    print(f"target {name:<26} {'met   ' if met else 'missed'}  [{evidence}]")
ideal = speed.ideal_speedup(metrics.flops_per_token(dense, context=128), metrics.flops_per_token(pruned, context=128))
print(f"the FLOPs of the {FRACTION:.2%} cut allow an ideal prefill speedup of {ideal:.2f}x; the rest of the "
      "prefill gain must come from the runtime's kernels (prefill does the arithmetic, decode reads the weights)")
print(f"you guessed the shipped model decodes {my_guess_decode_speedup}x faster; measured {final.decode_speedup}")

# %% [markdown]
# Each stage against the one before it, paired on the same tokens. The shipped model's
# int8 arithmetic rounds differently on each CPU kind, so this cell's numbers are compared
# within 2% on replay, as stage 4's.

# %% tags=["replay-rtol-0.02"]
steps = {"pruned": "dense", "recovered": "pruned", "ONNX Runtime": "recovered", "shipped": "ONNX Runtime",
         "int8 (PyTorch)": "recovered"}  # the last is a branch: the shipped model does not take it
costs = {stage: quality[stage].vs(quality[before]) for stage, before in steps.items()}  # paired, step by step
path = [stage for stage in steps if stage != "int8 (PyTorch)"]
for stage in path:
    print(f"{stage:>15} vs {steps[stage]:<10} {costs[stage]}")
run.claim("on the path to the shipped model, two stages decidedly cost perplexity, pruning and int8; the "
          "refit costs nothing decidable and the runtime moves it by less than 0.1%",
          costs["pruned"].low > 1 and costs["shipped"].low > 1 and costs["recovered"].verdict != "higher"
          and abs(costs["ONNX Runtime"].ratio - 1) < 0.001,
          f"pruned {costs['pruned'].interval()}, int8 {costs['shipped'].interval()}, refit "
          f"{costs['recovered'].interval()}, runtime ratio {costs['ONNX Runtime'].ratio:.4f}", needs_real_model=True)
apart = costs["pruned"].high < costs["shipped"].low or costs["shipped"].high < costs["pruned"].low
print("which of the two costs more: " + ("decided by the intervals" if apart else
      "not distinguishable at this size (their intervals overlap)"))
run.claim("the shipped file is at least 3x smaller than the dense safetensors",
          metrics.file_bytes(files["dense"]) >= 3 * metrics.file_bytes(files["shipped"]),
          f"{metrics.file_bytes(files['dense']) / 1e6:.0f} MB -> {metrics.file_bytes(files['shipped']) / 1e6:.0f} MB",
          needs_real_model=True)
shipped_vs_dense = quality["shipped"].vs(quality["dense"])
run.claim(f"the shipped model is decidedly worse than dense, and its measured ratio is within the {BUDGET} budget",
          shipped_vs_dense.low > 1 and shipped_vs_dense.ratio <= BUDGET, str(shipped_vs_dense), needs_real_model=True)
print(f"the budget decided by the interval too: {'yes' if shipped_vs_dense.high <= BUDGET else 'no'} "
      f"(its upper end: {shipped_vs_dense.high:.3f})")

# %% [markdown]
# The PyTorch int8 branch, beside the path (its figures move 7% between CPU kinds, as above):

# %% tags=["replay-rtol-0.1"]
print(f"{'int8 (PyTorch)':>15} vs {steps['int8 (PyTorch)']:<10} {costs['int8 (PyTorch)']}")
print(f"the PyTorch int8 branch (one scale per tensor, outliers in float), which the shipped model does not "
      f"take, beside pruning: int8 {costs['int8 (PyTorch)'].interval()}, pruned {costs['pruned'].interval()}")

# %% [markdown]
# ## Serving: greedy generation, the same prompt
# Dense float32 PyTorch against the shipped model decoding in ONNX Runtime with its own
# cache: the first words, so you read the quality too, and each generation timed (one
# run each: the paired throughput at batch 1 and 8 is in the stage table above).

# %% tags=["nbval-ignore-output"]
prompt = run.tokenizer(serve.PROMPT, return_tensors="pt").input_ids
print(f"prompt: {serve.PROMPT}")
for label, stage in (("dense PyTorch", dense), ("shipped ONNX", stages["shipped"])):
    started = time.perf_counter()
    new = serve.greedy(stage, prompt, NEW_TOKENS)
    rate = new.numel() / (time.perf_counter() - started)
    words = " ".join(run.tokenizer.decode(new[0]).split()[:16])
    print(f"{label:<14} {rate:5.1f} tokens per second: {words} ...")

# %% [markdown]
# ## 2:4 sparsity on a GPU
# Lesson 5's zeros pay off only in a kernel that skips them. NVIDIA's sparse
# Tensor Cores do, for the 2:4 pattern (two zeros in every four weights); torch
# reaches them through `to_sparse_semi_structured`, on CUDA only.

# %%
reason = sparse.semi_structured_support()
if reason is None:
    print(sparse.semi_structured_layer_ratio())
else:
    print(f"2:4 kernels are not timed here: {reason}")
    print("On a GPU of compute capability 8.0 or newer this cell times a 2:4 MLP matrix against dense.")

# %% [markdown]
# ## What accelerates what, in 2026
# Each kind of pruning in each runtime, as a speedup over the *dense model in the same
# runtime* (paired, prefill / decode, measured in this lesson), or, where it cannot run
# on this machine, what the runtime's own project says.
# <!-- quoted: the projects' repositories and issue threads, as of 2026 -->
# In 2026 vLLM removed its 2:4 ("Sparse24") support (vllm #36799) after disabling its
# sparse-only 2:4 kernels (#12417); llm-compressor dropped sparse compression and
# compressed-tensors 0.20 ships no sparse compressor (#610); torchao deleted its sparsity
# API (#4728). PyTorch's own 2:4 tutorial measured its speedups on an A100 and warns they
# may not appear elsewhere; on an RTX 4090, 2:4 decoding ran 12% slower than dense
# (pytorch/tutorials #3505), and at small shapes 0.11x (pytorch #111339). What ships is
# structured pruning, which every runtime loads as an ordinary smaller model, plus
# quantization.

# %% tags=["nbval-ignore-output"]
def paired(prefill, decode):
    return f"{prefill.median:.2f}x / {decode.median:.2f}x"


def versus(stage, baseline):  # two stages of the one interleaved stage measurement
    return paired(by_stage[stage].speedup_over(by_stage[baseline], "prefill"),
                  by_stage[stage].speedup_over(by_stage[baseline], "decode"))


at_half = {layout: curve.speedups[layout][curve.sparsities.index(0.5)] for layout in sparse.LAYOUTS}
no_24 = "CUDA only (to_sparse_semi_structured)" if reason else "measured in the 2:4 cell"
runtime_table = [
    ("pruning", "PyTorch eager (CPU)", "ONNX Runtime float32", "ONNX Runtime int8", "course CSR/BSR",
     "GPU serving in 2026"),
    ("50% zeros", paired(torch_zeros["prefill"], torch_zeros["decode"]),
     paired(zeros_speedup["prefill"], zeros_speedup["decode"]), "not measured",
     " / ".join(f"{layout.upper()} {at_half[layout]:.2f}x" for layout in sparse.LAYOUTS) + " (one matrix)",
     "sparse checkpoints no longer load (vllm #36799)"),
    ("2:4", no_24, "no 2:4 kernel", "no 2:4 kernel", "-",
     "removed from vLLM (#36799); A100-only gains, slower on an RTX 4090 (pytorch/tutorials #3505)"),
    (f"structured ({FRACTION:.2%} MLP)", versus("recovered", "dense"), versus("ONNX Runtime", "dense ONNX"), "-",
     "-", "loads as an ordinary, smaller model"),
    ("structured + int8", versus("int8 (PyTorch)", "dense"), "-", versus("shipped", "dense ONNX"), "-",
     "what ships: structured pruning plus quantization"),
]
widths = [max(len(str(row[i])) for row in runtime_table) for i in range(len(runtime_table[0]))]
for row in runtime_table:
    print(" | ".join(f"{str(cell):<{w}}" for cell, w in zip(row, widths)))

# %% [markdown]
# Read the rows against the claims above: the zeros row is where ONNX Runtime's verdict
# came from (and lesson 5's for PyTorch), the course's sparse kernels at 50% are the
# break-even curve's first point, 2:4 has no kernel here and has lost its serving stacks,
# and the structured rows show what the cut bought in each runtime next to the FLOPs
# ideal printed with the targets.

# %% [markdown]
# ## Explore: how many projections can go int8?
# The slider makes a fraction of the recovered model's projections dynamic int8:
# the ones with the *smallest* outlier ratio first, or in layer order.

# %%
by_ratio = sorted(ratios, key=ratios.get)
in_order = list(ratios)


def quantize_some(model, order, fraction):
    names = (by_ratio if order == "fewest outliers first" else in_order)[: round(fraction * len(ratios))]
    return quantize.quantize_in_place(model, names)


explorer = Explorer(recovered, run.windows.eval[:2], quantize_some,
                    methods=("fewest outliers first", "layer order"), amount_label="fraction int8",
                    amount_max=1.0, step=0.25, value=0.0, title="int8, projection by projection")
start = explorer.cache[("dense", 0.0)]  # the explorer's starting point: no projection int8
print(f"the recovered model in float32: perplexity {start.perplexity:.2f} on 2 of the evaluation windows; "
      "every other point is measured when the slider first reaches it")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
# Write `int8_rows(w)`: symmetric int8 with one scale per output row. Return
# `(q, scale)` with `q` an `int8` tensor and `w ≈ q * scale[:, None]`.

# %% tags=["solution"]
def int8_rows(w):
    """(q, scale): int8 codes and one float scale per row."""
    ### BEGIN SOLUTION
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale
    ### END SOLUTION


# %%
checks.check_int8_rows(int8_rows)

# %% [markdown]
# ## Takeaways
# Each follows from a claim or a printout above.
# - **Size** comes from the format: the structured cut shrinks the file only by the
#   weights it removes; int8 weights and a 4-bit embedding shrink it most.
#   Unstructured zeros shrink a file only compressed or in a bitmask.
# - **Quality** is lost in two stages, pruning and int8 (which of them costs more, the
#   printout says); the refit's gain after this MLP cut was too small to decide; int8 *activations* with one scale per tensor
#   break this model; even with the outlier projections in float the PyTorch int8
#   branch costs a perplexity ratio in pruning's range or above (both intervals are
#   printed side by side), while int8 after SmoothQuant's migration (the same float
#   function, outliers moved into the weights) costs a fraction of that (the paired
#   ratios are printed in stage 4).
# - **Speed**: decoding is bound by the bytes it reads, so the runtime and int8
#   weights speed it up together; prefill is bound by arithmetic, which a small
#   structured cut barely reduces and int8 GEMMs do: the smoothing is what lets the
#   activations go int8. The gains multiply only where stages touch different costs:
#   read the prefill and decode columns for what each bought here.
# - The float32 ONNX file is larger than the checkpoint it came from: the exporter
#   unties the lm_head from the embedding and writes it twice.

# %% tags=["nbval-ignore-output"]
shutil.rmtree(WORK, ignore_errors=True)  # this run's files: nothing left behind
summary.record("06", MODEL, ppl["dense"], ppl["shipped"], 1 / by_stage["shipped"].prefill_speedup.median,
               f"{FRACTION:.2%} MLP + refit + SmoothQuant int8 in ONNX Runtime (shipped)")
