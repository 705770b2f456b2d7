"""Measurements too long for a lesson, made once by a benchmark script and loaded by the lesson.

A lesson runs in minutes; some answers take longer (four cuts, each recovered for 40 steps
of distillation, took 27 minutes on 2 cores). Such a measurement is made by a script in
``bench/`` and committed as JSON with its provenance (the command, the commit, the machine,
the date). The lesson loads it, prints that provenance first, and states only what the
stored intervals decide, so the same output replays on any machine: what it shows was
measured once, there, and says so.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core import timing

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load(name: str) -> dict:
    """``bench/<name>.json``, written by ``bench/<name>.py``."""
    path = BENCH / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: it is measured by `python bench/{name}.py` "
                                "(see its docstring for the time it takes) and committed with the course.")
    return json.loads(path.read_text())


def provenance(record: dict) -> str:
    """One line: what was run, from which commit, where, when, and how long it took
    (``core.provenance.record`` wrote it)."""
    p = record["provenance"]
    return (f"measured by `{p['command']}` at commit {p['commit']} on {p['machine']} "
            f"({p['threads']} threads, torch {p['torch'].split('+')[0]}), {p['measured']}, "
            f"in {p['seconds'] / 60:.0f} min")


def speedup(record: dict, stage: str, base: str, other: str) -> timing.Speedup:
    """``other`` against ``base`` from the stored raw times of one interleaved timing call
    (``stage``: "prefill" or "decode"): run i of each saw the same machine, so the run-by-run
    ratios pair exactly as they did when measured."""
    times = record["times_ms"][stage]
    return timing.speedup(*(timing.Measurement.from_times(label, [t / 1e3 for t in times[label]], "cpu", 0)
                            for label in (base, other)))


def paired(record: dict, a: str, b: str, when: str = "after", text: str = "eval") -> dict:
    """``a``'s perplexity over ``b``'s on the same tokens (``record["pairs"]``, stored one way
    round): ``ratio``, its 95% interval ``low``-``high`` and the ``verdict`` for ``a``."""
    if f"{a} | {b}" in record["pairs"]:
        return record["pairs"][f"{a} | {b}"][when][text]
    other = record["pairs"][f"{b} | {a}"][when][text]
    verdict = {"higher": "lower", "lower": "higher"}.get(other["verdict"], other["verdict"])
    return {"ratio": 1 / other["ratio"], "low": 1 / other["high"], "high": 1 / other["low"], "verdict": verdict}


def frontier_points(record: dict, text: str = "eval") -> dict[str, dict]:
    """``plots.pareto``'s points from a ``bench/pareto.json`` record: per cut, the prefill and
    decode speedups (median, IQR) and the perplexity ratio to dense (95% interval) before and
    after recovery, on ``text`` ("eval": the protocol's prose; "heldout": code)."""
    def triple(d: dict, keys=("ratio", "low", "high")) -> tuple[float, float, float]:
        return tuple(d[k] for k in keys)

    return {name: {**{s: triple(c[s], ("median", "low", "high")) for s in ("prefill", "decode")},
                   **{when: triple(c[when][text]["vs_dense"]) for when in ("before", "after")}}
            for name, c in record["cuts"].items()}
