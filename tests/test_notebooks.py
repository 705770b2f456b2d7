"""The committed lessons: paired, executed, and shaped like the course promises.

nbval (run by `make test` over notebooks/*.ipynb) replays each notebook and
compares outputs; but it passes a notebook that stores no outputs at all, so
these tests check that the outputs are there to compare.
"""
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch

from course_lib.teaching import checks, student

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_there_are_seven_lessons():
    assert len(PAIRS) == 7, [p.name for p in PAIRS]  # lesson 0 (how the course measures), then 1-6


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.stem)
def test_ipynb_matches_its_py(source):
    notebook = source.with_suffix(".ipynb")
    assert notebook.exists(), f"{notebook.name} is missing: run `make sync` then `make execute`"
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(notebook)
    strip = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert strip(from_py) == strip(from_ipynb), f"{source.name} and {notebook.name} differ: `make sync`"


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.stem)
def test_every_code_cell_was_executed_and_shows_output(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert all(counts) and counts == sorted(counts), f"{source.stem}: not executed top to bottom"
    quiet_by_design = {"parameters", "solution", "prediction"}  # assignments, exercises, your guesses
    silent = [c.source.splitlines()[0] for c in code
              if not c.outputs and not quiet_by_design & set(c.metadata.get("tags", []))]
    assert not silent, f"{source.stem}: code cells without output: {silent}"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.stem)
def test_lesson_shape_parameters_explorer_plots_and_size(source):
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags, f"{source.stem}: no cell tagged 'parameters'"
    text = source.read_text()
    assert "Explorer(" in text, f"{source.stem}: no live explorer"
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
    assert images >= 2, f"{source.stem}: {images} plots, want at least 2"
    assert source.with_suffix(".ipynb").stat().st_size < 2_000_000


def test_student_edition_has_no_solutions_and_its_stubs_fail_the_checks(tmp_path):
    written = student.build(target=tmp_path)
    assert written, "no notebooks found"
    solutions = 0
    for path in written:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            assert not cell.outputs and cell.execution_count is None
            if "solution" in cell.metadata.get("tags", []):
                solutions += 1
                assert "BEGIN SOLUTION" not in cell.source and student.STUB in cell.source
    assert solutions >= 5, "every lesson has at least one exercise"


def _exercises(path):
    """(solution source, check name) pairs of one committed notebook."""
    import re

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    pairs = []
    for cell, following in zip(cells, cells[1:]):
        if "solution" in cell.metadata.get("tags", []):
            assert "checks.check_" in following.source, f"{path.name}: the cell after a solution must call a check"
            match = re.search(r"checks\.(check_\w+)\((\w+)\)", following.source)
            if match:  # a check of the function alone (others run it on the lesson's model)
                pairs.append((cell.source, match.group(1), match.group(2)))
    return pairs


def test_committed_solutions_pass_and_student_stubs_fail():
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    found = 0
    for path in paths:
        for source, check_name, fn_name in _exercises(path):
            found += 1
            check = getattr(checks, check_name)
            solved, stubbed = {"torch": torch}, {"torch": torch}
            exec(source, solved)
            exec(student.strip_solutions(source), stubbed)
            assert check(solved[fn_name]), f"{path.name}: the solution fails {check_name}"
            assert not check(stubbed[fn_name]), f"{path.name}: the stub passes {check_name}"
    assert found >= 5


CLAIM_MARKS = ("✓ ", "✗ ", "· ")


def _output_lines(cell):
    for output in cell.outputs:
        text = output.get("text") or output.get("data", {}).get("text/plain", "")
        yield from (text if isinstance(text, str) else "".join(text)).splitlines()


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.stem)
def test_no_stored_claim_failed_and_none_is_hidden_from_nbval(source):
    """A stored ✗ is a claim the lesson's own measurement contradicted; a claim in a cell nbval
    does not compare would never fail. Neither may be committed."""
    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        claims = [line for line in _output_lines(cell) if line.startswith(CLAIM_MARKS)]
        failed = [line for line in claims if line.startswith("✗ ")]
        assert not failed, f"{source.stem}, code cell {index}: a stored claim failed: {failed[0]}"
        if "nbval-ignore-output" in cell.metadata.get("tags", []):
            assert not claims and ".claim(" not in cell.source, (
                f"{source.stem}, code cell {index}: a claim in a cell nbval does not compare")


@pytest.mark.parametrize("source", PAIRS, ids=lambda p: p.stem)
def test_every_lesson_states_its_replay_tolerance(source):
    """The tolerance nbval uses for a lesson's numbers is the one its introduction states."""
    from course_lib.teaching import replay

    nb = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    rtol = replay.cell_rtol(nb.metadata, {})
    intro = "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown")
    assert f"{rtol:.1%}" in intro, (f"{source.stem}: nbval compares its numbers within {rtol:.1%}; "
                                    "say so in the introduction")
    for cell in nb.cells:
        for tag in cell.metadata.get("tags", []):
            if tag.startswith(replay.TAG_PREFIX):
                value = float(tag[len(replay.TAG_PREFIX):])
                assert f"{value:.0%}" in cell.source or any(
                    f"{value:.0%}" in c.source for c in nb.cells if c.cell_type == "markdown"), \
                    f"{source.stem}: a cell compares within {value:.0%}; the lesson must say why"
