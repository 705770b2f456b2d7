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
# # Lesson 6 — From pruned to shipped: quantize, export, store, serve
#
# Pruning is one stage of a pipeline: **prune → recover → quantize → run in a
# runtime → serve**. This lesson takes SmolLM2 through every stage and measures
# each the same way, against the dense float32 PyTorch model in the same run:
# perplexity, prefill latency, decoding speed, and the bytes of the file you
# would ship. You will see which stage buys speed, which buys size, which costs
# quality, and whether the gains multiply.

# %% tags=["parameters"]
MODEL = "smollm2-135m"
N_EVAL = 4  # evaluation windows of 128 tokens
N_CALIB = 4  # calibration windows (neuron scores, the refit, activation outliers)
FRACTION = 0.25  # MLP neurons removed per layer (lesson 4's recipe)
KEEP_FLOAT = 8  # projections with the largest activation outliers kept in float32
NEW_TOKENS = 128  # generated when serving

# %%
import copy
import tempfile
from pathlib import Path

import torch

from course_lib.core import metrics, timing
from course_lib.pruning import masks, mlp, recipes
from course_lib.runtime import export, quantize, serve, sparse, store
from course_lib.teaching import checks, lesson, pipeline, plots, summary
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device="cpu", n_eval=N_EVAL, n_calib=N_CALIB)
dense = run.model
WORK = Path(tempfile.gettempdir()) / "course-lesson06"  # stage files; ONNX exports are reused from here
WORK.mkdir(exist_ok=True)
stages, files, seconds, notes = {"dense": dense}, {}, {}, {}
files["dense"] = store.save_safetensors(dense, WORK / "dense.safetensors")
dense_ppl = run.perplexity()
print(f"dense: perplexity {dense_ppl:.2f}, {metrics.file_bytes(files['dense']) / 1e6:.1f} MB on disk (safetensors, float32)")

# %% [markdown]
# **Predict before you run.** Write down: (1) which stage will make the file
# smallest, (2) which will make decoding fastest, (3) whether int8 costs this
# small model more than 10% perplexity.
#
# ## Stage 1 — structured prune
# Lesson 4's recipe: remove the quarter of MLP neurons that fire least on calibration text.

# %%
started = timing.time.perf_counter()
scores = mlp.neuron_importance_activation(dense, run.windows.calib)
pruned = copy.deepcopy(dense)
mlp.remove_neurons(pruned, recipes.neurons_request(pruned, FRACTION, scores=scores))
seconds["pruned"] = timing.time.perf_counter() - started
stages["pruned"], notes["pruned"] = pruned, f"{FRACTION:.0%} of MLP neurons removed"
files["pruned"] = store.save_safetensors(pruned, WORK / "pruned.safetensors")
pruned_ppl = run.perplexity(pruned)
print(f"pruned: perplexity {pruned_ppl:.2f}, {metrics.file_bytes(files['pruned']) / 1e6:.1f} MB")

# %% [markdown]
# ## Stage 2 — recover
# The course's recovery stage (refit and distillation) goes here. This lesson
# uses a closed-form stand-in: each layer's `down_proj` is refitted by least
# squares so the kept neurons reproduce the dense MLP output on calibration text
# (`pipeline.refit_down`; the derivation is in its module docstring).

# %%
started = timing.time.perf_counter()
recovered = copy.deepcopy(pruned)
refitted = pipeline.refit_down(dense, recovered, run.windows.calib)
seconds["recovered"] = timing.time.perf_counter() - started
stages["recovered"], notes["recovered"] = recovered, "down_proj refitted (least squares)"
files["recovered"] = store.save_safetensors(recovered, WORK / "recovered.safetensors")
recovered_ppl = run.perplexity(recovered)
print(f"{refitted} layers refitted in {seconds['recovered']:.1f} s; perplexity {pruned_ppl:.2f} -> {recovered_ppl:.2f}")
run.claim("the refit recovers part of what pruning lost", recovered_ppl < pruned_ppl,
          f"dense {dense_ppl:.2f}, pruned {pruned_ppl:.2f}, refitted {recovered_ppl:.2f}", needs_real_model=True)

# %% [markdown]
# ## Stage 3 — int8 in PyTorch: why the naive way breaks this model
# `quantize_dynamic` rounds weights *and activations* to int8 with one scale per
# tensor. A few activation channels of an LLM are 100x larger than the rest; one
# scale set by them leaves the ordinary channels a handful of steps. The ratio
# max|x| / mean|x| at each projection's input says where.

# %%
ratios = quantize.activation_outlier_ratio(recovered, run.windows.calib)
sensitive = quantize.most_sensitive(ratios, KEEP_FLOAT)
for name in sensitive[:4]:
    print(f"{name:<36} max|x| / mean|x| = {ratios[name]:7.1f}")
plots.bars({n.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", ""): ratios[n]
            for n in sensitive}, ylabel="max|x| / mean|x|", reference=127,
           title="projections whose inputs have outliers (127 = one int8 step for a typical value)")

