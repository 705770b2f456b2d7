"""The live explorer: one slider, one method menu, the numbers, and a growing plot.

Every lesson uses the same ``Explorer``. You give it a model, a few evaluation
windows and a ``prune(model, method, amount) -> PruneHandle`` function; it
prunes from the original weights, measures, restores, and remembers the point:
- results are cached per (method, amount), so going back is instant;
- pruning always starts from the restored original (a failed prune is undone too);
- ``continuous_update=False``: a slider drag measures once, where you let go;
- an error is shown in the explorer's own output, never as a dead kernel.

Tests drive it without a browser by setting ``explorer.slider.value``.
"""
from __future__ import annotations

import traceback
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display

from ..core import metrics, timing


@dataclass(frozen=True)
class Point:
    """One measured setting."""

    method: str
    amount: float
    perplexity: float
    latency_ms: float
    speedup: float  # dense latency / pruned latency, measured side by side
    parameters: int
    sparsity: float

    def as_dict(self) -> dict:
        return asdict(self)


class Explorer:
    """Slider + method dropdown + labels + accumulating plot, over any pruning function."""

    def __init__(self, model, eval_windows: torch.Tensor,
                 prune: Callable[[object, str, float], object],
                 methods: Sequence[str] = ("magnitude",),
                 amount_label: str = "sparsity", amount_min: float = 0.0,
                 amount_max: float = 0.9, step: float = 0.1, value: float | None = None,
                 latency_tokens: int = 64, latency_runs: int = 3, title: str = ""):
        self.model = model
        self.eval_windows = eval_windows
        self.prune = prune
        self.latency_tokens, self.latency_runs = latency_tokens, latency_runs
        self.title = title or f"{amount_label} explorer"
        self.cache: dict[tuple[str, float], Point] = {}
        self.errors: list[str] = []
        self.measurements = 0  # how many settings were really computed (not from the cache)
        self._original = self._fingerprint()

        self.slider = widgets.FloatSlider(
            value=amount_min if value is None else value, min=amount_min, max=amount_max,
            step=step, description=amount_label, continuous_update=False, readout_format=".2f",
            style={"description_width": "initial"}, layout=widgets.Layout(width="420px"))
        self.method = widgets.Dropdown(options=list(methods), value=methods[0], description="method",
                                       disabled=len(methods) == 1)
        self.labels = {key: widgets.HTML() for key in
                       ("perplexity", "latency", "speedup", "parameters", "status")}
        self.plot_output = widgets.Output()
        self.error_output = widgets.Output()
        self.slider.observe(self._on_change, names="value")
        self.method.observe(self._on_change, names="value")
        self.widget = widgets.VBox([
            widgets.HTML(f"<b>{self.title}</b>"),
            widgets.HBox([self.slider, self.method]),
            widgets.HBox(list(self.labels.values())[:-1]),
            self.labels["status"], self.error_output, self.plot_output])
        self.update()

    # -- measuring -----------------------------------------------------------------
    def _measure(self, method: str, amount: float) -> Point:
        handle = self.prune(self.model, method, amount) if amount > 0 else None
        try:
            ppl = metrics.perplexity(self.model, self.eval_windows, batch_size=len(self.eval_windows))
            workloads = timing.prefill_workloads({"pruned": self.model}, tokens=self.latency_tokens)
            latency = timing.time_call(workloads["pruned"], runs=self.latency_runs, warmup=1,
                                       device=next(self.model.parameters()).device.type)
            counts = metrics.count_parameters(self.model)
            sparsity = metrics.total_sparsity(self.model)
        finally:
            if handle is not None:
                handle.restore()  # the next point starts from the original weights
        dense = self.cache.get(("dense", 0.0))
        speedup = dense.latency_ms / latency.median_ms if dense else 1.0
        return Point(method, amount, ppl, latency.median_ms, speedup, counts["total"], sparsity)

    def point(self, method: str, amount: float) -> Point:
        """The measured point for a setting, from the cache when visited before."""
        amount = round(float(amount), 4)
        key = ("dense", 0.0) if amount == 0 else (method, amount)
        if key not in self.cache:
            self.cache[key] = self._measure(key[0], amount)
            self.measurements += 1
        return self.cache[key]

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
            self.point("dense", 0.0)  # the baseline every ratio refers to
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
        self.labels["perplexity"].value = f"perplexity <b>{p.perplexity:.2f}</b>&emsp;"
        self.labels["latency"].value = f"latency <b>{p.latency_ms:.1f} ms</b>&emsp;"
        self.labels["speedup"].value = f"speedup <b>{p.speedup:.2f}x</b>&emsp;"
        self.labels["parameters"].value = f"parameters <b>{p.parameters / 1e6:.2f} M</b>"
        self.labels["status"].value = (f"{p.method} at {p.amount:.2f}: achieved sparsity "
                                       f"{p.sparsity:.1%}; {len(self.cache)} points cached")
        # Written into the widget's own state (not through `with output:` capture,
        # which needs a live front end): the figure never leaks into the cell.
        self.plot_output.outputs = ()
        self.plot_output.append_display_data(self.figure())

    def figure(self):
        """Perplexity and speedup of every visited point, one line per method."""
        fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.6))
        dense = self.cache.get(("dense", 0.0))
        for method in self.method.options:
            pts = sorted((p for (m, _), p in self.cache.items() if m == method), key=lambda p: p.amount)
            if dense:
                pts = [dense] + pts
            left.plot([p.amount for p in pts], [p.perplexity for p in pts], "o-", label=method)
            right.plot([p.amount for p in pts], [p.speedup for p in pts], "o-", label=method)
        left.set(xlabel=self.slider.description, ylabel="perplexity", yscale="log")
        right.set(xlabel=self.slider.description, ylabel="speedup vs dense")
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
