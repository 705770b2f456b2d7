"""Replaying a lesson on another machine: words exact, numbers within a stated tolerance.

nbval replays every lesson and compares each cell's output with the stored one,
character for character. A lesson's words and marks (✓, ✗, "within noise") must
replay exactly; its measured numbers cannot all do so on every machine. Another
CPU kind (AVX2 or AVX-512), another thread count or another GPU sums a matrix
product in another order, and the last printed digit of a perplexity may move.

The lessons fix the causes first (float64 Hessians, calibration larger than the
widest input, an explicit rule for tied scores: see ``pruning.sparsegpt`` and
``pruning.masks``). What still moves is compared here, by one rule the lessons
state in their introduction:

- a number printed with a decimal point agrees when it is within ``rtol`` of the
  stored one (relative), or within one unit of its last printed digit;
- a whole number (a count, a shape, an index) must be equal;
- everything that is not a number (words, marks, units) must be equal.

The tolerance is the notebook's ``course.replay_rtol`` metadata (``DEFAULT_RTOL``
when absent); a cell tagged ``replay-rtol-<value>`` (e.g. ``replay-rtol-0.02``) uses
its own, and the lesson says why next to it. Timing figures are not numbers to
compare at all: ``notebooks/sanitize.cfg`` blanks them first.

The rule is registered as a pytest plugin (``pyproject.toml``: ``-p
course_lib.teaching.replay``): when nbval compares a cell, every fresh text whose
numbers agree with the stored one within the tolerance is taken as equal; any other
difference is reported by nbval as usual, with both texts.
"""
from __future__ import annotations

import copy
import math
import re

DEFAULT_RTOL = 0.002  # 0.2%: a perplexity of 24.05 may read 24.00-24.10 elsewhere
TAG_PREFIX = "replay-rtol-"

# A number as printed: optional sign, digits (thousands commas allowed), decimals, exponent.
NUMBER = re.compile(r"(?<![\w.])[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?:[eE][-+]?\d+)?"
                    r"|(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _split(text: str) -> tuple[list[str], list[str]]:
    """The text between numbers, and the numbers, in order."""
    words, numbers, last = [], [], 0
    for match in NUMBER.finditer(text):
        words.append(text[last:match.start()])
        numbers.append(match.group())
        last = match.end()
    words.append(text[last:])
    return words, numbers


def _unit(printed: str) -> float:
    """One unit of the last printed digit: 0.01 for '24.05', 1 for '24', 1e-7 for '1.5e-06'."""
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (-decimals + (int(exponent) if exponent else 0))


def _is_whole(printed: str) -> bool:
    return "." not in printed and "e" not in printed.lower()


def numbers_agree(stored: str, fresh: str, rtol: float = DEFAULT_RTOL) -> bool:
    """True when ``fresh`` reads as ``stored``: the same words, whole numbers equal,
    the other numbers within ``rtol`` (relative) or one unit of the last printed digit."""
    if stored == fresh:
        return True
    stored_words, stored_numbers = _split(stored)
    fresh_words, fresh_numbers = _split(fresh)
    if stored_words != fresh_words or len(stored_numbers) != len(fresh_numbers):
        return False
    for a, b in zip(stored_numbers, fresh_numbers):
        if a == b:
            continue
        if _is_whole(a) or _is_whole(b):
            return False
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
        if not (math.isfinite(x) and math.isfinite(y)):
            return False
        allowed = max(rtol * max(abs(x), abs(y)), max(_unit(a), _unit(b)) * (1 + 1e-9))
        if abs(x - y) > allowed:
            return False
    return True


def cell_rtol(notebook_metadata, cell_metadata) -> float:
    """The tolerance of one cell: its ``replay-rtol-<value>`` tag, else the notebook's, else the default."""
    for tag in cell_metadata.get("tags", []) if cell_metadata else []:
        if tag.startswith(TAG_PREFIX):
            return float(tag[len(TAG_PREFIX):])
    course = (notebook_metadata or {}).get("course", {})
    return float(course.get("replay_rtol", DEFAULT_RTOL))


def _texts(output: dict):
    """(label, container, key) of every text field of one notebook output."""
    if output.get("output_type") == "stream" and isinstance(output.get("text"), str):
        yield output.get("name"), output, "text"
    for key, value in output.get("data", {}).items():
        if isinstance(value, str) and key.startswith("text/"):
            yield key, output["data"], key


def snap_outputs(fresh: list, stored: list, rtol: float, sanitize=lambda s: s) -> list:
    """A copy of the fresh outputs in which every text that agrees with the stored one
    (after ``sanitize``, within ``rtol``) is replaced by the stored text."""
    fresh = copy.deepcopy(fresh)
    for new, old in zip(fresh, stored):
        old_texts = {label: box[key] for label, box, key in _texts(old)}
        for label, box, key in _texts(new):
            if label in old_texts and numbers_agree(sanitize(old_texts[label]), sanitize(box[key]), rtol):
                box[key] = old_texts[label]
    return fresh


def pytest_configure(config):
    """Make nbval compare numbers within the lesson's tolerance (a no-op without nbval)."""
    try:
        from nbval import plugin
    except ImportError:  # nbval is a dev dependency
        return
    original = plugin.IPyNbCell.compare_outputs
    if getattr(original, "course_replay", False):
        return

    def compare_outputs(self, test, ref, skip_compare=None):
        rtol = cell_rtol(getattr(self.parent, "nb", {}).get("metadata", {}), self.cell.metadata)
        return original(self, snap_outputs(test, ref, rtol, self.sanitize), ref, skip_compare)

    compare_outputs.course_replay = True
    plugin.IPyNbCell.compare_outputs = compare_outputs
