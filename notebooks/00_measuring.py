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
# # Lesson 0 — How the course measures
#
# *A short lesson on SmolLM2-135M before the pruning starts.*
#
# Every later lesson prints lines like `✓ the pruned model is worse [24.05 vs 27.46: ratio
# 1.142 (95% interval 1.101-1.189)]`: a **claim**, with the numbers that decide it. This
# lesson shows what makes a number decide anything, with four habits the course uses
# everywhere: compare two models **paired**, on the same tokens; give the comparison an
# **interval**; let methods that learn from data face several **calibration draws**; and
# know the **noise** of a timing before believing a speedup.
#
# You will measure: how much perplexity varies from window to window of one text; the same
# comparison unpaired and paired; a comparison too small to decide, and how much more text
# would decide it; how far a pruned model moves when only its calibration sample changes;
# and two identical models timed against each other.
#
# <!-- quoted: the replay tolerance this notebook's metadata sets (course.replay_rtol) -->
# *Replaying a lesson elsewhere.* `make test` replays every lesson and compares its printed
# numbers with the stored ones. Another CPU kind or thread count rounds the last digits
# differently, so a number agrees when it is within 0.2% of the stored one (or one unit of
# its last printed digit); words, marks and whole numbers must be equal, and timings are
# not compared (`course_lib/teaching/replay.py`).

# %% tags=["parameters"]
MODEL = "smollm2-135m"  # any causal LM the course loads; "tiny-llama" checks the code path in seconds
DEVICE = None  # None: CUDA if present, else CPU
N_EVAL = 8  # evaluation windows of 128 tokens
N_CALIB = 8  # calibration windows of 128 tokens
QUICK = False  # True: fewer timing runs (to check that the lesson runs, not to read its timings)

# %%
from course_lib.core import stats, timing
from course_lib.pruning import masks, wanda
from course_lib.teaching import checks, lesson, plots
from course_lib.teaching.widgets import Explorer

run = lesson.start(MODEL, device=DEVICE, n_eval=N_EVAL, n_calib=N_CALIB)

# %% [markdown]
# ## 1. One number hides a spread
#
# Perplexity is exp of the mean negative log-likelihood (NLL) of every predicted token.
# `run.quality()` keeps the NLL of each token, so we can also ask each evaluation window
# alone.

# %%
dense = run.quality()  # the NLL of every predicted token of every window
per_window = dense.window_perplexities()
print(f"dense perplexity, all {N_EVAL} windows: {dense.perplexity:.2f}")
print("window by window: " + ", ".join(f"{p:.1f}" for p in per_window))
run.claim("windows of one text differ widely: the hardest is over twice as hard as the easiest",
          max(per_window) > 2 * min(per_window), f"{min(per_window):.1f} to {max(per_window):.1f}",
          needs_real_model=True)
plots.bars({f"window {i}": p for i, p in enumerate(per_window)}, ylabel="perplexity",
           title="the same model, window by window")

# %% [markdown]
# The spread belongs to the text, not to the model: some passages are easier to predict
# than others. It is large, and it is why every comparison below is made on the same
# windows.
#
# ## 2. Two models: unpaired, then paired
#
# Prune the 20% smallest weights of every decoder matrix (magnitude pruning; lesson 5
# explains it). How sure can we be that this model is worse? First, give each model's
# perplexity its own interval: redraw the evaluation text (blocks of 32 tokens, drawn with
# replacement: the *bootstrap*, derived in `core/stats.py`) and watch how far the
# perplexity moves.
#
# **Predict**: will the two models' intervals overlap?

# %% tags=["prediction"]
my_guess_overlap = "no"  # "yes" or "no"

# %%
handle = masks.magnitude_prune(run.model, 0.2)
pruned20 = run.quality()
handle.restore()  # the dense weights are back, exactly
separate = {"dense": dense.interval(), "20% pruned": pruned20.interval()}
for label, q in (("dense", dense), ("20% pruned", pruned20)):
    low, high = separate[label]
    print(f"{label:>11}: perplexity {q.perplexity:.2f}, 95% interval {low:.2f}-{high:.2f}")
overlap = separate["20% pruned"][0] < separate["dense"][1]
print(f"the two intervals overlap: {'yes' if overlap else 'no'} (you guessed {my_guess_overlap})")

