"""The replay rule: words and whole numbers exact, measured numbers within the lesson's tolerance."""
import nbformat
import pytest

from course_lib.teaching import replay


@pytest.mark.parametrize("stored, fresh", [
    ("perplexity 895.06", "perplexity 895.03"),        # 3e-5 relative: another CPU's rounding
    ("error 0.184", "error 0.185"),                    # one unit of the last printed digit
    ("1,520,526.53 and 2,690,596.14", "1,520,536.03 and 2,690,579.33"),
    ("gap 1.5e-06", "gap 1.6e-06"),
    ("✓ lower [24.05 vs 27.46: ratio 1.142]", "✓ lower [24.06 vs 27.45: ratio 1.141]"),
])
def test_numbers_within_tolerance_agree(stored, fresh):
    assert replay.numbers_agree(stored, fresh, rtol=0.002)


@pytest.mark.parametrize("stored, fresh", [
    ("perplexity 38.93", "perplexity 41.38"),          # a chaotic result is not rounding
    ("error 0.184", "error 0.186"),                    # two units of a 3-decimal figure
    ("1536 rows", "1537 rows"),                        # whole numbers are exact
    ("✓ SparseGPT lower [33.1]", "✗ SparseGPT lower [33.1]"),  # a flipped mark
    ("faster [1.2]", "slower [1.2]"),                  # a changed word
    ("a 1.0 b", "a 1.0 b 2.0"),                         # another number of numbers
])
def test_other_differences_do_not(stored, fresh):
    assert not replay.numbers_agree(stored, fresh, rtol=0.002)


def test_cell_tag_overrides_the_notebook_tolerance():
    assert replay.cell_rtol({"course": {"replay_rtol": 0.01}}, {}) == 0.01
    assert replay.cell_rtol({"course": {"replay_rtol": 0.01}}, {"tags": ["replay-rtol-0.05"]}) == 0.05
    assert replay.cell_rtol({}, {}) == replay.DEFAULT_RTOL
    assert not replay.numbers_agree("ppl 101.39", "ppl 94.98", 0.05)  # 6.7% apart
    assert replay.numbers_agree("ppl 101.39", "ppl 98.00", 0.05)


def test_snap_replaces_only_texts_that_agree():
    stored = [nbformat.v4.new_output("stream", name="stdout", text="ppl 24.05\n"),
              nbformat.v4.new_output("execute_result", data={"text/plain": "ratio 1.142"})]
    fresh = [nbformat.v4.new_output("stream", name="stdout", text="ppl 24.06\n"),
             nbformat.v4.new_output("execute_result", data={"text/plain": "ratio 1.300"})]
    snapped = replay.snap_outputs(fresh, stored, rtol=0.002)
    assert snapped[0]["text"] == "ppl 24.05\n"          # within tolerance: read as the stored text
    assert snapped[1]["data"]["text/plain"] == "ratio 1.300"  # beyond it: left for nbval to report
    assert fresh[0]["text"] == "ppl 24.06\n"            # the fresh outputs themselves are untouched


def _notebook(tmp_path, stored_text, code, rtol=None):
    cell = nbformat.v4.new_code_cell(code)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=stored_text)]
    cell.execution_count = 1
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if rtol is not None:
        nb.metadata["course"] = {"replay_rtol": rtol}
    path = tmp_path / "lesson.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("printed, rtol, passes", [
    ("24.05", None, True),      # the stored text itself
    ("24.06", None, True),      # one unit of the last digit
    ("24.50", None, False),     # 1.9%: beyond the default 0.2%
    ("24.50", 0.02, True),      # within a lesson's stated 2%
])
def test_nbval_uses_the_rule(tmp_path, pytester_like, printed, rtol, passes):
    path = _notebook(tmp_path, "perplexity 24.05\n", f"print('perplexity {printed}')", rtol)
    assert pytester_like(path) == (0 if passes else 1)


@pytest.fixture
def pytester_like():
    """Run nbval (with the course's plugin from pyproject.toml) on one notebook in a subprocess."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def run(path):
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval",
                               "--rootdir", str(root), "-c", str(root / "pyproject.toml"), str(path)],
                              cwd=root, capture_output=True, text=True, timeout=300).returncode
    return run
