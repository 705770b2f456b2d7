"""The live explorer: one slider, one method menu, the numbers, and a growing plot.

Every lesson uses the same ``Explorer``. You give it a model, a few evaluation
windows and a ``prune(model, method, amount) -> PruneHandle`` function; it
prunes from the original weights, measures, restores, and remembers the point:
- the slider's grid holds every point you ask for (``grid=``) and the start value;
- each point times the dense model and the pruned one *interleaved in one call*,
  so its speedup carries its own spread (the paired runs' IQR, ``timing.speedup``):
  a setting that changes nothing reads 1.00x within that spread, and the plot's
  speed axis always shows 1.0 over a range that does not magnify the noise;
- ``also_on={"code": windows}`` measures each point's perplexity on other texts
  too (``point.other_perplexity``), from the same pruned weights: no second prune;
- results are cached per (method, amount) in memory, and on disk when given a
  ``cache_dir`` (keyed by the model's weights, the explorer, the method, the amount
  and the evaluation windows), so a second session reuses them;
- ``precompute()`` measures the whole grid in a background thread behind a
  progress bar, so an instructor never waits in front of the room;
- pruning always starts from the restored original (a failed prune is undone too);
- ``continuous_update=False``: a slider drag measures once, where you let go;
- an error is shown in the explorer's own output, never as a dead kernel.

Tests drive it without a browser by setting ``explorer.slider.value``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import traceback
import weakref
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from ..core import metrics, timing

SPEED_AXIS = (0.5, 1.5)  # the speed axis shows at least this range, so noise looks like noise
_GATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # one gate per shared model


class _Gate:
    """One model, several explorers, one background thread: who may prune it now.

    A lock serialises the measurements (each prunes the shared model in place);
    a point the room asks for (the slider) goes before the background's next one.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.waiting = 0  # foreground requests queued for the lock

    def wait_for_foreground(self) -> None:
        import time

        while self.waiting:
            time.sleep(0.02)


def default_cache_dir() -> Path:
    """Where explorers keep measured points between sessions (``COURSE_CACHE`` overrides)."""
    return Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "pruning-course")) / "explorer"


def grid_step(values: Sequence[float], step: float, start: float = 0.0) -> float:
    """The largest step from ``start`` whose grid holds every value (and divides ``step``).

    ``grid_step([0.3, 0.5, 0.7], 0.2)`` is 0.1: a step of 0.2 from 0 would never
    reach 0.3. Steps like 1/9 (heads of a 9-head layer) are kept exact.
    """
    fractions = [Fraction(float(step)).limit_denominator(1000)]
    fractions += [Fraction(float(v) - float(start)).limit_denominator(1000) for v in values]
    g = Fraction(0)
    for f in fractions:  # gcd of rationals: gcd of numerators / lcm of denominators
        g = f if g == 0 else Fraction(_gcd(g.numerator * f.denominator, f.numerator * g.denominator),
                                      g.denominator * f.denominator)
    return float(abs(g)) if g else float(step)


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)


@dataclass(frozen=True)
class Point:
    """One measured setting. The speedup is dense latency / pruned latency from one
    interleaved timing call; ``speedup_low``/``speedup_high`` are the paired runs' IQR."""

    method: str
    amount: float
    perplexity: float
    latency_ms: float
    speedup: float
    parameters: int
    sparsity: float
    speedup_low: float = 1.0
    speedup_high: float = 1.0
    runs: int = 0
    dense_latency_ms: float = 0.0
    other_perplexity: dict = field(default_factory=dict)  # text name -> perplexity (``also_on``)

    @property
    def verdict(self) -> str:
        return timing.Speedup(self.speedup, self.speedup_low, self.speedup_high, self.runs).verdict

    def as_dict(self) -> dict:
        return asdict(self)


