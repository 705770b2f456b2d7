"""Every numeric option of the command line: a bad value is one line naming the option
and a valid range, exit code 2, never a traceback; --save writes a model eval/info open."""
import json
import subprocess
import sys

import pytest

from course_lib.cli.main import main

BAD = [  # (command line, option named in the error, range quoted)
    (["eval", "tiny-gpt2", "--threads", "0"], "--threads", "1..1024"),
    (["info", "tiny-gpt2", "--threads", "-3"], "--threads", "1..1024"),
    (["bench", "tiny-gpt2", "--threads", "100000"], "--threads", "1..1024"),
    (["eval", "tiny-gpt2", "--runs", "0"], "--runs", "1..10000"),
    (["eval", "tiny-gpt2", "--runs", "two"], "--runs", "1..10000"),
    (["eval", "tiny-gpt2", "--latency-tokens", "0"], "--latency-tokens", "1..131072"),
    (["eval", "tiny-gpt2", "--n-eval", "-1"], "--n-eval", "1..100000"),
    (["prune", "tiny-gpt2", "--method", "wanda", "--n-calib", "0"], "--n-calib", "1..100000"),
    (["eval", "tiny-gpt2", "--seq-len", "1"], "--seq-len", "2..131072"),
    (["prune", "tiny-gpt2", "--method", "mlp", "--sparsity", "1.5"], "--sparsity", "[0, 1)"),
    (["prune", "tiny-gpt2", "--method", "mlp", "--sparsity", "nan"], "--sparsity", "[0, 1)"),
    (["prune", "tiny-gpt2", "--method", "mlp", "--sparsity", "-0.1"], "--sparsity", "[0, 1)"),
]


@pytest.mark.parametrize("argv,option,valid", BAD, ids=[" ".join(b[0][2:]) for b in BAD])
def test_bad_number_is_one_line_naming_option_and_range(capsys, argv, option, valid):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err and valid in err, err


@pytest.mark.parametrize("argv,option,valid", [
    (["eval", "tiny-gpt2", "--seq-len", "100000", "--n-eval", "1", "--runs", "1"], "--seq-len", "2..512"),
    (["eval", "tiny-llama", "--latency-tokens", "9999", "--seq-len", "32", "--n-eval", "1"],
     "--latency-tokens", "1..512"),
])
def test_lengths_beyond_the_models_context(capsys, argv, option, valid):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err and valid in err, err


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "course_lib", *argv], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("argv", [
    ["eval", "tiny-gpt2", "--runs", "-1"],
    ["prune", "tiny-llama", "--method", "wanda", "--sparsity", "2"],
    ["eval", "tiny-gpt2", "--seq-len", "100000", "--n-eval", "1", "--runs", "1"],  # found after loading
])
def test_true_process_exits_2_without_traceback(argv):
    done = run_cli(*argv)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "error:" in done.stderr.splitlines()[-1]


def test_prune_save_then_eval_and_info_open_the_folder(tmp_path, capsys):
    folder = tmp_path / "pruned"
    assert main(["prune", "tiny-llama", "--method", "mlp", "--sparsity", "0.25", "--json",
                 "--seq-len", "32", "--n-eval", "2", "--runs", "2", "--latency-tokens", "16",
                 "--save", str(folder)]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert pruned["saved_format"].startswith("standard") and (folder / "config.json").is_file()
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mlp_width"] == 144  # 192 - 25%
    assert main(["eval", str(folder), "--json", "--seq-len", "32", "--n-eval", "2", "--runs", "2",
                 "--latency-tokens", "16"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["perplexity"] == pytest.approx(pruned["perplexity_after"], abs=1e-3)


def test_prune_save_recipe_when_layers_differ_and_compressed(tmp_path, capsys):
    folder = tmp_path / "sparse"
    assert main(["prune", "tiny-llama", "--method", "magnitude", "--sparsity", "0.7", "--json",
                 "--seq-len", "32", "--n-eval", "2", "--runs", "2", "--latency-tokens", "16",
                 "--save", str(folder), "--compress"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    assert "course bitmask" in pruned["saved_format"] and pruned["saved_bytes_on_disk"] > 0
    assert main(["eval", str(folder), "--json", "--seq-len", "32", "--n-eval", "2", "--runs", "2",
                 "--latency-tokens", "16"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] == pytest.approx(pruned["perplexity_after"], abs=1e-3)
