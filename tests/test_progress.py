"""Progress bars: drawn on a terminal ("layer i of n", "cell i of n"), never in
notebooks, pipes or --json mode."""
import io
import json

import nbformat

from course_lib.cli.main import main
from course_lib.core import data, models, progress
from course_lib.pruning.wanda import wanda_prune
from course_lib.teaching import run_all


class Terminal(io.StringIO):
    def isatty(self):
        return True


def walk_output(monkeypatch, stream):
    monkeypatch.setattr("sys.stderr", stream)
    model, tokenizer = models.load("tiny-llama", device="cpu")
    windows = data.windows_for(tokenizer, "tiny-llama", seq_len=16, n_eval=1, n_calib=2)
    wanda_prune(model, windows.calib, 0.5)
    return stream.getvalue()


def test_walk_shows_layer_i_of_n_on_a_terminal(monkeypatch):
    assert "calibration walk, layer 2 of 2" in walk_output(monkeypatch, Terminal())


def test_walk_is_silent_off_a_terminal_and_when_quiet(monkeypatch):
    assert walk_output(monkeypatch, io.StringIO()) == ""  # a notebook's or nbval's stderr
    with progress.quiet():
        assert walk_output(monkeypatch, Terminal()) == ""


def test_json_mode_prints_no_bar_even_on_a_terminal(monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["prune", "tiny-llama", "--method", "wanda", "--json", "--seq-len", "16",
                 "--n-eval", "1", "--n-calib", "2", "--runs", "2", "--latency-tokens", "8"]) == 0
    json.loads(capsys.readouterr().out)
    assert "calibration walk" not in terminal.getvalue()


def test_run_all_shows_notebook_and_cell_of_how_many(monkeypatch, tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                               nbformat.v4.new_code_cell("x = 1"),
                                               nbformat.v4.new_code_cell("print(x + 1)")])
    nbformat.write(notebook, tmp_path / "01_t.ipynb")
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    run_all.execute(tmp_path / "01_t.ipynb", tmp_path / "out.ipynb")
    assert "01_t.ipynb: cell 2 of 2" in terminal.getvalue()
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[2].outputs
    assert outputs[0]["text"] == "2\n"  # the notebook's own outputs carry no bar
