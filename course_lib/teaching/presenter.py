"""The presenter dashboard: the six lessons' explorers on one page, for a projector.

``make present`` serves ``presenter/dashboard.ipynb`` with Voilà (code hidden,
widgets only) on localhost; that notebook shows ``Dashboard()`` and starts
``dashboard.precompute()``.

Four choices keep it live and honest in front of an audience:
- ONE model, loaded once, shared by every explorer: an explorer prunes, measures
  and restores, so the explorers never see each other's pruning. One dense copy
  beside it is what every point is timed against, interleaved run by run;
- small measurements (2 evaluation windows of 64 tokens, not the lessons' windows:
  every perplexity label says which; latency over 32 tokens): a new point shows its
  perplexity within a second or two, then its speedup's interval narrows run by run
  until the verdict is decided (at most 12 paired runs, about 5 s), and moving the
  slider again stops a stale point at once (``widgets.Explorer``);
- ``precompute()`` measures every tab's grid in a background thread behind a
  progress bar, the slow methods (SparseGPT, then Wanda) first, and keeps the points
  on disk (``widgets.default_cache_dir()``), keyed by the weights, method, amount,
  windows and calibration: a second session starts warm. ``--prepare`` (``make
  prepare``) measures the SparseGPT grid once per machine, in the foreground
  with a progress bar, into that same cache;
- a lesson's explorer is built the first time its tab is opened (with the scores
  its methods rank by), so the page is up as soon as the model is loaded.

Run ``python -m course_lib.teaching.presenter [--port N]`` (what ``make present`` does),
or ``... --prepare`` to fill the disk cache with the SparseGPT points.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

MODEL = "smollm2-135m"
SEQ_LEN, N_EVAL = 64, 2  # evaluation windows: the live budget, not the course protocol
N_CALIB = 4  # calibration windows for the activation score (computed once, ~1 s)
LATENCY_TOKENS, LATENCY_RUNS = 32, 12  # at most 12 paired runs per point (6 can decide)
LATENCY_SECONDS = 5.0  # and at most this long: a verdict within ~6 s of the first number
SLOW_METHODS = ("sparsegpt", "wanda")  # precomputed first: the ones a room would wait for
THREADS = 2
DEFAULT_PORT = 8866
PRECOMPUTE_ENV = "COURSE_PRESENTER_PRECOMPUTE"  # "0": no background precompute (points on demand)
NOTEBOOK = Path(__file__).resolve().parents[2] / "presenter" / "dashboard.ipynb"

# Large type for a projector. ipywidgets 8 sizes its controls with CSS variables;
# setting them on the dashboard's root box scales every widget inside it.
CSS = """
<style>
.presenter { --jp-widgets-font-size: 24px; --jp-widgets-inline-height: 44px;
  --jp-widgets-inline-label-width: 240px; --jp-widgets-slider-handle-size: 26px;
  --jp-widgets-slider-track-thickness: 8px; --jp-widgets-horizontal-tab-height: 52px;
  font-size: 24px; }
.presenter .widget-label, .presenter .widget-readout, .presenter .widget-html-content,
.presenter select, .presenter .lm-TabBar-tab { font-size: 24px !important; line-height: 1.5; }
.presenter .lm-TabBar-tab { flex: 0 0 auto !important; min-width: 0 !important; padding: 0 16px; }
.presenter .widget-hbox { flex-wrap: wrap; gap: 0 1em; }
.presenter .widget-slider { width: 900px !important; }
.presenter .widget-readout { min-width: 4em; }
.presenter .widget-dropdown { width: 440px !important; }
.presenter .widget-dropdown select { flex: 1 1 auto; }
.presenter .explorer-perplexity .widget-html-content, .presenter .explorer-latency .widget-html-content,
.presenter .explorer-speedup .widget-html-content, .presenter .explorer-parameters .widget-html-content {
  font-size: 32px !important; }
