"""Time the presenter's explorers against the live budget (new point, cached point).

    python bench/explorer_budget.py [--model smollm2-135m]

For each tab and method: a new point (prune, perplexity, dense-vs-pruned timing,
restore), then the same point again from memory (slider moved back: labels and
plot redrawn), then from the disk cache in a fresh explorer. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from course_lib.teaching import presenter

BUDGET_NEW = {"wanda": 10.0, "sparsegpt": 10.0}  # seconds; everything else 3 s
BUDGET_CACHED_MS = 50.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=presenter.MODEL)
    args = parser.parse_args(argv)
    cache = tempfile.mkdtemp(prefix="explorer-cache-")
    d = presenter.Dashboard(args.model, cache_dir=cache)
    rows = []
    for key, section in d.sections.items():
        explorer = d.open(key)
        amount = explorer.grid[len(explorer.grid) // 2]
        for method in section.methods:
            started = time.perf_counter()
            point = explorer.point(method, amount)
            new_s = time.perf_counter() - started
            explorer.method.value = method
            explorer.slider.value = amount  # shown once
            cached = []
            for _ in range(5):  # away and back: every return is a cache hit with a redraw
                explorer.slider.value = explorer.grid[0]
                started = time.perf_counter()
                explorer.slider.value = amount
                cached.append((time.perf_counter() - started) * 1e3)
            lookup = []
            for _ in range(5):
                started = time.perf_counter()
                explorer.point(method, amount)
                lookup.append((time.perf_counter() - started) * 1e3)
            rows.append((key, method, amount, new_s, statistics.median(cached), statistics.median(lookup),
                         point.speedup, point.speedup_low, point.speedup_high))
    fresh = presenter.Dashboard(args.model, cache_dir=cache, model=d.model, tokenizer=d.tokenizer)
    disk = {}
    for key, section in fresh.sections.items():
        explorer = fresh.open(key)
        amount = explorer.grid[len(explorer.grid) // 2]
        for method in section.methods:
            started = time.perf_counter()
            explorer.point(method, amount)
            disk[key, method] = (time.perf_counter() - started) * 1e3
            assert explorer.measurements == 0, "the disk cache was missed"
    print(f"| tab | method | amount | new point (s) | budget | cached, slider + redraw (ms) | "
          f"cached lookup (ms) | from disk, new session (ms) | speedup [IQR] |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, method, amount, new_s, cached, lookup, sp, lo, hi in rows:
        budget = BUDGET_NEW.get(method, 3.0)
        print(f"| {key} | {method} | {amount:.2f} | {new_s:.2f} {'✓' if new_s <= budget else '✗'} | "
              f"{budget:.0f} s | {cached:.0f} {'✓' if cached <= BUDGET_CACHED_MS else '✗'} | "
              f"{lookup:.3f} | {disk[key, method]:.1f} | {sp:.2f} [{lo:.2f}-{hi:.2f}] |")


if __name__ == "__main__":
    main()