# %%
variants = {
    "naive: every projection int8": quantize.quantized_copy(recovered, "dynamic"),
    f"{KEEP_FLOAT} outlier projections kept float": quantize.quantized_copy(recovered, "dynamic", keep_float=sensitive),
    "torchao int8 weight-only": quantize.quantized_copy(recovered, "torchao-int8-weight"),
}
quant_ppl = {label: run.perplexity(m) for label, m in variants.items()}
for label, value in quant_ppl.items():
    print(f"{label:<40} perplexity {value:7.2f}  ({value / recovered_ppl:.2f}x the float model)")
naive_label, kept_label, ao_label = list(variants)
run.claim("per-tensor dynamic int8 of every projection costs more perplexity than keeping the outliers in float",
          quant_ppl[naive_label] > quant_ppl[kept_label],
          f"{quant_ppl[naive_label]:.2f} vs {quant_ppl[kept_label]:.2f}", needs_real_model=True)

# %% tags=["nbval-ignore-output"]
quant_time = run.latency({"float32": recovered, **variants}, runs=3)
for label in variants:
    print(f"{label:<40} prefill {timing.speedup(quant_time['float32'], quant_time[label])}")

# %%
stages["int8 (PyTorch)"] = variants[kept_label]
notes["int8 (PyTorch)"] = f"dynamic int8, {KEEP_FLOAT} projections float"
files["int8 (PyTorch)"] = store.save_torch(variants[kept_label], WORK / "int8.pt")
ao_verdict = timing.speedup(quant_time["float32"], quant_time[ao_label]).verdict
print(f"torchao weight-only int8 on this CPU: prefill {ao_verdict} than float32 "
      "(no fused int8 CPU kernel: it dequantizes in eager PyTorch)")

# %% [markdown]
# ## Stage 4 — a runtime: ONNX Runtime, then its own int8
# The recovered model is exported with its KV cache as plain tensors, so one
# ONNX file runs both the prefill and the decoding steps. ONNX Runtime's
# `MatMulNBits` quantizes the weights only (8-bit, one scale per 32 weights) and
# the embedding to 4 bits; activations stay float, so outliers do not matter.

# %%
fp32_file, int8_file, seconds["ONNX Runtime"] = pipeline.cached_export(recovered, WORK / "onnx", bits=8)
stages["ONNX Runtime"] = export.OrtModel(fp32_file)
stages["shipped"] = export.OrtModel(int8_file)
files["ONNX Runtime"], files["shipped"] = fp32_file, int8_file
notes["ONNX Runtime"], notes["shipped"] = "float32 ONNX", "ORT 8-bit weights, 4-bit embedding"
gap = export.max_logit_gap(recovered, stages["ONNX Runtime"], run.windows.eval[:1])
run.claim("ONNX Runtime computes the same logits as PyTorch", gap < export.LOGIT_TOLERANCE,
          f"max gap {gap:.1e} of the largest logit, tolerance {export.LOGIT_TOLERANCE:.0e}")
ops = stages["shipped"].op_types()
print(f"shipped graph: {ops.get('MatMulNBits', 0)} MatMulNBits, {ops.get('GatherBlockQuantized', 0)} GatherBlockQuantized")

# %% [markdown]
# ## Disk: bytes of real files
# Zeros shrink a file only in the right format. The 50% unstructured model here
# is magnitude-pruned (the file size depends on how many zeros, not on which).

# %%
half = copy.deepcopy(dense)
masks.magnitude_prune(half, 0.5)
disk = {"dense safetensors": files["dense"],
        "50% sparse, plain": store.save_safetensors(half, WORK / "sparse50.safetensors")}
disk["50% sparse, zstd"] = store.compress_file(disk["50% sparse, plain"], "zstd")
disk["50% sparse, bitmask"] = store.save_bitmask(half, WORK / "sparse50-bitmask.safetensors")
disk["structured (-25% MLP)"] = files["pruned"]
disk["structured + int8 (torch.save)"] = files["int8 (PyTorch)"]
disk["structured + ORT 8-bit"] = files["shipped"]
del half
sizes = {label: metrics.file_bytes(path) for label, path in disk.items()}
for label, size in sizes.items():
    print(f"{label:<32} {size / 1e6:8.1f} MB  ({sizes['dense safetensors'] / size:.2f}x smaller)")

# %% [markdown]
# ## Every stage, measured side by side
# Prefill: 128 tokens, interleaved run by run over all stages. Decode: 16 tokens
# after a 32-token prompt, KV cache on, interleaved the same way.

# %% tags=["nbval-ignore-output"]
shipped = pipeline.measure(stages, files, run.windows, seconds, notes, runs=5, decode_runs=3)
print(pipeline.table(shipped.rows))

# %% tags=["nbval-ignore-output"]
rows = {r.stage: r for r in shipped.rows}
plots.stage_panels(shipped.rows)

# %% [markdown]
# ## The targets
# Shipped (pruned + recovered + 8-bit, in ONNX Runtime) against dense float32 PyTorch.