class Explorer:
    """Slider + method dropdown + labels + accumulating plot, over any pruning function."""

    def __init__(self, model, eval_windows: torch.Tensor,
                 prune: Callable[[object, str, float], object],
                 methods: Sequence[str] = ("magnitude",),
                 amount_label: str = "sparsity", amount_min: float = 0.0,
                 amount_max: float = 0.9, step: float = 0.1, value: float | None = None,
                 latency_tokens: int = 64, latency_runs: int = 5, title: str = "",
                 grid: Sequence[float] = (), cache_dir: str | Path | None = None,
                 model_name: str = "", dense_model=None, also_on: dict | None = None):
        self.model = model
        self.eval_windows = eval_windows
        self.also_on = dict(also_on or {})
        self.prune = prune
        self.latency_tokens, self.latency_runs = latency_tokens, latency_runs
        self.title = title or f"{amount_label} explorer"
        self.cache: dict[tuple[str, float], Point] = {}
        self.errors: list[str] = []
        self.measurements = 0  # how many settings were really computed (not from the cache)
        self.disk_hits = 0  # how many came from the disk cache
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_name = model_name
        self._dense_model = dense_model  # the untouched twin each point is timed against
        self._original = self._fingerprint()
        self._gate = _GATES.setdefault(model, _Gate())
        self._thread: threading.Thread | None = None
        self._drawn: tuple | None = None  # the cached points the current plot shows

        start = amount_min if value is None else value
        step = grid_step(list(grid) + [start, amount_max], step, amount_min)
        self.slider = widgets.FloatSlider(
            value=start, min=amount_min, max=amount_max, step=step, description=amount_label,
            continuous_update=False, readout_format=".2f",
            style={"description_width": "initial"}, layout=widgets.Layout(width="420px"))
        self.method = widgets.Dropdown(options=list(methods), value=methods[0], description="method",
                                       disabled=len(methods) == 1)
        self.labels = {key: widgets.HTML() for key in
                       ("perplexity", "latency", "speedup", "parameters", "status")}
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="precomputing",
                                            layout=widgets.Layout(display="none"))
        self.plot_output = widgets.Output()
        self.error_output = widgets.Output()
        self.slider.observe(self._on_change, names="value")
        self.method.observe(self._on_change, names="value")
        self.widget = widgets.VBox([
            widgets.HTML(f"<b>{self.title}</b>"),
            widgets.HBox([self.slider, self.method]),
            widgets.HBox(list(self.labels.values())[:-1]),
            self.labels["status"], self.progress, self.error_output, self.plot_output])
        self.update()

    # -- the grid ------------------------------------------------------------------
    @property
    def grid(self) -> list[float]:
        """Every value the slider can take, rounded as the cache keys are."""
        s = self.slider
        count = int(round((s.max - s.min) / s.step))
        return [round(s.min + i * s.step, 4) for i in range(count + 1)]

    @property
    def windows_text(self) -> str:
        n, length = self.eval_windows.shape[:2]
        return f"{n}x{length} tokens"

    # -- measuring -----------------------------------------------------------------
    def dense_model(self):
        """The dense twin (a copy made once, or the one given): timed beside every point."""
        if self._dense_model is None:
            self._dense_model = copy.deepcopy(self.model)
        return self._dense_model

    def _measure(self, method: str, amount: float) -> Point:
        handle = self.prune(self.model, method, amount) if amount > 0 else None
        try:
            ppl = metrics.perplexity(self.model, self.eval_windows, batch_size=len(self.eval_windows))
            other = {text: metrics.perplexity(self.model, w, batch_size=len(w)) for text, w in self.also_on.items()}
            pair = {"dense": self.dense_model(), "pruned": self.model}
            times = timing.time_side_by_side(
                timing.prefill_workloads(pair, tokens=self.latency_tokens), runs=self.latency_runs,
                warmup=1, threads=torch.get_num_threads(),
                device=next(self.model.parameters()).device.type)
            parameters = metrics.parameter_count(self.model)
            sparsity = metrics.total_sparsity(self.model)
        finally:
            if handle is not None:
                handle.restore()  # the next point starts from the original weights
        ratio = timing.speedup(times["dense"], times["pruned"])
        return Point(method, amount, ppl, times["pruned"].median_ms, ratio.median, parameters,
                     sparsity, ratio.low, ratio.high, ratio.runs, times["dense"].median_ms, other)

    def _disk_path(self, key: tuple[str, float]) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(self.eval_windows.cpu().numpy().tobytes())
        for text, w in sorted(self.also_on.items()):
            digest.update(text.encode() + w.cpu().numpy().tobytes())
        windows = digest.hexdigest()[:16]
        model = hashlib.sha256(repr(self._original).encode()).hexdigest()[:16]
        prune = getattr(self.prune, "__qualname__", type(self.prune).__name__)
        ident = json.dumps([self.model_name, model, self.title, prune, key[0], key[1], windows,
                            self.latency_tokens, self.latency_runs])
        name = hashlib.sha256(ident.encode()).hexdigest()[:24]
        return self.cache_dir / (self.model_name or "model") / f"{name}.json"

    def _from_disk(self, key) -> Point | None:
        path = self._disk_path(key)
        if path is None or not path.exists():
            return None
        try:
            stored = json.loads(path.read_text())
            return Point(**{f.name: stored[f.name] for f in fields(Point) if f.name in stored})
        except (ValueError, TypeError, KeyError):
            return None  # a damaged file is measured again

    def _to_disk(self, key, point: Point) -> None:
        path = self._disk_path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(point.as_dict()))
            tmp.replace(path)  # atomic: a second session never reads half a file

    def point(self, method: str, amount: float, background: bool = False) -> Point:
        """The measured point for a setting, from the cache when visited before."""
        amount = round(float(amount), 4)
        key = ("dense", 0.0) if amount == 0 else (method, amount)
        if key not in self.cache:
            gate = self._gate
            if background:
                gate.wait_for_foreground()
            else:
                gate.waiting += 1
            try:
                gate.lock.acquire()
            finally:
                if not background:
                    gate.waiting -= 1
            try:
                if key not in self.cache:
                    stored = self._from_disk(key)
                    if stored is not None:
                        self.disk_hits += 1
                        self.cache[key] = stored
                    else:
                        self.cache[key] = self._measure(key[0], amount)
                        self.measurements += 1
                        self._to_disk(key, self.cache[key])
            finally:
                gate.lock.release()
        return self.cache[key]

    def precompute(self, methods: Sequence[str] | None = None, amounts: Sequence[float] | None = None,
                   background: bool = True, progress: Callable[[int, int], None] | None = None):
        """Measure every (method, amount) of the grid, behind a visible progress bar.

        In a background thread by default (the widgets stay usable; a point the
        slider asks for meanwhile waits for the one being measured). Returns the
        thread (``.join()`` waits), or None when run in the foreground.
        """
        todo = [(m, a) for m in (methods or self.method.options)
                for a in (self.grid if amounts is None else amounts) if a > 0]
        todo = [("dense", 0.0)] + todo
        self.progress.max, self.progress.value = len(todo), 0
        self.progress.layout.display = None

        def work():
            for i, (method, amount) in enumerate(todo):
                try:
                    self.point(method, amount, background=True)
                except Exception as err:  # shown like a slider error; the rest still runs
                    self.errors.append(f"{type(err).__name__}: {err}")
                self.progress.value = i + 1
                self.progress.description = f"{i + 1}/{len(todo)} points"
                if progress is not None:
                    progress(i + 1, len(todo))
            self.progress.bar_style = "success"
            self.progress.description = f"{len(todo)} points ready"
            self._redraw()

        if not background:
            work()
            return None
        self._thread = threading.Thread(target=work, name=f"precompute {self.title}", daemon=True)
        self._thread.start()
        return self._thread

    def _fingerprint(self) -> tuple:
        """Shapes and sums of every parameter: cheap evidence the model is the original."""
        with torch.no_grad():
            return tuple((n, tuple(p.shape), float(p.double().sum()))
                         for n, p in self.model.named_parameters())

    # -- reacting to the widgets ---------------------------------------------------------
    def _on_change(self, _change=None) -> None:
        self.update()

    def update(self) -> Point | None:
        """Measure (or recall) the current setting and refresh labels and plot."""
        self.error_output.outputs = ()
        try:
            self.point("dense", 0.0)  # the reference point of the plot
            current = self.point(self.method.value, self.slider.value)
        except Exception as err:  # shown in the explorer; the kernel and model stay usable
            self.errors.append(f"{type(err).__name__}: {err}")
            intact = self._fingerprint() == self._original
            advice = "" if intact else " The model was left changed: reload it."
            self.labels["status"].value = f"<span style='color:#b00'>error: {err}{advice}</span>"
            self.error_output.append_stderr("".join(
                traceback.format_exception(type(err), err, err.__traceback__, limit=2)))
            return None
        self._show(current)
        return current

    def _show(self, p: Point) -> None:
        self.labels["perplexity"].value = (f"perplexity <b>{p.perplexity:.2f}</b> "
                                           f"<small>(on {self.windows_text})</small>&emsp;")
        self.labels["latency"].value = f"latency <b>{p.latency_ms:.1f} ms</b>&emsp;"
        self.labels["speedup"].value = (f"speedup <b>{p.speedup:.2f}x</b> "
                                        f"<small>[{p.speedup_low:.2f}-{p.speedup_high:.2f}, "
                                        f"{p.verdict}]</small>&emsp;")
        self.labels["parameters"].value = f"parameters <b>{p.parameters / 1e6:.2f} M</b>"
        self.labels["status"].value = (f"{p.method} at {p.amount:.2f}: achieved sparsity "
                                       f"{p.sparsity:.1%}; {len(self.cache)} points cached")
        self._redraw()

    def _redraw(self) -> None:
        drawn = tuple(sorted(self.cache))
        if drawn == self._drawn:
            return  # a cached point: the plot already shows it (a redraw costs ~0.2 s)
        self._drawn = drawn
        # Written into the widget's own state (not through `with output:` capture,
        # which needs a live front end): the figure never leaks into the cell.
        self.plot_output.outputs = ()
        self.plot_output.append_display_data(self.figure())

    def figure(self):
        """Perplexity and speedup (with its spread) of every visited point, one line per method."""
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.6))
        dense = self.cache.get(("dense", 0.0))
        lows, highs = [SPEED_AXIS[0]], [SPEED_AXIS[1]]
        for method in self.method.options:
            pts = sorted((p for (m, _), p in list(self.cache.items()) if m == method), key=lambda p: p.amount)
            if dense:
                pts = [dense] + pts
            if not pts:
                continue
            x = [p.amount for p in pts]
            left.plot(x, [p.perplexity for p in pts], "o-", label=method)
            y = [p.speedup for p in pts]
            spread = [[max(p.speedup - p.speedup_low, 0) for p in pts],
                      [max(p.speedup_high - p.speedup, 0) for p in pts]]
            right.errorbar(x, y, yerr=spread, fmt="o-", capsize=3, label=method)
            lows += [p.speedup_low for p in pts]
            highs += [p.speedup_high for p in pts]
        left.set(xlabel=self.slider.description, ylabel=f"perplexity ({self.windows_text})", yscale="log")
        right.set(xlabel=self.slider.description, ylabel="speedup vs dense (IQR)",
                  ylim=(min(lows) * 0.95, max(highs) * 1.05))
        right.axhline(1.0, color="grey", lw=0.8)
        left.legend(fontsize=7)
        fig.tight_layout()
        plt.close(fig)
        return fig

    def _ipython_display_(self):
        display(self.widget)

    @property
    def text(self) -> str:
        """The labels as plain text (what a test or a log reads)."""
        import re

        return " | ".join(re.sub("<[^>]+>|&emsp;", "", w.value) for w in self.labels.values())
