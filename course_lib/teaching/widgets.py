"""The live explorer: one slider, one method menu, the numbers, and a growing plot.

Every lesson uses the same ``Explorer``. You give it a model, a few evaluation
windows and a ``prune(model, method, amount) -> PruneHandle`` function; it
prunes from the original weights, measures, restores, and remembers the point.

A new point answers at once, then sharpens while you watch:
1. its perplexity is shown as soon as it is known (the prune and one forward pass);
2. its latency is timed beside the dense model, the two *interleaved run by run*
   (``timing.Interleaved``), and after every paired run the labels and the plot's
   error bar show the interval of the median speedup so far (``stats.median_interval``:
   valid however often it is looked at), narrowing as the runs come in, with a small
   progress bar of the runs;
3. the timing stops as soon as that interval clears 1 (a decided verdict: faster or
   slower), or when the run budget (``latency_runs``, ``latency_seconds``) ends: then
   the verdict is "within noise", shown with its interval. Two-sided, with ``ideal=``
   (e.g. ``speed.flops_ideal``, the FLOPs ratio: 1.0 for zeros, which a dense kernel
   multiplies too): a speedup whose whole interval lies beyond the ideal times
   ``speed.PLAUSIBLE_MARGIN`` is an error of the measurement, never a verdict; the
   timing goes on to the end of its budget and, if it stays there, says so ("beyond
   its ideal: re-measure").
Moving the slider again stops the stale measurement at its next checkpoint
(``core.cancel``): a prune half done undoes itself, the point's handle restores the
weights bit for bit, and nothing of the stale point enters the cache.

- The slider's grid holds every point you ask for (``grid=``) and the start value.
- Every point shows how its latency was measured, in one line (``Point.timing_line``):
  how many paired runs, their spread (the IQR of the paired ratios) and the interval.
- ``also_on={"code": windows}`` measures each point's perplexity on other texts
  too (``point.other_perplexity``), from the same pruned weights: no second prune.
- ``seed(method, amount, perplexity, other_perplexity)`` hands over a point a lesson
  measured itself: shown at once, never pruned again for its perplexity; its latency
  is timed the first time the slider lands on it.
- Results are cached per (method, amount) in memory, and on disk when given a
  ``cache_dir`` (keyed by the model's weights, the explorer, the method, the amount,
  the evaluation windows, the timing budget and ``settings``: whatever else decides
  the result, such as the calibration windows), so a second session reuses them.
- ``precompute()`` measures the whole grid in a background thread behind a progress
  bar; a point the room asks for stops it and goes first.
- Several explorers may share one model (the presenter's tabs): one measurement at a
  time, and a request from the room goes before any stoppable one.
- ``continuous_update=False``: a slider drag measures once, where you let go.
- An error is shown in the explorer's own output, never as a dead kernel.

Tests drive it without a browser by setting ``explorer.slider.value`` and then calling
``explorer.wait()``; with ``background=False`` every change is measured before the
setter returns.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import threading
import time
import traceback
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence

import ipywidgets as widgets
import torch
from IPython.display import Image, display
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..core import arch, metrics, models, stats, timing
from ..core.cancel import Cancelled, checkpoint, checkpoints_inside, stop_when
from ..runtime import speed

SPEED_AXIS = (0.5, 1.5)  # the speed axis shows at least this range, so noise looks like noise
DENSE_RUNS = 3  # the dense point times the dense model alone, for its latency label
REDRAW_EVERY_S = 1.0  # while timing, the plot is redrawn at most this often (a redraw costs ~0.2 s)
CACHE_VERSION = 2  # in every disk key: points of an older layout are measured again
_GATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # one gate per shared model
_DRAWING = threading.Lock()  # matplotlib's text rendering is not thread-safe: one figure at a time


class _Gate:
    """One model, several explorers, one measurement at a time: who may prune it now.

    A measurement holds ``lock`` while the model is pruned. A request from the room (a
    slider, a lesson's call) counts itself in ``waiting`` until it holds the lock; a
    stoppable measurement (a slider's, the background precompute's) gives way at its
    next checkpoint as soon as ``waiting`` is above 0, and starts again later.
    """

    def __init__(self):
        self.lock = threading.RLock()
        self.waiting = 0  # requests from the room queued for the lock
        self._count = threading.Lock()

    def wait_for_foreground(self) -> None:
        while self.waiting:
            time.sleep(0.02)

    @contextmanager
    def hold(self, foreground: bool):
        """The lock; ``foreground``: jump the queue (stoppable holders give way)."""
        if foreground:
            with self._count:
                self.waiting += 1
            try:
                self.lock.acquire()
            finally:
                with self._count:
                    self.waiting -= 1
        else:
            while True:  # behind every request from the room, also one arriving meanwhile
                self.wait_for_foreground()
                self.lock.acquire()
                if not self.waiting:
                    break
                self.lock.release()
        try:
            yield
        finally:
            self.lock.release()


@contextmanager
def exclusive(model):
    """Hold ``model`` as a measurement does (no explorer prunes it meanwhile), jumping the queue:
    for work on the original weights outside an explorer (scores, a copy)."""
    with _GATES.setdefault(model, _Gate()).hold(foreground=True):
        yield model


EXPLORER_CACHE_ENV = "COURSE_EXPLORER_CACHE"


def default_cache_dir() -> Path:
    """Where explorers keep measured points between sessions: ``$COURSE_EXPLORER_CACHE`` if set
    (a session that must measure every point anew, e.g. a timing test), else ``explorer/`` in
    ``$COURSE_CACHE`` (default ``~/.cache/pruning-course``)."""
    if os.environ.get(EXPLORER_CACHE_ENV):
        return Path(os.environ[EXPLORER_CACHE_ENV])
    return Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "pruning-course")) / "explorer"


def digest(*tensors: torch.Tensor, text: str = "") -> str:
    """A short fingerprint of some tensors' contents (and a text): part of a disk-cache key."""
    h = hashlib.sha256(text.encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def grid_step(values: Sequence[float], step: float, start: float = 0.0) -> float:
    """The largest step from ``start`` whose grid holds every value (and divides ``step``).

    ``grid_step([0.3, 0.5, 0.7], 0.2)`` is 0.1: a step of 0.2 from 0 would never
    reach 0.3. Steps like 1/9 (heads of a 9-head layer) are kept exact.
    """
    fractions = [Fraction(float(step)).limit_denominator(1000)]
    fractions += [Fraction(float(v) - float(start)).limit_denominator(1000) for v in values]
    g = Fraction(0)
    for f in fractions:  # gcd of rationals: gcd of numerators / lcm of denominators
        g = f if g == 0 else Fraction(math.gcd(g.numerator * f.denominator, f.numerator * g.denominator),
                                      g.denominator * f.denominator)
    return float(abs(g)) if g else float(step)


@dataclass(frozen=True)
class Point:
    """One setting and what was measured of it.

    The speedup is dense latency / pruned latency, paired run by run in one interleaved
    timing: ``speedup`` is the median of the paired ratios, ``speedup_low``/``speedup_high``
    their spread (the IQR), ``interval_low``/``interval_high`` the interval of the median
    (``stats.median_interval``; while ``decidable`` is False, too few runs exist for one and
    it is the range of the runs). ``runs == 0``: the latency is not measured yet (a point
    being measured, or one a lesson seeded).
    """

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
    interval_low: float = 1.0
    interval_high: float = 1.0
    decidable: bool = False
    tokens: int = 0  # the prefill length timed
    ideal: float = 0.0  # the most the speedup can be (the explorer's ``ideal``); 0: not checked

    @property
    def timed(self) -> bool:
        return self.runs > 0

    @property
    def verdict(self) -> str:
        if self.method == "dense":
            return "the reference"
        if not self.timed:
            return "not timed yet"
        if self.decidable and self.interval_low > 1:
            if self.ideal and not speed.plausible(self.interval_low, self.ideal):
                return f"beyond its ideal {self.ideal:.2f}x: re-measure"  # physics allows no more
            return "faster"
        if self.decidable and self.interval_high < 1:
            return "slower"
        return "within noise"

    @property
    def decided(self) -> bool:
        return self.verdict in ("faster", "slower")

    def timing_line(self) -> str:
        """How the latency was measured, in one line a student can read."""
        if self.method == "dense":
            return (f"latency: {self.latency_ms:.1f} ms, the median of {self.runs} runs over "
                    f"{self.tokens} tokens: the reference every point is timed against")
        if not self.timed:
            return "latency: not timed yet"
        what = "interval of the median" if self.decidable else "range (too few runs for an interval)"
        return (f"latency: {self.runs} paired runs over {self.tokens} tokens, dense and pruned "
                f"interleaved; speedup {self.speedup:.2f}x, spread {self.speedup_low:.2f}x-"
                f"{self.speedup_high:.2f}x (IQR), {what} {self.interval_low:.2f}x-"
                f"{self.interval_high:.2f}x: {self.verdict}")

    def as_dict(self) -> dict:
        return asdict(self)


class _Job:
    """One slider request being measured in the background."""

    def __init__(self, key: tuple[str, float]):
        self.key = key
        self.stop = threading.Event()  # set when the slider moves on
        self.thread: threading.Thread | None = None


class Explorer:
    """Slider + method dropdown + labels + accumulating plot, over any pruning function."""

    def __init__(self, model, eval_windows: torch.Tensor,
                 prune: Callable[[object, str, float], object],
                 methods: Sequence[str] = ("magnitude",),
                 amount_label: str = "sparsity", amount_min: float = 0.0,
                 amount_max: float = 0.9, step: float = 0.1, value: float | None = None,
                 latency_tokens: int = 64, latency_runs: int = 12, title: str = "",
                 grid: Sequence[float] = (), cache_dir: str | Path | None = None,
                 model_name: str = "", dense_model=None, also_on: dict | None = None,
                 latency_seconds: float = 6.0, settings=None, background: bool = True,
                 ideal: Callable[[object, object], float] | None = None):
        if isinstance(latency_runs, bool) or not isinstance(latency_runs, int) or latency_runs < 1:
            raise ValueError(f"latency_runs={latency_runs!r}: give the most paired runs a point may "
                             "take, a whole number >= 1 (6 or more can decide a verdict).")
        self.model = model
        models.own_memory(model)  # the first prune writes the weights: no copy-on-write faults then
        self.eval_windows = eval_windows
        self.also_on = dict(also_on or {})
        self.prune = prune
        self.latency_tokens, self.latency_runs = latency_tokens, latency_runs
        self.latency_seconds = latency_seconds
        self.settings = settings
        self.background = background
        self.ideal = ideal  # (dense, pruned) -> the most a speedup can be: a verdict beyond it is an error
        self.title = title or f"{amount_label} explorer"
        self.cache: dict[tuple[str, float], Point] = {}
        self.errors: list[str] = []
        self.measurements = 0  # how many settings were really computed (not from the cache)
        self.disk_hits = 0  # how many came from the disk cache
        self.trace: deque = deque(maxlen=2000)  # (time.perf_counter(), event, key): what happened when
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.model_name = model_name
        self._dense_model = dense_model  # the untouched twin each point is timed against
        self._original = self._fingerprint()
        self._gate = _GATES.setdefault(model, _Gate())
        self._seeded: set[tuple[str, float]] = set()
        self._thread: threading.Thread | None = None
        self._job: _Job | None = None
        self._wanted: tuple[str, float] | None = None
        self._live: Point | None = None  # the point being measured for the slider
        self._drawn: tuple | None = None  # what the current plot shows
        self._drawn_at = 0.0

        start = amount_min if value is None else value
        step = grid_step(list(grid) + [start, amount_max], step, amount_min)
        self.slider = widgets.FloatSlider(
            value=start, min=amount_min, max=amount_max, step=step, description=amount_label,
            continuous_update=False, readout_format=".2f",
            style={"description_width": "initial"}, layout=widgets.Layout(width="420px"))
        self.method = widgets.Dropdown(options=list(methods), value=methods[0], description="method",
                                       disabled=len(methods) == 1)
        self.labels = {key: widgets.HTML() for key in
                       ("perplexity", "latency", "speedup", "parameters", "status", "timing")}
        self.timing_progress = widgets.IntProgress(value=0, min=0, max=latency_runs, description="timing",
                                                   layout=widgets.Layout(display="none"))
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="precomputing",
                                            layout=widgets.Layout(display="none"))
        self.plot_output = widgets.Output()
        self.error_output = widgets.Output()
        self.slider.observe(self._on_change, names="value")
        self.method.observe(self._on_change, names="value")
        self.widget = widgets.VBox([
            widgets.HTML(f"<b>{self.title}</b>"),
            widgets.HBox([self.slider, self.method]),
            widgets.HBox([self.labels[k] for k in ("perplexity", "latency", "speedup", "parameters")]),
            widgets.HBox([self.labels["status"], self.timing_progress]), self.labels["timing"],
            self.progress, self.error_output, self.plot_output])
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

    @staticmethod
    def key(method: str, amount: float) -> tuple[str, float]:
        """The cache key of a setting: amounts rounded to 4 places, every method's 0 is the dense model."""
        amount = round(float(amount), 4)
        return ("dense", 0.0) if amount == 0 else (method, amount)

    def _note(self, event: str, key) -> None:
        self.trace.append((time.perf_counter(), event, key))

    # -- measuring -----------------------------------------------------------------
    def dense_model(self):
        """The dense twin (a copy made once, or the one given): timed beside every point."""
        if self._dense_model is None:
            self._dense_model = copy.deepcopy(self.model)
        return self._dense_model

    def _measure(self, key, seed: Point | None, show: Callable[[Point], None]) -> Point:
        """Prune, show the perplexity, time run by run (showing each), restore. The caller holds the gate."""
        method, amount = key
        self.dense_model()  # the twin is copied now, while the model is still the original
        self._note("prune", key)
        handle = self.prune(self.model, method, amount) if amount > 0 else None
        try:
            checkpoint()
            if seed is not None:
                ppl, other = seed.perplexity, seed.other_perplexity
            else:
                ppl = metrics.perplexity(self.model, self.eval_windows, batch_size=len(self.eval_windows))
                other = {}
                for text, w in self.also_on.items():
                    checkpoint()
                    other[text] = metrics.perplexity(self.model, w, batch_size=len(w))
            checkpoint()
            ideal = self.ideal(self.dense_model(), self.model) if self.ideal and amount > 0 else 0.0
            partial = Point(method, amount, ppl, math.nan, math.nan, metrics.parameter_count(self.model),
                            metrics.total_sparsity(self.model), other_perplexity=other,
                            tokens=self.latency_tokens, ideal=ideal)
            self._note("first number", key)
            show(partial)
            point = self._time(partial, show)
        finally:
            if handle is not None:
                handle.restore()  # the next point starts from the original weights
                self._note("restored", key)
        return point

    def _time(self, partial: Point, show: Callable[[Point], None]) -> Point:
        """Dense and pruned interleaved, one paired run at a time, until the verdict is decided
        or the budget (``latency_runs`` runs, ``latency_seconds`` seconds) is spent."""
        device = next(self.model.parameters()).device.type
        dense = partial.method == "dense"
        pair = {"dense": self.model} if dense else {"dense": self.dense_model(), "pruned": self.model}
        rounds = timing.Interleaved(timing.prefill_workloads(pair, tokens=self.latency_tokens),
                                    device=device, threads=torch.get_num_threads())
        most = min(DENSE_RUNS, self.latency_runs) if dense else self.latency_runs
        started = time.perf_counter()
        layers = [layer for model in pair.values() for layer in arch.decoder_layers(model)]
        with checkpoints_inside(layers):  # a stale point stops within one layer of either forward
            rounds.round(timed=False)  # warm-up
            checkpoint()
            while True:
                begun = time.perf_counter()
                rounds.round()
                took = time.perf_counter() - begun
                checkpoint()
                point = self._timed(partial, rounds)
                self._note("round", (partial.method, partial.amount))
                show(point)
                if point.decided or rounds.runs >= most:
                    return point
                if time.perf_counter() - started + took > self.latency_seconds:
                    return point  # one more run would overrun the budget

    def _timed(self, partial: Point, rounds: "timing.Interleaved") -> Point:
        times = rounds.measurements()
        if partial.method == "dense":
            return replace(partial, latency_ms=times["dense"].median_ms, speedup=1.0, runs=rounds.runs,
                           dense_latency_ms=times["dense"].median_ms, decidable=True)
        spread = timing.speedup(times["dense"], times["pruned"])
        interval = stats.median_interval(rounds.ratios("dense", "pruned"), self.latency_runs)
        return replace(partial, latency_ms=times["pruned"].median_ms, speedup=spread.median,
                       speedup_low=spread.low, speedup_high=spread.high, runs=rounds.runs,
                       dense_latency_ms=times["dense"].median_ms, interval_low=interval.low,
                       interval_high=interval.high, decidable=interval.cut >= 0)

    def _disk_path(self, key: tuple[str, float]) -> Path | None:
        if self.cache_dir is None:
            return None
        texts = sorted(self.also_on.items())
        windows = digest(self.eval_windows, *(w for _, w in texts), text=" ".join(t for t, _ in texts))
        model = hashlib.sha256(repr(self._original).encode()).hexdigest()[:16]
        prune = getattr(self.prune, "__qualname__", type(self.prune).__name__)
        ident = json.dumps([CACHE_VERSION, self.model_name, model, self.title, prune, key[0], key[1],
                            windows, self.latency_tokens, self.latency_runs, self.latency_seconds,
                            self.settings], sort_keys=True, default=str)
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
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(point.as_dict()))
            tmp.replace(path)  # atomic: a second session never reads half a file

    def _settle(self, key, foreground: bool, time_seed: bool,
                show: Callable[[Point], None] = lambda p: None) -> Point:
        """The point for ``key``: from memory, from disk, or measured (under the gate)."""
        known = self.cache.get(key)
        if known is not None and (known.timed or not time_seed):
            return known
        stored = self._from_disk(key)
        if stored is not None:  # measured in an earlier session (a seed takes only its latency)
            self.disk_hits += 1
            self.cache[key] = stored if known is None else self._with_latency(known, stored)
            return self.cache[key]
        with self._gate.hold(foreground):
            known = self.cache.get(key)  # measured meanwhile (the background, another request)?
            if known is not None and (known.timed or not time_seed):
                return known
            point = self._measure(key, known, show)  # a seed's perplexity is kept, only timed
            self.measurements += 1
            self.cache[key] = point  # only now: a stopped measurement never gets here
            if key not in self._seeded:
                self._to_disk(key, point)  # a seeded perplexity is the lesson's, not this prune's
        return point

    def point(self, method: str, amount: float, background: bool = False) -> Point:
        """The measured point for a setting, from the cache when visited before.

        A point a lesson seeded comes back as it was seeded (its latency is timed when the
        slider lands on it). ``background=True`` (the precompute): wait for, and give way
        to, any request from the room; ``Cancelled`` is raised when it had to give way.
        """
        key = self.key(method, amount)
        if not background:
            return self._settle(key, foreground=True, time_seed=False)
        with stop_when(lambda: self._gate.waiting > 0):
            return self._settle(key, foreground=False, time_seed=True)

    def seed(self, method: str, amount: float, perplexity: float, other_perplexity: dict | None = None,
             parameters: int | None = None, sparsity: float | None = None) -> Point:
        """A point a lesson measured itself, handed over without pruning again for its perplexity.

        Shown at once when the slider lands on it (and drawn in the plot); its latency is
        timed then, which prunes once more (timing needs the pruned weights). Seeded points
        stay in this session's memory: the disk cache holds only what this explorer measured.
        """
        key = self.key(method, amount)
        if key[0] == "dense":
            raise ValueError(f"amount={amount}: the dense point is measured by the explorer itself; "
                             "seed a pruned setting (amount > 0).")
        other = dict(other_perplexity or {})
        missing = sorted(set(self.also_on) - set(other))
        if missing:
            raise ValueError(f"other_perplexity has no figure for {missing}: this explorer measures "
                             f"every point on {sorted(self.also_on)} too; give them all.")
        point = Point(key[0], key[1], float(perplexity), math.nan, math.nan,
                      -1 if parameters is None else parameters, math.nan if sparsity is None else sparsity,
                      other_perplexity=other, tokens=self.latency_tokens)
        known = self.cache.get(key)
        if known is not None and known.timed:  # timed before: its latency stays, the perplexity is the lesson's
            point = self._with_latency(point, known)
        self.cache[key] = point
        self._seeded.add(key)
        if self._wanted == key:
            self._show(point)
        self._redraw()
        return point

    @staticmethod
    def _with_latency(seed: Point, timed: Point) -> Point:
        """A seeded point's perplexity with the latency (and counts, where the seed has none) of a timed one."""
        return replace(timed, perplexity=seed.perplexity, other_perplexity=seed.other_perplexity,
                       parameters=timed.parameters if seed.parameters < 0 else seed.parameters,
                       sparsity=timed.sparsity if math.isnan(seed.sparsity) else seed.sparsity)

    def precompute(self, methods: Sequence[str] | None = None, amounts: Sequence[float] | None = None,
                   background: bool = True, progress: Callable[[int, int], None] | None = None):
        """Measure every (method, amount) of the grid, behind a visible progress bar.

        In a background thread by default (the widgets stay usable; a point the slider
        asks for meanwhile stops the one being measured, which is measured again after).
        Seeded points get their latency. Returns the thread (``.join()`` waits), or None
        when run in the foreground.
        """
        todo = [(m, a) for m in (methods or self.method.options)
                for a in (self.grid if amounts is None else amounts) if a > 0]
        todo = [("dense", 0.0)] + todo
        self.progress.max, self.progress.value = len(todo), 0
        self.progress.layout.display = None
        threads = torch.get_num_threads()

        def work():
            torch.set_num_threads(threads)  # per thread: a new thread may not inherit the count
            for i, (method, amount) in enumerate(todo):
                while True:
                    try:
                        self.point(method, amount, background=True)
                        break
                    except Cancelled:
                        continue  # gave way to the room: measured again once it is served
                    except Exception as err:  # shown like a slider error; the rest still runs
                        self.errors.append(f"{type(err).__name__}: {err}")
                        break
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
        self.request(self.method.value, self.slider.value)

    def request(self, method: str, amount: float) -> None:
        """What the slider does: show the setting, at once if known, else measured as it comes in.

        A measurement still running for an earlier setting is stopped (its weights restored,
        nothing of it cached). In the background by default; ``wait()`` waits for it.
        """
        key = self.key(method, amount)
        self._wanted = key
        self._note("request", key)
        if self._job is not None:
            self._job.stop.set()  # the stale one stops at its next checkpoint
        self.error_output.outputs = ()
        known = self.cache.get(key)
        if known is not None and known.timed:
            self._job, self._live = None, None
            self._show(known)
            return
        job = self._job = _Job(key)
        self._live = known  # a seeded point: its perplexity at once
        if known is not None:
            self._note("first number", key)
            self._show(known, final=False)
        else:
            self._show_pending(key)
        if not self.background:
            self._run(job)
            return
        threads = torch.get_num_threads()

        def run():
            torch.set_num_threads(threads)
            self._run(job)
        job.thread = threading.Thread(target=run, name=f"{self.title} {key}", daemon=True)
        job.thread.start()

    def _run(self, job: _Job) -> None:
        """Measure a slider request; give way when stopped, show the result if still wanted."""
        def show(point):
            if self._wanted == job.key and not job.stop.is_set():
                self._live = point
                self._show(point, final=False)

        foreground = True
        while True:
            try:
                with stop_when(lambda: job.stop.is_set() or self._gate.waiting > 0):
                    self.point("dense", 0.0)  # the plot's reference (there since the start)
                    point = self._settle(job.key, foreground, time_seed=True, show=show)
            except Cancelled:
                self._note("cancelled", job.key)
                if job.stop.is_set() or self._wanted != job.key:
                    return  # the slider moved on
                foreground = False  # another request went first: again, once it is served
                continue
            except Exception as err:  # shown in the explorer; the kernel and model stay usable
                if self._wanted == job.key:
                    self._live = None
                    self._show_error(err)
                return
            self._note("done", job.key)
            if self._wanted == job.key:
                self._live = None
                self._show(point)
            return

    def wait(self, timeout: float | None = None) -> Point | None:
        """Wait for the slider's current measurement; the point now shown (None after an error)."""
        job = self._job
        if job is not None and job.thread is not None:
            job.thread.join(timeout)
        return self.cache.get(self._wanted) if self._wanted else None

    def update(self) -> Point | None:
        """Measure (or recall) the current setting, here and now, and refresh labels and plot."""
        self.error_output.outputs = ()
        self._wanted = self.key(self.method.value, self.slider.value)
        try:
            self.point("dense", 0.0)  # the reference point of the plot
            current = self.point(self.method.value, self.slider.value)
        except Exception as err:  # shown in the explorer; the kernel and model stay usable
            self._show_error(err)
            return None
        self._show(current)
        return current

    def _show_error(self, err: Exception) -> None:
        self.errors.append(f"{type(err).__name__}: {err}")
        with self._gate.hold(foreground=True):  # not while another measurement has it pruned
            intact = self._fingerprint() == self._original
        advice = "" if intact else " The model was left changed: reload it."
        self.labels["status"].value = f"<span style='color:#b00'>error: {err}{advice}</span>"
        self.timing_progress.layout.display = "none"
        self.error_output.append_stderr("".join(
            traceback.format_exception(type(err), err, err.__traceback__, limit=2)))

    def _show_pending(self, key) -> None:
        self.labels["perplexity"].value = "perplexity <b>…</b>&emsp;"
        self.labels["latency"].value = "latency <b>…</b>&emsp;"
        self.labels["speedup"].value = "speedup <b>…</b>&emsp;"
        self.labels["parameters"].value = "parameters <b>…</b>"
        self.labels["status"].value = f"{key[0]} at {key[1]:.2f}: pruning…"
        self.labels["timing"].value = ""
        self.timing_progress.layout.display = "none"

    def _show(self, p: Point, final: bool = True) -> None:
        self.labels["perplexity"].value = (f"perplexity <b>{p.perplexity:.2f}</b> "
                                           f"<small>(on {self.windows_text})</small>&emsp;")
        if p.timed:
            self.labels["latency"].value = f"latency <b>{p.latency_ms:.1f} ms</b>&emsp;"
            self.labels["speedup"].value = (f"speedup <b>{p.speedup:.2f}x</b> "
                                            f"<small>[{p.interval_low:.2f}-{p.interval_high:.2f}, "
                                            f"{p.verdict}]</small>&emsp;")
        else:
            self.labels["latency"].value = "latency <b>…</b>&emsp;"
            self.labels["speedup"].value = "speedup <b>…</b>&emsp;"
        self.labels["parameters"].value = (f"parameters <b>{p.parameters / 1e6:.2f} M</b>"
                                           if p.parameters >= 0 else "parameters <b>…</b>")
        sparsity = f"achieved sparsity {p.sparsity:.1%}" if not math.isnan(p.sparsity) else "seeded"
        if final:
            state = f"{len(self.cache)} points cached" if p.timed else "latency not timed yet"
        elif p.timed:
            state = f"timing beside the dense model, run {p.runs} of at most {self.latency_runs}"
        else:
            state = "timing beside the dense model…"
        self.labels["status"].value = f"{p.method} at {p.amount:.2f}: {sparsity}; {state}"
        self.labels["timing"].value = f"<small>{p.timing_line()}</small>"
        measuring = not final
        self.timing_progress.value = p.runs if measuring else 0
        self.timing_progress.layout.display = None if measuring else "none"
        self._redraw(throttle=measuring and p.timed)

    def _current_live(self) -> Point | None:
        """The point being measured, if it is still the one the slider wants."""
        live = self._live
        return live if live is not None and self.key(live.method, live.amount) == self._wanted else None

    def _redraw(self, throttle: bool = False) -> None:
        live = self._current_live()
        drawn = (tuple(sorted((k, p.runs, p.interval_low, p.interval_high) for k, p in list(self.cache.items()))),
                 None if live is None else (live.method, live.amount, live.runs, live.interval_low,
                                            live.interval_high))
        if drawn == self._drawn:
            return  # a cached point: the plot already shows it (a redraw costs ~0.2 s)
        if throttle and time.perf_counter() - self._drawn_at < REDRAW_EVERY_S:
            return  # while timing: now and then, not after every run
        with _DRAWING:
            self._drawn, self._drawn_at = drawn, time.perf_counter()
            try:
                png = io.BytesIO()
                self.figure().savefig(png, format="png")
                # Written into the widget's own state (not through `with output:` capture,
                # which needs a live front end): the figure never leaks into the cell. A PNG,
                # not the Figure: a bare Figure displays as an image only where pyplot's
                # inline backend happened to be loaded (a Voila kernel that never drew
                # through pyplot showed "<Figure size ...>").
                self.plot_output.outputs = ()
                self.plot_output.append_display_data(Image(data=png.getvalue(), format="png"))
            except Exception:  # e.g. the lesson drew a figure in another thread meanwhile
                self._drawn = None  # the old plot stays; the next change draws again

    def figure(self) -> Figure:
        """Perplexity and speedup of every visited point (the one being timed too), one line per
        method; the speedup's error bars are its interval, narrowing as the runs come in."""
        fig = Figure(figsize=(7.5, 2.6))
        left, right = fig.subplots(1, 2)
        cache, live = dict(self.cache), self._current_live()
        dense = cache.get(("dense", 0.0))
        lows, highs = [SPEED_AXIS[0]], [SPEED_AXIS[1]]
        for method in self.method.options:
            pts = sorted((p for (m, _), p in cache.items() if m == method), key=lambda p: p.amount)
            if dense:
                pts = [dense] + pts
            if not pts:
                continue
            line = left.plot([p.amount for p in pts], [p.perplexity for p in pts], "o-", label=method)[0]
            timed = [p for p in pts if p.timed]
            if timed:
                self._speed_bars(right, timed, "o-", line.get_color(), method)
                lows += [p.interval_low for p in timed]
                highs += [p.interval_high for p in timed]
            if live is not None and live.method == method:
                left.plot([live.amount], [live.perplexity], "o", mfc="none", color=line.get_color())
                if live.timed:
                    self._speed_bars(right, [live], "o", line.get_color(), None, mfc="none")
                    lows.append(live.interval_low)
                    highs.append(live.interval_high)
        left.set(xlabel=self.slider.description, ylabel=f"perplexity ({self.windows_text})", yscale="log")
        # plain tick labels ("100", not mathtext's 10^2): matplotlib's mathtext parser is not
        # thread-safe, and a lesson may draw its own figures while the explorer measures
        left.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        left.yaxis.set_minor_formatter(NullFormatter())
        right.set(xlabel=self.slider.description, ylabel="speedup vs dense (interval)",
                  ylim=(min(lows) * 0.95, max(highs) * 1.05))
        right.axhline(1.0, color="grey", lw=0.8)
        left.legend(fontsize=7)
        fig.tight_layout()
        return fig

    @staticmethod
    def _speed_bars(ax, pts, fmt, color, label, **style) -> None:
        y = [p.speedup for p in pts]
        spread = [[max(p.speedup - p.interval_low, 0) for p in pts],
                  [max(p.interval_high - p.speedup, 0) for p in pts]]
        ax.errorbar([p.amount for p in pts], y, yerr=spread, fmt=fmt, capsize=3, color=color,
                    label=label, **style)

    def _ipython_display_(self):
        display(self.widget)

    @property
    def text(self) -> str:
        """The labels as plain text (what a test or a log reads)."""
        import re

        return " | ".join(re.sub("<[^>]+>|&emsp;", "", w.value) for w in self.labels.values())

    def __str__(self) -> str:
        return f"{self.title}: {self.text}"