# %% tags=["nbval-ignore-output"]
final, base = rows["shipped"], rows["dense"]
ppl_ratio = final.perplexity / base.perplexity
targets = {"prefill >= 2x faster": (final.prefill_speedup.median >= 2, str(final.prefill_speedup)),
           "decode >= 2x faster": (final.decode_speedup.median >= 2, str(final.decode_speedup)),
           "disk >= 3x smaller": (base.disk_bytes >= 3 * final.disk_bytes,
                                  f"{base.disk_bytes / final.disk_bytes:.2f}x smaller"),
           "perplexity <= 1.25x dense": (ppl_ratio <= 1.25, f"{ppl_ratio:.2f}x")}
for name, (met, evidence) in targets.items():
    print(f"target {name:<26} {'met   ' if met else 'missed'}  [{evidence}]")
worst = max(("pruned", "recovered", "ONNX Runtime", "shipped"),
            key=lambda k: rows[k].perplexity / rows[{"pruned": "dense", "recovered": "pruned",
                                                      "ONNX Runtime": "recovered", "shipped": "ONNX Runtime"}[k]].perplexity)
print(f"the stage that costs the most perplexity: {worst}")

# %%
run.claim("the shipped file is at least 3x smaller than the dense safetensors",
          base.disk_bytes >= 3 * final.disk_bytes, f"{base.disk_bytes / 1e6:.0f} MB -> {final.disk_bytes / 1e6:.0f} MB")

# %% [markdown]
# ## Serving: `generate()`, greedy, the same prompt
# Dense float32 PyTorch against the shipped model decoding in ONNX Runtime: tokens/s
# and the first words, so you read the quality too.

# %% tags=["nbval-ignore-output"]
served_dense = serve.generate_text(dense, run.tokenizer, new_tokens=NEW_TOKENS)
ids = run.tokenizer(serve.PROMPT, return_tensors="pt").input_ids
started = timing.time.perf_counter()
ort_tokens = stages["shipped"].generate(ids, NEW_TOKENS)
served_ort = serve.Served(run.tokenizer.decode(ort_tokens), len(ort_tokens), timing.time.perf_counter() - started)
for label, served in (("dense PyTorch", served_dense), ("shipped ORT", served_ort)):
    print(f"{label:<14} {served.tokens_per_s:6.1f} tokens/s: {served.first_words(14)} ...")

# %% [markdown]
# ## 2:4 sparsity on a GPU

# %%
reason = sparse.semi_structured_support()
if reason is None:
    gpu = copy.deepcopy(dense).half().cuda()
    masks.magnitude_prune(gpu, 0.5, pattern=(2, 4))
    result = sparse.semi_structured_model_speedup(gpu, tokens=128)
    print(f"2:4 kernels on {torch.cuda.get_device_name()}: prefill {result.prefill_speedup:.2f}x vs dense "
          f"storage (ideal {result.ideal_speedup:.2f}x)")
else:
    print("2:4 needs an NVIDIA GPU with compute capability >= 8.0 (torch's semi-structured kernels are "
          "CUDA only); not timed here.")
    print("Lesson 5 measured the quality of a 2:4 mask on this model: perplexity 66.89 with SparseGPT, "
          "91.94 with Wanda, 891.46 with magnitude (its eval windows).")

# %% [markdown]
# ## Explore: how many projections can go int8?
# The slider quantizes a fraction of the recovered model's projections (dynamic
# int8), the ones with the *smallest* outlier ratio first, or in layer order.

# %%
by_ratio = sorted(ratios, key=ratios.get)
in_order = list(ratios)


def quantize_some(model, order, fraction):
    names = (by_ratio if order == "fewest outliers first" else in_order)[: round(fraction * len(ratios))]
    return quantize.quantize_in_place(model, names)


explorer = Explorer(recovered, run.windows.eval[:2], quantize_some,
                    methods=("fewest outliers first", "layer order"), amount_label="fraction int8",
                    amount_max=1.0, step=0.25, title="int8, projection by projection")
explorer.point("fewest outliers first", 0.75)
print(f"{len(explorer.cache)} points measured")

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
    scale = w.abs().amax(dim=1) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale
    ### END SOLUTION


# %%
checks.check_int8_rows(int8_rows)

# %% [markdown]
# ## Takeaways
# - **Size** comes from the format: structured removal shrinks the file a little,
#   8-bit weights (and a 4-bit embedding) shrink it most; unstructured zeros need
#   compression or a bitmask to shrink at all.
# - **Speed** comes from the runtime: ONNX Runtime's fused graph and int8 weight
#   kernels, plus the narrower MLP; int8 paths without a fused CPU kernel (torchao
#   here) are slower than float32.
# - **Quality** is lost in pruning and in *activation* quantization; weight-only
#   int8 with small blocks costs almost nothing.
# - The gains multiply where the stages touch different costs (fewer FLOPs x
#   fewer bytes x a better runtime); read the table for where they do.

# %% tags=["nbval-ignore-output"]
summary.record("06", MODEL, rows["dense"].perplexity, final.perplexity, 1 / final.prefill_speedup.median,
               "pruned 25% MLP + refit + ORT 8-bit (shipped)")