.presenter h1 { font-size: 40px; margin: 0.2em 0; }
.presenter .lesson-note { font-size: 24px; color: #333; max-width: 1200px; }
.presenter img { max-width: 100%; }
</style>
"""


# ------------------------------------------------------------------ what each tab prunes
@dataclass(frozen=True)
class Section:
    """One lesson's explorer: what the slider means and which prune it runs."""

    key: str
    title: str
    note: str  # one or two sentences for the audience: what to watch
    methods: tuple[str, ...]
    amount_label: str
    amount_max: float
    step: float
    prune: Callable  # (scores, model, method, amount) -> PruneHandle
    scores: str = ""  # the Scores its methods rank by, computed when the tab opens
    flops_bound: bool = True  # a speedup beyond the FLOPs ratio is an error (not so for int8 kernels)


def _head_request(scores, model, method, fraction, **kwargs):
    from ..pruning import heads

    return heads.least_important_heads(scores.heads[method], fraction=fraction, model=model, **kwargs)


def prune_heads_zeroed(scores, model, method, fraction):
    """01: zero the lowest-scoring heads of every layer (any count: zeroing keeps the shapes)."""
    from ..pruning import heads

    return heads.zero_heads(model, _head_request(scores, model, method, fraction, respect_gqa=False))


def prune_zeroed_vs_removed(scores, model, method, fraction):
    """02: the same heads (whole rounds of every KV group) zeroed, or removed."""
    from ..pruning import heads

    request = _head_request(scores, model, "weight norm", fraction)
    return heads.zero_heads(model, request) if method == "zero" else heads.remove_heads(model, request)


def prune_heads_removed(scores, model, method, fraction):
    """03: remove heads ranked across the whole model (GQA-respecting rounds)."""
    from ..pruning import heads

    return heads.remove_heads(model, _head_request(scores, model, method, fraction, per_layer=False))


def prune_neurons_removed(scores, model, method, fraction):
    """04: remove the same fraction of MLP neurons from every layer."""
    from ..pruning import mlp

    return mlp.remove_neurons(model, mlp.least_important_neurons(scores.neurons[method], fraction))


def prune_unstructured(scores, model, method, sparsity):
    """05: zero single weights per output row: the smallest (magnitude), random ones,
    or by Wanda's and SparseGPT's calibration walks (on the dashboard's few windows)."""
    from ..pruning import masks, sparsegpt, wanda

    if method == "magnitude":
        return masks.magnitude_prune(model, sparsity)
    if method == "wanda":
        return wanda.wanda_prune(model, scores.calib, sparsity)
    if method == "sparsegpt":
        return sparsegpt.sparsegpt_prune(model, scores.calib, sparsity)
    return masks.random_prune(model, sparsity)


def prune_quantized(scores, model, method, fraction):
    """06: make a fraction of the projections dynamic int8, those with the fewest activation
    outliers first (``quantize.activation_outlier_ratio``) or in layer order; restored exactly."""
    from ..runtime import quantize

    ratios = scores.outliers
    names = sorted(ratios, key=ratios.get) if method == "fewest outliers first" else list(ratios)
    return quantize.quantize_in_place(model, names[: round(fraction * len(names))])


SECTIONS = (
    Section("01", "heads zeroed",
            "Heads switched off by zeroing their weights. Quality drops, but the matrices "
            "keep their shapes: latency does not move.",
            ("weight norm", "random"), "fraction of heads", 8 / 9, 1 / 9, prune_heads_zeroed, "heads"),
    Section("02", "zeroed vs removed",
            "The same heads, zeroed or cut out. Perplexity is identical; only removal "
            "shrinks the parameters and the latency.",
            ("remove", "zero"), "fraction of heads", 2 / 3, 1 / 3, prune_zeroed_vs_removed, "heads"),
    Section("03", "heads removed",
            "Heads ranked across the whole model and cut out (whole rounds of every "
            "key/value group): real speedup. Is the norm better than chance?",
            ("weight norm", "random"), "fraction of heads", 2 / 3, 1 / 9, prune_heads_removed, "heads"),
    Section("04", "MLP neurons removed",
            "MLP neurons cut out of every layer, where most weights are. Which ones? "
            "Small weights fool the norm (some first-layer neurons fire hard); "
            "activations on a little text know better.",
            ("activation", "weight norm", "random"), "fraction of neurons", 0.9, 0.1,
            prune_neurons_removed, "neurons"),
    Section("05", "unstructured sparsity",
            "Single weights set to zero: magnitude keeps quality far longer than random, "
            "Wanda and SparseGPT longer still, yet dense kernels run just as long.",
            ("magnitude", "random", "wanda", "sparsegpt"), "sparsity", 0.9, 0.1, prune_unstructured),
    Section("06", "int8 projections",
            "Projections switched to int8 weights and activations, one by one. Those with "
            "few activation outliers take it well; the outlier ones break the model.",
            ("fewest outliers first", "layer order"), "fraction int8", 1.0, 0.25, prune_quantized,
            "outliers", flops_bound=False),
)


class Scores:
    """Importance scores of the original model, computed once, on first use.

    ``calib``: calibration windows (from the start of the text, disjoint from the
    evaluation windows) for the activation score.
    """

    def __init__(self, model, calib: torch.Tensor, seed: int = 0):
        self.model, self.calib, self.seed = model, calib, seed
        self._heads = self._neurons = self._outliers = None

    @property
    def outliers(self) -> dict:
        """max|x| / mean|x| at each projection's input on the calibration windows (lesson 6)."""
        if self._outliers is None:
            from ..runtime import quantize

            self._outliers = quantize.activation_outlier_ratio(self.model, self.calib)
        return self._outliers

    @property
    def heads(self) -> dict:
        if self._heads is None:
            from ..pruning import heads

            norm = heads.head_importance_weight_norm(self.model)
            rng = np.random.default_rng(self.seed)  # the baseline: an order by chance
            self._heads = {"weight norm": norm, "random": rng.random(norm.shape)}
        return self._heads

    @property
    def neurons(self) -> dict:
        if self._neurons is None:
            from ..pruning import mlp

            norm = mlp.neuron_importance_weight_norm(self.model)
            generator = torch.Generator().manual_seed(self.seed)
            self._neurons = {"activation": mlp.neuron_importance_activation(self.model, self.calib),
                             "weight norm": norm,
                             "random": [torch.rand(s.shape, generator=generator) for s in norm]}
        return self._neurons


# ------------------------------------------------------------------------ the page
class Dashboard:
    """A title and one tab per lesson, each holding that lesson's Explorer."""

    def __init__(self, model_name: str = MODEL, seq_len: int = SEQ_LEN, n_eval: int = N_EVAL,
                 n_calib: int = N_CALIB,
                 latency_tokens: int = LATENCY_TOKENS, latency_runs: int = LATENCY_RUNS,
                 threads: int = THREADS, sections=SECTIONS, model=None, tokenizer=None,
                 cache_dir="default", latency_seconds: float = LATENCY_SECONDS):
        import ipywidgets as widgets
        import matplotlib.pyplot as plt

        from ..core import data, models

        torch.manual_seed(0)
        torch.set_num_threads(threads)
        plt.rcParams.update({"figure.dpi": 150, "font.size": 11})  # readable from the back row
        if model is None:
            model, tokenizer = models.load(model_name)
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        from .widgets import default_cache_dir

        self.cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        self._dense = None  # the dense twin every explorer times against (made once)
        self._opening = threading.RLock()
        self._thread = None
        windows = data.windows_for(tokenizer, model_name, seq_len=seq_len, n_eval=n_eval,
                                   n_calib=n_calib)
        self.windows = windows.eval
        self.latency = {"latency_tokens": latency_tokens, "latency_runs": latency_runs,
                        "latency_seconds": latency_seconds}
        self.scores = Scores(model, windows.calib)
        # what else decides a point: the calibration windows (Wanda, SparseGPT, the activation
        # scores) and the seed of the random orders; part of every disk-cache key
        from .widgets import digest

        self.settings = {"calibration": digest(windows.calib), "seed": self.scores.seed}
        self.sections = {s.key: s for s in sections}
        self.explorers: dict = {}
        self.pages = {key: widgets.VBox([widgets.HTML(f"<div class='lesson-note'>{s.note}</div>"),
                                         widgets.HTML("<i>measuring the dense model…</i>")])
                      for key, s in self.sections.items()}
        self.tabs = widgets.Tab(children=list(self.pages.values()),
                                titles=[f"{s.key} {s.title}" for s in self.sections.values()])
        self.tabs.observe(self._on_tab, names="selected_index")
        header = widgets.HTML(
            f"<h1>Pruning LLMs, live</h1><div class='lesson-note'>{model_name}, perplexity on "
            f"{n_eval} windows of {seq_len} tokens (not the lessons' windows), prefill latency of "
            f"{latency_tokens} tokens timed beside the dense model, run by run ({threads} threads): "
            f"the bars are the interval of the speedup, narrowing as runs come in, until it clears "
            f"1 or {latency_runs} runs are done.</div>")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="precomputing",
                                            layout=widgets.Layout(display="none"))
        self.widget = widgets.VBox([widgets.HTML(CSS), header, self.progress, self.tabs])
        self.widget.add_class("presenter")
        self.open(next(iter(self.sections)))

    def open(self, key: str):
        """The explorer of lesson ``key``, built (and its page filled) on first use."""
        if key not in self.sections:
            raise ValueError(f"no lesson {key!r} on the dashboard; choose one of {list(self.sections)}.")
        with self._opening:  # a tab click and the background precompute may race here
            if key not in self.explorers:
                from ..runtime import speed
                from .widgets import Explorer, exclusive

                s = self.sections[key]
                with exclusive(self.model):  # the original weights: no other tab prunes meanwhile
                    if self._dense is None:
                        self._dense = copy.deepcopy(self.model)
                    if s.scores:  # now, not in the first point the room asks for
                        getattr(self.scores, s.scores)

                def prune(model, method, amount):  # the section's prune, with the shared scores
                    return s.prune(self.scores, model, method, amount)

                prune.__qualname__ = s.prune.__qualname__  # the disk cache's name for it
                explorer = Explorer(
                    self.model, self.windows, prune,
                    methods=s.methods, amount_label=s.amount_label, amount_max=s.amount_max,
                    step=s.step, title=f"{s.key} {s.title}", cache_dir=self.cache_dir,
                    model_name=self.model_name, dense_model=self._dense, settings=self.settings,
                    ideal=speed.flops_ideal if s.flops_bound else None, **self.latency)
                self._tag(explorer)
                self.explorers[key] = explorer
                note = self.pages[key].children[0]
                self.pages[key].children = (note, explorer.widget)
        return self.explorers[key]

    def precompute(self, keys=None, background: bool = True, methods=None,
                   progress: Callable[[int, int], None] | None = None):
        """Measure every tab's grid (all methods, every slider value), behind a progress bar.

        Runs in a background thread by default, so the room sees the page at once;
        a slider moved meanwhile goes first. The slow methods (``SLOW_METHODS``) come
        first: every other point answers live within a second or two anyway. Points land
        in the disk cache, so the next session (``make present`` again) finds them ready.
        ``methods``: only these (e.g. ``("sparsegpt",)``). Returns the thread.

        ``COURSE_PRESENTER_PRECOMPUTE=0`` in the environment (``--no-precompute``) turns it
        off: every point is then measured when the slider first reaches it.
        """
        if os.environ.get(PRECOMPUTE_ENV, "1") == "0":
            self.progress.layout.display = "none"
            return None
        return self.measure_grids(keys, background, methods, progress)

    def measure_grids(self, keys=None, background: bool = True, methods=None,
                      progress: Callable[[int, int], None] | None = None):
        """``precompute`` whatever the environment says (``prepare`` calls it)."""
        keys = list(self.sections) if keys is None else list(keys)
        work_items = [(k, m) for k in keys for m in self.sections[k].methods
                      if methods is None or m in methods]
        work_items.sort(key=lambda km: SLOW_METHODS.index(km[1]) if km[1] in SLOW_METHODS
                        else len(SLOW_METHODS))
        counts = [1 + round(self.sections[k].amount_max / self.sections[k].step) for k, _ in work_items]
        total = sum(counts)
        self.progress.max, self.progress.value = total, 0
        self.progress.layout.display = None

        def work():
            done = 0
            for (key, method), count in zip(work_items, counts):
                explorer = self.open(key)

                def step(i, _n, base=done):
                    self.progress.value = min(base + i, total)
                    self.progress.description = f"{self.progress.value}/{total} points"
                    if progress is not None:
                        progress(self.progress.value, total)

                explorer.precompute(methods=(method,), background=False, progress=step)
                done += count
            self.progress.value = total
            self.progress.bar_style = "success"
            self.progress.description = f"all {total} points ready"

        if not background:
            work()
            return None
        self._thread = threading.Thread(target=work, name="dashboard precompute", daemon=True)
        self._thread.start()
        return self._thread

    @staticmethod
    def _tag(explorer) -> None:
        """CSS classes on the parts a stylesheet or a browser test needs to find."""
        explorer.widget.add_class("explorer")
        explorer.slider.add_class("explorer-slider")
        explorer.method.add_class("explorer-method")
        explorer.timing_progress.add_class("explorer-timing-progress")
        for name, label in explorer.labels.items():
            label.add_class(f"explorer-{name}")

    def _on_tab(self, change) -> None:
        if change["new"] is not None:
            self.open(list(self.sections)[change["new"]])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def prepare(methods=("sparsegpt",), model_name: str = MODEL, **dashboard) -> dict:
    """Measure the dashboard's points of ``methods`` into the disk cache, once per machine.

    What ``make prepare`` does for SparseGPT (the one method whose new points take long):
    afterwards every SparseGPT point a presenter's slider can reach comes from the cache
    (keyed by the weights, the windows, the calibration and the timing budget, so a
    change to any of them measures again). A progress bar shows on a terminal. Returns
    how many points were measured now and how many were there already. ``dashboard``:
    arguments of ``Dashboard`` (a test's small model and windows).
    """
    from ..core.progress import bar

    d = Dashboard(model_name, **dashboard)
    keys = [k for k, s in d.sections.items() if set(methods) & set(s.methods)]
    shown = bar(total=1, desc=f"presenter points ({', '.join(methods)})", unit="point")

    def step(done, total):
        shown.total = total
        shown.update(done - shown.n)

    try:
        d.measure_grids(keys, background=False, methods=tuple(methods), progress=step)
    finally:
        shown.close()
    explorers = [d.explorers[k] for k in keys]
    return {"measured": sum(e.measurements for e in explorers),
            "from_disk": sum(e.disk_hits for e in explorers), "cache": str(d.cache_dir)}


