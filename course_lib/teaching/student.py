"""Build the student edition: solutions replaced by stubs, outputs cleared.

The committed notebooks carry the solutions of the "your turn" exercises in
cells tagged ``solution``, between ``### BEGIN SOLUTION`` and ``### END SOLUTION``.
``python -m course_lib.teaching.student`` (``make student``) writes ``build/student/`` with
those lines replaced by ``raise NotImplementedError(...)`` and every output cleared.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("your turn: write this, then run the check below")'
_BLOCK = re.compile(rf"^([ \t]*){re.escape(BEGIN)}\n.*?^[ \t]*{re.escape(END)}[ \t]*$", re.M | re.S)


def strip_solutions(source: str) -> str:
    """Replace every solution block by a stub at the same indentation."""
    stripped = _BLOCK.sub(lambda m: f"{m.group(1)}{STUB}", source)
    if BEGIN in stripped or END in stripped:
        raise ValueError("unbalanced solution markers: every BEGIN SOLUTION needs an END SOLUTION")
    return stripped


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    out = nbformat.from_dict(notebook)
    for cell in out.cells:
        if cell.cell_type != "code":
            continue
        if "solution" in cell.metadata.get("tags", []):
            cell.source = strip_solutions(cell.source)
        cell.outputs, cell.execution_count = [], None
    return out


def build(notebooks: Path = ROOT / "notebooks", target: Path = ROOT / "build" / "student") -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        nb = student_notebook(nbformat.read(path, as_version=4))
        nbformat.write(nb, target / path.name)
        written.append(target / path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "build" / "student"))
    args = parser.parse_args(argv)
    for path in build(target=Path(args.out)):
        print(f"student edition: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
