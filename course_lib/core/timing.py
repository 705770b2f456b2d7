"""The timer: honest latency numbers on CPU and GPU.

Three habits make a latency figure worth quoting, and this module has all three:
1. warm-up runs first (lazy initialisation, caches, allocator growth);
2. many runs, reported as median and spread (IQR), with the run count;
3. on a GPU, *CUDA events* and a synchronisation: kernels run asynchronously,
   so a CPU clock read right after ``model(x)`` measures only the launch.

Comparisons are made side by side in one run (``time_side_by_side`` interleaves
the candidates), because a laptop's speed drifts: ratios are trustworthy,
bare milliseconds much less so.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from transformers import DynamicCache

from .cancel import checkpoint


@dataclass(frozen=True)
class Measurement:
    """Latency statistics of one workload, in milliseconds."""

    label: str
    median_ms: float
    iqr_ms: float
    runs: int
    device: str
    threads: int
    times_ms: tuple[float, ...] = field(repr=False, default=())

    @classmethod
    def from_times(cls, label: str, times_s, device: str, threads: int, per: int = 1):
        """Statistics of raw run times (seconds); ``per`` divides each run (per-token figures)."""
        ms = np.asarray(times_s, dtype=np.float64) * 1e3 / per
        q25, q50, q75 = np.percentile(ms, [25, 50, 75])
        return cls(label, float(q50), float(q75 - q25), len(ms), device, threads,
                   tuple(float(t) for t in ms))

    def ratio_to(self, baseline: "Measurement") -> float:
        """self / baseline of the medians (below 1: faster than the baseline)."""
        return self.median_ms / baseline.median_ms

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("times_ms")
        return out

    def __str__(self) -> str:
        return (f"{self.label}: {self.median_ms:.2f} ms median, IQR {self.iqr_ms:.2f} ms, "
                f"{self.runs} runs on {self.device} ({self.threads} threads)")


@dataclass(frozen=True)
class Speedup:
    """How much faster ``other`` ran than ``baseline``, decided against the noise.

    The two were timed interleaved, run by run, so run i of each saw the same
    machine state: the ratio of run i (baseline / other) is one paired sample.
    ``low`` and ``high`` are the 25th and 75th percentiles of those paired ratios.
    The verdict is ``faster`` only when even ``low`` is above 1, ``slower`` only
    when even ``high`` is below 1, and otherwise ``within noise``: a ratio inside
    the spread is not called an effect.
    """

    median: float
    low: float
    high: float
    runs: int

    @property
    def verdict(self) -> str:
        if self.low > 1:
            return "faster"
        if self.high < 1:
            return "slower"
        return "within noise"

    def rules_out(self, bound: float) -> bool:
        """Not faster, and the paired runs exclude a speedup above ``bound``: even their upper
        quartile is below it. A wide spread (a loaded machine) rules out nothing."""
        return self.verdict != "faster" and self.high < bound

    def __str__(self) -> str:
        return (f"{self.median:.2f}x (paired runs' IQR {self.low:.2f}x-{self.high:.2f}x, "
                f"{self.runs} runs): {self.verdict}")


# A "not faster" claim must say what it rules out: the upper quartile of the paired ratios
# stays below this bound. A quarter faster is a speedup anyone would notice; a measurement
# whose spread reaches beyond it (a noisy machine, too few runs) cannot say "not faster".
NOT_FASTER_BOUND = 1.25


def speedup(baseline: Measurement, other: Measurement) -> Speedup:
    """Paired speedup of ``other`` over ``baseline`` (both from one interleaved timing call)."""
    if len(baseline.times_ms) != len(other.times_ms) or not baseline.times_ms:
        raise ValueError(f"{baseline.label!r} and {other.label!r} were not timed side by side "
                         f"({len(baseline.times_ms)} vs {len(other.times_ms)} runs): time them in "
                         "one call (timing.time_side_by_side or compare_prefill).")
    ratios = np.asarray(baseline.times_ms) / np.asarray(other.times_ms)
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return Speedup(float(q50), float(q25), float(q75), len(ratios))


def check_device(device: str) -> str:
    """'cpu' or 'cuda'; asking for CUDA without a GPU is an error, never a silent CPU number."""
    device = str(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"CUDA timing was requested (device='{device}') but torch sees no CUDA GPU. "
                "Time on device='cpu', or run on a machine with a GPU and a CUDA build of torch."
            )
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"device='{device}': torch sees {torch.cuda.device_count()} CUDA "
                             f"GPU(s); use one of cuda:0...cuda:{torch.cuda.device_count() - 1}.")
        return device
    if device != "cpu":
        raise ValueError(f"device='{device}': use 'cpu' or 'cuda'.")
    return device


@contextmanager
def thread_count(threads: int | None):
    """Fix torch's CPU thread count for the duration (None keeps the current one)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


