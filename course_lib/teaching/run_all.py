"""Execute every lesson headless and print one summary row per notebook.

``python -m course_lib.teaching.run_all --out build`` runs ``notebooks/NN_*.ipynb`` into
``build/`` (the committed notebooks are left alone); ``--in-place`` refreshes
the committed outputs instead (``make execute``). Each notebook reports its
row through ``course_lib.teaching.summary.record``; this script collects and prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..core.progress import bar
from . import summary

ROOT = Path(__file__).resolve().parents[2]


def notebook_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def execute(source: Path, target: Path, timeout: int = 900) -> float:
    """Run one notebook top to bottom with a fresh kernel; return seconds taken."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(source, as_version=4)
    started = time.perf_counter()
    code = sum(cell.cell_type == "code" for cell in notebook.cells)
    shown = bar(total=code, desc=f"{source.name}: cell", unit="cell")

    class Client(NotebookClient):  # one tick per code cell: which notebook, which cell of how many
        async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
            if cell.cell_type == "code":
                shown.set_description(f"{source.name}: cell {shown.n + 1} of {code}")
            result = await super().async_execute_cell(cell, cell_index, *args, **kwargs)
            if cell.cell_type == "code":
                shown.update(1)
            return result

    try:
        Client(notebook, kernel_name="python3", timeout=timeout,
               resources={"metadata": {"path": str(source.parent)}}).execute()
    finally:
        shown.close()
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, target)
    return time.perf_counter() - started


def run_bench_fallback() -> list[dict]:
    """Before any notebook exists: the dense baseline of the embedded model through the CLI."""
    out = subprocess.run([sys.executable, "-m", "course_lib", "eval", "smollm2-135m", "--json"],
                         check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return [{"notebook": "(CLI eval)", "model": result["model"],
             "dense_perplexity": result["perplexity"], "pruned_perplexity": None,
             "latency_ratio": None, "what": f"prefill {result['latency_ms_median']} ms"}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"))
    parser.add_argument("--out", default=str(ROOT / "build"))
    parser.add_argument("--in-place", action="store_true", help="overwrite the committed notebooks")
    parser.add_argument("--only", default=None, help="run only notebooks whose name contains this")
    args = parser.parse_args(argv)

    folder, out = Path(args.notebooks), Path(args.out)
    paths = [p for p in notebook_paths(folder) if not args.only or args.only in p.name]
    summary_dir = out / "summary"
    summary_dir.mkdir(parents=True, exist_ok=True)
    os.environ[summary.ENV] = str(summary_dir.resolve())
    if not paths:
        rows = run_bench_fallback()
    else:
        for path in paths:
            target = path if args.in_place else out / path.name
            seconds = execute(path, target)
            print(f"executed {path.name} in {seconds:.0f} s -> {target}", flush=True)
        rows = summary.collect(summary_dir)
    print()
    print(summary.table(rows))
    (out / "summary.md").write_text(summary.table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