# ------------------------------------------------------------------------ serving
def voila_command(port: int, notebook: Path = NOTEBOOK) -> list[str]:
    """The Voilà command line that serves the dashboard on localhost only."""
    voila = Path(sys.executable).with_name("voila")
    return [str(voila) if voila.exists() else "voila", str(notebook), "--no-browser",
            f"--port={port}", "--Voila.ip=127.0.0.1", "--Voila.port_retries=0",
            "--strip_sources=True", "--show_tracebacks=True", "--theme=light"]


def server_env(base: dict | None = None) -> dict:
    """The environment for Voilà and its kernel.

    ``OMP_WAIT_POLICY=PASSIVE``: torch's CPU threads sleep instead of spinning
    while they wait for each other. On a laptop that also runs slides, a browser
    and a screen share, spinning threads fight over the cores and one forward
    pass can take ten times longer; passive waiting costs a few ms at most.
    It must be in the environment before torch loads, hence here.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("HF_HUB_OFFLINE", "1")  # the embedded model needs no network
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.teaching.presenter",
                                     description="Serve the presenter dashboard with Voilà.")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--no-precompute", action="store_true",
                        help="measure each point when the slider first reaches it (no background grid)")
    parser.add_argument("--prepare", action="store_true",
                        help="serve nothing: measure the points of --methods into the disk cache (make prepare)")
    parser.add_argument("--methods", default="sparsegpt",
                        help="with --prepare: comma-separated methods (default: sparsegpt)")
    args = parser.parse_args(argv)
    if args.prepare:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        known = sorted({m for s in SECTIONS for m in s.methods})
        unknown = [m for m in methods if m not in known]
        if unknown or not methods:
            print(f"--methods {args.methods!r}: no dashboard tab has {unknown or 'these'}; choose from "
                  f"{', '.join(known)}.", file=sys.stderr)
            return 2
        done = prepare(methods)
        print(f"presenter points ready in {done['cache']}: {done['measured']} measured now, "
              f"{done['from_disk']} already there", flush=True)
        return 0
    if not NOTEBOOK.exists():
        print(f"{NOTEBOOK} is missing: run this from a checkout of the course.", file=sys.stderr)
        return 2
    if shutil.which(voila_command(args.port)[0]) is None:
        print("Voilà is not installed: `make install` brings it (or pip install voila).",
              file=sys.stderr)
        return 2
    if not port_is_free(args.port):
        print(f"port {args.port} is in use: choose another, e.g. make present PORT={args.port + 1}",
              file=sys.stderr)
        return 2
    print(f"presenter dashboard: http://localhost:{args.port}/  "
          "(the first page takes ~20 s; Ctrl-C stops)", flush=True)
    command = voila_command(args.port)
    # Become Voilà (no Python parent left): Ctrl-C reaches it directly and it shuts its kernel down.
    env = server_env()
    if args.no_precompute:
        env[PRECOMPUTE_ENV] = "0"
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