# %% [markdown]
# Unpaired, we cannot tell the two models apart: the spread between windows swamps the
# difference. But both models read the *same* tokens. A window that is hard for one is hard
# for the other, so compare them token by token: the perplexity ratio is exp of the mean
# per-token NLL *difference*, and the bootstrap redraws those differences.

# %%
paired = pruned20.vs(dense)
print(f"20% pruned vs dense, paired: {paired}")
run.claim("paired on the same tokens, the 20% pruned model is decidedly worse, while its separate "
          "interval overlaps the dense model's", paired.verdict == "higher" and overlap, str(paired),
          needs_real_model=True)
plots.intervals({"dense (own interval)": (dense.perplexity, *separate["dense"]),
                 "20% pruned (own interval)": (pruned20.perplexity, *separate["20% pruned"])},
                xlabel="perplexity", reference=None, title="unpaired: each model alone")

# %%
plots.intervals({"20% pruned / dense": (paired.ratio, paired.low, paired.high)},
                xlabel="perplexity ratio, paired (1 = a tie)", title="paired: the difference alone")

# %% [markdown]
# Every comparison of two models in this course is paired like this, and a claim that one
# is better is ✓ only when its interval excludes a tie.
#
# ## 3. Too close to call, and how much text would call it
#
# Now a gentler cut: the 10% smallest weights. Folklore says any pruning costs a little
# quality. Measure it on the first 2 evaluation windows, then on all of them.

# %%
handle = masks.magnitude_prune(run.model, 0.1)
pruned10 = run.quality()
handle.restore()
few = stats.paired_ratio(dense.nll[:2], pruned10.nll[:2])
full = pruned10.vs(dense)
print(f"10% pruned vs dense, first 2 windows: {few}")
print(f"10% pruned vs dense, all {N_EVAL} windows: {full}")
run.claim("on 2 windows the 10% cut is not distinguishable from dense", not few.decided, str(few),
          needs_real_model=True)
run.claim(f"on {N_EVAL} windows it is decided, and against the folklore it is *better* than dense",
          full.verdict == "lower", str(full), needs_real_model=True)

# %% [markdown]
# "Not distinguishable" is an answer, not a failure: it comes with an estimate of how much
# more text of the same kind would decide (the interval narrows as one over the square root
# of the tokens). And the answer on more text went against the folklore: dropping the
# smallest 10% of the weights did not cost quality here, it gained a little. (SmolLM2's
# weights come from a 4-bit file, so its smallest weights may be partly rounding noise:
# a guess this lesson does not test.)
#
# ## 4. The calibration sample is a source of variance too
#
# Wanda (lesson 5) chooses the weights to prune from the activations it sees on
# *calibration* text. Another sample of the same text gives another pruned model. Prune
# 50% with Wanda on three calibration draws (`run.calibration(draw)`: other windows of the
# text's first half, never the evaluation windows), and evaluate all three on the same
# tokens.

# %%
draws = {}
for draw in range(3):
    handle = wanda.wanda_prune(run.model, run.calibration(draw), 0.5)
    draws[draw] = run.quality()
    handle.restore()
    print(f"Wanda 50%, calibration draw {draw}: perplexity {draws[draw].perplexity:.2f}")
values = [q.perplexity for q in draws.values()]
print(f"spread over the draws: {min(values):.2f}-{max(values):.2f}")
between = {f"draw {k} / draw 0": draws[k].vs(draws[0]) for k in (1, 2)}
for label, comparison in between.items():
    print(f"{label}, paired: {comparison}")

# %%
run.claim("another calibration sample gives a decidedly different model, on the same evaluation tokens",
          any(c.decided for c in between.values()),
          "; ".join(f"{label}: {c.ratio:.3f} ({c.interval()})" for label, c in between.items()),
          needs_real_model=True)
plots.intervals({label: (c.ratio, c.low, c.high) for label, c in between.items()},
                xlabel="perplexity ratio, paired", title="Wanda 50%: one method, three calibration draws")

# %% [markdown]
# So a single calibration draw cannot rank two methods: the ranking could belong to the
# draw. Lesson 5 ranks Wanda and SparseGPT over several draws, each draw decided by its own
# paired interval, and claims a ranking only when every draw agrees.
#
# ## 5. The noise in a timing
#
# Time the model against an identical copy of itself, interleaved run by run (A, B, B, A,
# ...). Any "speedup" measured here is noise. **Predict** the paired spread: how far from
# 1.00x will its quartiles reach?

