"""Time the presenter's explorers against the live budget: first number, verdict, cancel, cache.

    python bench/explorer_budget.py [--model smollm2-135m] [--tabs 01,05] [--methods magnitude,sparsegpt]

Run it on a quiet machine: the budgets are for 2 cores with nothing else running. Every
figure is taken through the widgets, as the room drives them (measurements in the
background, the explorer's own trace of what happened when):
- first number: from moving the slider to a new point until its perplexity is on screen;
- verdict: from that first number until the timing has decided (or spent its run budget
  and says "within noise" with its interval);
- cancel: the slider moved on while a new point is being measured (once while it prunes,
  once while it is timed): until the stale measurement has stopped and restored the
  weights; the weights are then checked against the original and the cache for the
  stale point;
- cached: the slider away and back to a point seen before, labels and plot included;
- from disk: the same point in a fresh session (what ``make run``'s ``--prepare`` gives
  SparseGPT). Every new point here starts from an empty cache: never seen before.
Prints a markdown table, each figure against its budget.
"""
from __future__ import annotations

import os

# as `make present` runs (presenter.server_env): idle torch threads sleep, so the thread that
# moves the slider gets a core while a measurement runs (set before torch is imported)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from course_lib.teaching import presenter  # noqa: E402

BUDGET_FIRST = {"magnitude": 2.0, "random": 2.0, "wanda": 10.0, "sparsegpt": 10.0}  # s; else 1 s
BUDGET_VERDICT = 6.0  # s after the first number
BUDGET_CANCEL = 0.5  # s
BUDGET_CACHED_MS = 50.0


def when(explorer, event: str, key, after: float, timeout: float = 600.0) -> float:
    """The time of the first ``event`` for ``key`` at or after ``after`` (waits for it)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        for t, e, k in list(explorer.trace):
            if e == event and k == key and t >= after:
                return t
        time.sleep(0.002)
    recent = [(round(t - after, 2), e, k) for t, e, k in list(explorer.trace)[-8:]]
    raise TimeoutError(f"{explorer.title}: no {event!r} for {key} within {timeout:.0f} s; last events "
                       f"(seconds after the wait began): {recent}")


def phase_at(explorer, key, moment: float) -> str:
    """What the measurement of ``key`` was doing at ``moment``: pruning, perplexity or timing."""
    last = [e for t, e, k in list(explorer.trace) if k == key and t <= moment]
    return {"prune": "pruning", "first number": "timing", "round": "timing"}.get(last[-1] if last else "",
                                                                                "waiting")


def cancel_once(explorer, method: str, amounts, during: str) -> tuple[float, str]:
    """Start a new point, move the slider away while it prunes or is timed; seconds until restored."""
    for amount in amounts:
        key = explorer.key(method, amount)
        if key in explorer.cache:
            continue  # finished before the slider moved (below): try the next setting
        started = time.perf_counter()
        explorer.slider.value = amount
        when(explorer, "prune" if during == "pruning" else "round", key, started)
        moved = time.perf_counter()
        phase = phase_at(explorer, key, moved)
        explorer.slider.value = 0.0  # the dense point: cached, shown at once
        if key in explorer.cache:
            continue
        stopped = when(explorer, "cancelled", key, moved)
        assert key not in explorer.cache, f"the cancelled point {key} entered the cache"
        assert explorer._fingerprint() == explorer._original, "the weights were not restored"
        return stopped - moved, phase
    return float("nan"), "every point finished before the slider moved"


def measure(explorer, method: str) -> dict:
    grid = explorer.grid
    amount, others = grid[len(grid) // 2], grid[len(grid) // 2 + 1:] + grid[1:len(grid) // 2]
    explorer.method.value = method
    explorer.slider.value = 0.0
    explorer.wait()
    key = explorer.key(method, amount)
    moved = time.perf_counter()
    explorer.slider.value = amount
    first = when(explorer, "first number", key, moved)
    point = explorer.wait()
    done = when(explorer, "done", key, moved)
    cached = []
    for _ in range(5):  # away and back: every return is a cache hit with a redraw
        explorer.slider.value = 0.0
        started = time.perf_counter()
        explorer.slider.value = amount
        cached.append((time.perf_counter() - started) * 1e3)
    cancels = [cancel_once(explorer, method, others, during) for during in ("pruning", "timing")]
    explorer.wait()
    return {"amount": amount, "first": first - moved, "verdict_after": done - first, "point": point,
            "cached_ms": statistics.median(cached), "cancels": cancels}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=presenter.MODEL)
    parser.add_argument("--tabs", default=None, help="comma-separated tab keys (default: all)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    args = parser.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="explorer-cache-")
    d = presenter.Dashboard(args.model, cache_dir=cache)
    tabs = args.tabs.split(",") if args.tabs else list(d.sections)
    wanted = set(args.methods.split(",")) if args.methods else None
    rows = []
    for key in tabs:
        explorer = d.open(key)
        for method in d.sections[key].methods:
            if wanted is None or method in wanted:
                rows.append((key, method, measure(explorer, method)))
    fresh = presenter.Dashboard(args.model, cache_dir=cache, model=d.model, tokenizer=d.tokenizer)
    disk = {}
    for key, method, row in rows:
        explorer = fresh.open(key)
        before = explorer.measurements
        started = time.perf_counter()
        explorer.point(method, row["amount"])
        disk[key, method] = (time.perf_counter() - started) * 1e3
        assert explorer.measurements == before, "the disk cache was missed"

    def mark(value, budget):
        return f"{value:.2f} {'✓' if value <= budget else '✗'}"

    print(f"{args.model}, perplexity on {presenter.N_EVAL}x{presenter.SEQ_LEN} tokens, latency over "
          f"{presenter.LATENCY_TOKENS} tokens, at most {presenter.LATENCY_RUNS} paired runs or "
          f"{presenter.LATENCY_SECONDS:g} s, {presenter.THREADS} threads. Budgets: first number 1 s "
          f"(magnitude, random 2 s; Wanda, SparseGPT 10 s), verdict {BUDGET_VERDICT:g} s after it, "
          f"cancel {BUDGET_CANCEL:g} s, cached {BUDGET_CACHED_MS:g} ms.\n")
    print("| tab | method | amount | first number (s) | verdict after (s) | verdict [interval], runs | "
          "cancel while pruning (s) | cancel while timing (s) | cached, slider + redraw (ms) | "
          "from disk, new session (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, method, row in rows:
        p = row["point"]
        cancels = " | ".join(f"{mark(seconds, BUDGET_CANCEL)} ({phase})" for seconds, phase in row["cancels"])
        print(f"| {key} | {method} | {row['amount']:.2f} | "
              f"{mark(row['first'], BUDGET_FIRST.get(method, 1.0))} | "
              f"{mark(row['verdict_after'], BUDGET_VERDICT)} | {p.speedup:.2f}x {p.verdict} "
              f"[{p.interval_low:.2f}-{p.interval_high:.2f}], {p.runs} | {cancels} | "
              f"{row['cached_ms']:.0f} {'✓' if row['cached_ms'] <= BUDGET_CACHED_MS else '✗'} | "
              f"{disk[key, method]:.1f} |")


if __name__ == "__main__":
    main()
