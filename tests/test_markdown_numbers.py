"""Every measured number a lesson's text states is in that lesson's own outputs.

A sentence like "SparseGPT reaches 20.12" goes stale silently when a change moves
the measurement. This test reads each executed lesson and fails on a number in a
markdown cell that neither an output nor the code's settings contain.

What counts as a measurement (the rest is prose: lesson numbers, "2:4", years,
"7B", "TinyLlama-1.1B"):
- a decimal ("24.83", "0.5") or a number with a unit of measure: x / × (ratios),
  % , ms, s, MB, GB;
- not inside `inline code` or a link, not glued to a word ("1.1B", "Llama-3.1").
A number is backed when some number printed by the notebook (stream, text, html)
rounds to it at the precision the text uses (a percentage may also match a
fraction: "50%" is backed by 0.5), or when it is a setting in the code (comments
do not count). A figure quoted from outside (a paper, another run) is exempted
by ``<!-- quoted: where it comes from -->`` in its paragraph, which says so to
the reader of the source.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
QUOTED = "<!-- quoted"
UNIT = r"(?:x|×|%|\s?ms|\s?s|\s?MB|\s?GB)"
CLAIMED = re.compile(rf"(?<![\w.\-/:])(\d+(?:\.\d+)?)({UNIT})?(?![\w:])")
ANY_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def claimed_numbers(markdown: str) -> list[tuple[str, str, str]]:
    """(number, unit, sentence) for each measurement-like number of a markdown cell."""
    found = []
    for paragraph in re.split(r"\n\s*\n", markdown):
        if QUOTED in paragraph:
            continue
        text = re.sub(r"<!--.*?-->", " ", paragraph, flags=re.S)
        text = re.sub(r"`[^`]*`", " ", text)  # code
        text = re.sub(r"\]\([^)]*\)|https?://\S+", " ", text)  # link targets
        text = re.sub(r"\$[^$]*\$", " ", text)  # formulas
        for match in CLAIMED.finditer(text):
            number, unit = match.group(1), (match.group(2) or "").strip()
            if "." not in number and not unit:
                continue  # a count or a name, not a measurement
            stop = text.rfind(". ", 0, match.start())
            start = max(stop + 2 if stop >= 0 else 0, text.rfind("\n\n", 0, match.start()) + 1)
            end = text.find(". ", match.end())
            found.append((number, unit, text[start:end if end > 0 else None].strip()))
    return found


def evidence_numbers(nb) -> set[float]:
    """Every number the notebook prints, and the settings its code states (not its comments)."""
    values = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code = "\n".join(line.split("#", 1)[0] for line in cell.source.splitlines())
        texts = [code]
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            for kind in ("text/plain", "text/html", "text/markdown"):
                texts.append(str(out.get("data", {}).get(kind, "")))
        for text in texts:
            values.update(float(n) for n in ANY_NUMBER.findall(str(text)))
    return values


def backed(number: str, unit: str, evidence: set[float]) -> bool:
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = float(number)

    def near(v: float) -> bool:
        return abs(round(v, decimals) - value) < 10 ** -(decimals + 6) or abs(v - value) < 10 ** -(decimals + 6)

    if any(near(v) for v in evidence):
        return True
    return unit == "%" and any(near(v * 100) for v in evidence)


def unbacked(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    evidence = evidence_numbers(nb)
    return [f"{number}{unit} in: {sentence!r}"
            for cell in nb.cells if cell.cell_type == "markdown"
            for number, unit, sentence in claimed_numbers(cell.source)
            if not backed(number, unit, evidence)]


def test_the_rule_reads_measurements_not_names():
    text = ("Lesson 5 keeps 2:4 and 50% in TinyLlama-1.1B (7B, 2023) at `0.25`; "
            "it measured 24.83 and 1.4x in 18.3 s.\n\n<!-- quoted: a paper --> The paper says 90%.")
    assert [(n, u) for n, u, _ in claimed_numbers(text)] == [("50", "%"), ("24.83", ""), ("1.4", "x"),
                                                            ("18.3", "s")]
    evidence = {0.5, 24.8312, 1.43}
    assert backed("50", "%", evidence) and backed("24.83", "", evidence) and backed("1.4", "x", evidence)
    assert not backed("18.3", "s", evidence) and not backed("24.84", "", evidence)


def test_a_stale_number_is_caught(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(ppl)", outputs=[nbformat.v4.new_output("stream", text="ppl 24.83\n")]),
        nbformat.v4.new_markdown_cell("Wanda reaches 24.83 here, SparseGPT 20.12."),
        nbformat.v4.new_markdown_cell("<!-- quoted: bench/results.md --> Elsewhere 19.99."),
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert unbacked(path) == ["20.12 in: 'Wanda reaches 24.83 here, SparseGPT 20.12.'"]


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_every_number_in_the_text_is_in_the_outputs(lesson):
    missing = unbacked(lesson)
    assert not missing, f"{lesson.name}: the text states numbers no output shows:\n" + "\n".join(missing)