class _Clock:
    """Times one call: CUDA events on a GPU, ``perf_counter`` on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        # the GPU the work runs on (cuda:1 is not cuda:0): events and syncs belong there
        self.device = torch.device(device) if self.cuda else None

    def time(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            with torch.cuda.device(self.device):  # events record on this GPU's current stream
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(self.device)  # nothing earlier may leak into this run
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(self.device)  # wait for the kernels, not just their launch
                return start.elapsed_time(end) / 1e3
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin


class Interleaved:
    """``time_side_by_side`` one round at a time, for a caller that decides when to stop.

    ``round()`` runs every workload once, in the alternating order (A, B, then B, A, ...);
    ``round(timed=False)`` is a warm-up. ``measurements()`` gives what ``time_side_by_side``
    would return for the timed rounds so far, and ``ratios(a, b)`` the paired ratios
    (a's time / b's time) run by run. The live explorer times this way: it shows the
    interval after every round and stops once the verdict is decided.
    """

    def __init__(self, fns: dict[str, Callable[[], object]], device: str = "cpu",
                 threads: int | None = 2, setup: dict[str, Callable[[], object]] | None = None,
                 per: int = 1):
        self.device = check_device(device)
        self.fns, self.setup, self.per = dict(fns), setup or {}, per
        self.threads = None if self.device.startswith("cuda") else threads
        self.clock = _Clock(self.device)
        self.times: dict[str, list[float]] = {label: [] for label in self.fns}
        self.rounds = 0  # every round so far, warm-ups included: it sets the order
        self.used_threads = torch.get_num_threads()

    def round(self, timed: bool = True) -> None:
        """Every workload once; between two of them the round may be stopped (``cancel.checkpoint``),
        and then none of its times is kept."""
        took = {}
        with thread_count(self.threads) as used, torch.inference_mode():
            self.used_threads = used
            order = list(self.fns.items())
            for i, (label, fn) in enumerate(order if self.rounds % 2 == 0 else order[::-1]):
                if i:
                    checkpoint()
                if label in self.setup:
                    self.setup[label]()
                took[label] = self.clock.time(fn)
        self.rounds += 1
        if timed:
            for label, elapsed in took.items():
                self.times[label].append(elapsed)

    @property
    def runs(self) -> int:
        """Timed rounds so far."""
        return len(next(iter(self.times.values()), []))

    def measurements(self) -> dict[str, Measurement]:
        return {label: Measurement.from_times(label, t, self.device, self.used_threads, self.per)
                for label, t in self.times.items()}

    def ratios(self, a: str, b: str) -> list[float]:
        """Run by run: a's time / b's time (above 1: b was faster in that run)."""
        return [ta / tb for ta, tb in zip(self.times[a], self.times[b])]


def time_side_by_side(fns: dict[str, Callable[[], object]], device: str = "cpu",
                      warmup: int = 2, runs: int = 10, threads: int | None = 2,
                      setup: dict[str, Callable[[], object]] | None = None,
                      per: int = 1) -> dict[str, Measurement]:
    """Time several workloads, interleaved run by run (A, B, then B, A, ...).

    Interleaving spreads any drift of the machine (turbo, other processes)
    evenly over the candidates, so their *ratio* is fair; the order is reversed
    every other round, so no candidate always runs first (on a cooler cache, or
    right after the other's allocations). Run i of every candidate still comes
    from round i: ``speedup`` pairs them. ``setup[label]`` runs untimed before
    each timed run (e.g. a fresh KV cache).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs={runs}, warmup={warmup}: need runs >= 1 and warmup >= 0.")
    rounds = Interleaved(fns, device, threads, setup, per)
    for i in range(warmup + runs):
        rounds.round(timed=i >= warmup)
    return rounds.measurements()


def time_call(fn: Callable[[], object], label: str = "call", **kwargs) -> Measurement:
    """Latency of one workload (see ``time_side_by_side`` for the arguments)."""
    return time_side_by_side({label: fn}, **kwargs)[label]


def _model_device(model) -> str:
    """'cpu', 'cuda' or 'cuda:1': the index matters, timing syncs that GPU."""
    device = next(model.parameters()).device
    return device.type if device.index is None else f"{device.type}:{device.index}"


def _token_batch(model, batch: int, tokens: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, tokens), generator=generator)
    return ids.to(next(model.parameters()).device)


def prefill_workloads(models: dict, batch: int = 1, tokens: int = 128) -> dict[str, Callable]:
    """One full forward over ``batch x tokens`` (no cache) per model: the prefill."""
    out = {}
    for label, model in models.items():
        ids = _token_batch(model, batch, tokens)
        out[label] = (lambda m=model, x=ids: m(x, use_cache=False))
    return out


def prefill_latency(model, batch: int = 1, tokens: int = 128, **kwargs) -> Measurement:
    """Latency of one prefill of ``batch x tokens`` tokens."""
    kwargs.setdefault("device", _model_device(model))
    return time_call(prefill_workloads({"prefill": model}, batch, tokens)["prefill"],
                     label=f"prefill {batch}x{tokens}", **kwargs)


def compare_prefill(models: dict, batch: int = 1, tokens: int = 128, **kwargs) -> dict[str, Measurement]:
    """Prefill latency of several models (dense, pruned...) measured side by side."""
    first = next(iter(models.values()))
    kwargs.setdefault("device", _model_device(first))
    return time_side_by_side(prefill_workloads(models, batch, tokens), **kwargs)


def decode_latency(model, context: int = 64, new_tokens: int = 16, **kwargs) -> Measurement:
    """Per-token latency of greedy decoding with the KV cache, after a ``context``-token prompt.

    Each run starts from a fresh cache filled by an untimed prefill, then times
    ``new_tokens`` single-token steps; the figure is per token.
    """
    kwargs.setdefault("device", _model_device(model))
    prompt = _token_batch(model, 1, context)
    state = {}

    def prefill():
        state["cache"] = DynamicCache(config=model.config)  # filled in place by each call
        out = model(prompt, cache=state["cache"], use_cache=True)
        state["next"] = out.logits[:, -1:].argmax(-1)

    def decode():
        token = state["next"]
        for _ in range(new_tokens):
            out = model(token, cache=state["cache"], use_cache=True)
            token = out.logits[:, -1:].argmax(-1)

    return time_side_by_side({"decode": decode}, setup={"decode": prefill}, per=new_tokens,
                             **kwargs)["decode"]
