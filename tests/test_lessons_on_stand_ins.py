"""Every lesson runs to the end on a stand-in of its original model.

A lesson promises that its original model is "one parameter away". This test does
what a user would: it takes the lesson, injects a cell after the one tagged
``parameters`` (the papermill convention) that sets ``MODEL`` to a tiny random
stand-in with the original's head geometry (``course_lib.core.models.STAND_INS``),
plus small evaluation sizes, and executes it top to bottom in a fresh kernel.
It fails if any cell raises or any claim prints ✗. Outputs are not compared:
the weights are random, so claims about trained weights print ``·`` (not decided).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# lesson -> the stand-in of its original model. The default models (Gemma 3 for lesson 01,
# SmolLM2 for the others) need no stand-in: `make test` replays every lesson on its default under
# nbval. Lesson 06 has no other original: it runs on tiny-llama, a SmolLM2-shaped model, for its QUICK path.
RUNS = {
    "00_measuring": ("tiny-llama",),
    "01_heads_zeroed": ("tiny-qwen2.5",),
    "02_heads_zeroed_vs_removed": ("tiny-tinyllama",),
    "03_heads_removed": ("tiny-gpt2-124m",),
    "04_mlp_removed": ("tiny-gpt2-124m",),
    "05_sparsegpt": ("tiny-tinyllama",),
    "06_pipeline": ("tiny-llama",),
}
CASES = [(lesson, model) for lesson, names in RUNS.items() for model in names]


def with_parameters(notebook, **values):
    """Insert one cell after the ``parameters`` cell, as papermill does."""
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, cell)
    return notebook


def printed(notebook) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_every_lesson_has_its_stand_ins():
    assert sorted(RUNS) == sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py"))


# Lessons that write files run twice at once, as two students (or a test and nbval) on one
# machine would: each run must use a folder of its own.
AT_ONCE = {"06_pipeline": 2}


def _client(lesson: str, model: str) -> NotebookClient:
    notebook = jupytext.read(NOTEBOOKS / f"{lesson}.py")
    with_parameters(notebook, MODEL=model, N_EVAL=2, QUICK=True)
    return NotebookClient(notebook, kernel_name="python3", timeout=300,
                          resources={"metadata": {"path": str(NOTEBOOKS)}})


@pytest.mark.parametrize("lesson, model", CASES, ids=[f"{l[:2]}-{m}" for l, m in CASES])
def test_lesson_runs_on_stand_in(lesson, model, tmp_path, monkeypatch):
    import asyncio

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("COURSE_SUMMARY_DIR", raising=False)
    clients = [_client(lesson, model) for _ in range(AT_ONCE.get(lesson, 1))]
    started = time.perf_counter()

    async def together():
        return await asyncio.gather(*(c.async_execute() for c in clients), return_exceptions=True)

    for result in asyncio.run(together()):
        if isinstance(result, CellExecutionError):
            pytest.fail(f"{lesson} with MODEL={model!r} raised ({len(clients)} runs at once):\n{str(result)[-3000:]}")
        if isinstance(result, BaseException):
            raise result
    for client in clients:
        text = printed(client.nb)
        failed = [line for line in text.splitlines() if line.startswith("✗")]
        assert not failed, f"{lesson} with MODEL={model!r} printed failed claims:\n" + "\n".join(failed)
        assert model in text  # the lesson said which model it ran
    print(f"{lesson} on {model}, {len(clients)} at once: {time.perf_counter() - started:.0f} s")