# %% tags=["prediction"]
my_guess_noise = 0.02  # your prediction: how far from 1.00x the quartiles of the paired ratios reach

# %% tags=["nbval-ignore-output"]
copy_a, copy_b = run.copy_model(), run.copy_model()
latency = run.latency({"copy A": copy_a, "copy B": copy_b}, tokens=128, runs=3 if QUICK else 9)
noise = timing.speedup(latency["copy A"], latency["copy B"])
print(f"copy B against copy A: {noise}; you guessed the quartiles within {my_guess_noise:.0%} of 1")
del copy_a, copy_b

# %% [markdown]
# Read the printed spread: it is this machine's noise for this workload, now. The course's
# timing rules follow from it:
# - timings are **paired** (interleaved, run by run), so drift hits both models alike;
# - a model is called **faster** only when even the lower quartile of its paired ratios is
#   above 1, **slower** only when even the upper quartile is below 1; otherwise "within noise";
# - "not faster" states the largest speedup the runs rule out, so a noisy machine cannot
#   pass it by a wide spread alone;
# - a measured speedup far above what the FLOPs allow (lesson 3's *ideal*) is an error to
#   re-measure, never a result.
#
# ## Explore
#
# The slider prunes the smallest weights of every decoder matrix; the explorer measures
# perplexity on 2 evaluation windows and the latency against the dense model, side by side.
# It shows the perplexity first, then times run by run: its bar is the interval of the
# median speedup, narrowing as the runs come in, and it stops as soon as that interval
# clears 1. Stopping at the first look that decides would find effects that are not
# there, so the interval is planned for a look after every run (`stats.median_interval`).

# %%
explorer = Explorer(run.model, run.windows.eval[:2], lambda m, method, s: masks.magnitude_prune(m, s),
                    methods=("magnitude",), amount_label="sparsity", amount_max=0.5, step=0.1,
                    title="magnitude pruning: perplexity and latency")
print(f"{len(explorer.cache)} point measured (the dense one); each new setting is measured once, then cached")

# %% tags=["nbval-ignore-output"]
explorer

# %% [markdown]
# ## Your turn
#
# Write `paired_interval(nll_base, nll_other, block, resamples, seed)`: return the
# perplexity ratio other / base and its 95% interval, `(ratio, low, high)`. Cut each
# window's per-token differences `nll_other - nll_base` into blocks of `block` tokens,
# draw as many blocks with replacement `resamples` times, and take the 2.5th and 97.5th
# percentiles of exp(mean difference) over the resamples. The check runs it on hidden
# texts whose neighbouring tokens are alike, as in real text.

# %% tags=["solution"]
def paired_interval(nll_base, nll_other, block, resamples, seed):
    """(ratio, low, high): paired perplexity ratio and its 95% block-bootstrap interval."""
    ### BEGIN SOLUTION
    import numpy as np

    diff = (nll_other - nll_base).double()
    sums, counts = [], []
    for row in diff:  # blocks never cross windows
        for start in range(0, row.shape[0], block):
            sums.append(float(row[start:start + block].sum()))
            counts.append(row[start:start + block].numel())
    sums, counts = np.array(sums), np.array(counts, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)  # token-weighted
    low, high = np.exp(np.quantile(means, [0.025, 0.975]))
    return float(np.exp(float(diff.mean()))), float(low), float(high)
    ### END SOLUTION


# %%
checks.check_paired_interval(paired_interval)

# %% [markdown]
# ## Takeaways
#
# - One perplexity hides a large spread between windows of the same text (section 1).
# - Paired on the same tokens, a comparison decides what two separate perplexities cannot
#   (section 2); every comparison in the course is paired and prints its interval.
# - "Not distinguishable at this size" is a result, with the text it would take to decide;
#   here, more text overturned the folklore (section 3).
# - A method that learns from calibration text is judged over several calibration draws
#   (section 4): lesson 5 ranks methods that way.
# - A timing is judged against its own noise (section 5): paired runs, a verdict only when
#   the spread clears 1, and a speedup beyond the FLOPs' ideal is re-measured, never reported.
