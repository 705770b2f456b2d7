"""One result row per lesson, collected by ``make run`` into a summary table."""
from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "COURSE_SUMMARY_DIR"
COLUMNS = ("notebook", "model", "dense_perplexity", "pruned_perplexity", "latency_ratio", "what")


def record(notebook: str, model: str, dense_perplexity: float, pruned_perplexity: float,
           latency_ratio: float, what: str) -> dict:
    """Return the lesson's row; when run by ``make run``, also save it for the table."""
    row = {"notebook": notebook, "model": model,
           "dense_perplexity": round(float(dense_perplexity), 2),
           "pruned_perplexity": round(float(pruned_perplexity), 2),
           "latency_ratio": round(float(latency_ratio), 2), "what": what}
    folder = os.environ.get(ENV)
    if folder:
        Path(folder, f"{notebook}.json").write_text(json.dumps(row))
    return row


def collect(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def table(rows: list[dict]) -> str:
    """A markdown table; latency ratio = pruned / dense prefill latency (below 1 is faster)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c))
                                       for c in COLUMNS) + " |")
    return "\n".join(lines)
