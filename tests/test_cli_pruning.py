"""The prune and bench commands: promised keys, sensible values, clear errors (tiny models, fast)."""
import json
import math

import pytest
import torch

from course_lib.core import arch, data, models
from course_lib.cli.main import main
from course_lib.pruning import heads as H
from course_lib.pruning import mlp as M
from course_lib.pruning.recipes import SCORES, heads_request, importance, neurons_request, prune_with

FAST = ["--seq-len", "32", "--n-eval", "2", "--n-calib", "4", "--runs", "1",
        "--latency-tokens", "8", "--threads", "1", "--json"]
KEYS = ("model", "method", "pattern", "sparsity_achieved", "perplexity_before", "perplexity_after",
        "prune_seconds", "latency_ratio", "ideal_latency_ratio")


@pytest.fixture(autouse=True)
def _keep_threads():
    """main() sets torch's thread count; put it back for the other tests."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _prune(capsys, *args):
    assert main(["prune", *args, *FAST]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "heads", "mlp"])
def test_prune_json_has_the_promised_keys(capsys, method):
    result = _prune(capsys, "tiny-llama", "--method", method, "--sparsity", "0.5")
    assert all(key in result for key in KEYS)
    assert result["method"] == method and result["model"] == "tiny-llama" and result["pattern"] is None
    for key in ("perplexity_before", "perplexity_after", "latency_ratio", "ideal_latency_ratio"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert result["prune_seconds"] >= 0
    if method in ("magnitude", "wanda", "sparsegpt"):
        assert result["sparsity_achieved"] == pytest.approx(0.5, abs=0.01)
        assert result["ideal_latency_ratio"] == 1.0  # zeros in dense matrices save no FLOPs
        assert result["parameters_after"] == result["parameters_before"]
    else:
        assert result["parameters_after"] < result["parameters_before"]
        assert result["ideal_latency_ratio"] < 1.0
    if method == "mlp":
        assert result["sparsity_achieved"] == pytest.approx(0.5)
    if method == "heads":  # 6 heads in 2 groups of 3: 50% -> 2 of every group of 3
        assert result["sparsity_achieved"] == pytest.approx(4 / 6, abs=1e-4)


def test_prune_with_a_pattern(capsys):
    result = _prune(capsys, "tiny-gpt2", "--method", "magnitude", "--pattern", "2:4")
    assert result["pattern"] == "2:4" and result["sparsity_achieved"] == pytest.approx(0.5)


@pytest.mark.parametrize("args, message", [
    (["--method", "lottery"], "--method 'lottery' is not known"),
    (["--method", "magnitude", "--pattern", "2-4"], "not of the form 'N:M'"),
    (["--method", "heads", "--pattern", "2:4"], "applies to single weights"),
    (["--method", "magnitude", "--sparsity", "1.5"], "outside [0, 1)"),
])
def test_bad_input_exits_2_with_a_clear_message(capsys, args, message):
    assert main(["prune", "tiny-llama", *args, *FAST]) == 2
    assert message in capsys.readouterr().err


def _calib(tokenizer, name="tiny-llama"):
    return data.windows_for(tokenizer, name, seq_len=32, n_eval=1, n_calib=4).calib


def test_heads_request_removes_the_same_number_per_kv_group():
    model, tokenizer = models.load("tiny-llama")  # 6 query heads, 2 KV heads: groups {0,1,2}, {3,4,5}
    calib = _calib(tokenizer)
    for fraction, per_group in ((0.25, 1), (0.5, 2), (0.9, 2)):
        request = heads_request(model, fraction, calib=calib)
        assert set(request) == {0, 1}
        for heads in request.values():
            assert sum(h < 3 for h in heads) == per_group and sum(h >= 3 for h in heads) == per_group
    handle = prune_with(model, "heads", 0.5, calib=calib)
    assert arch.attention_shape(model, 0).n_heads == 2 and arch.attention_shape(model, 0).n_kv_heads == 2
    handle.restore()
    assert arch.attention_shape(model, 0).n_heads == 6


def test_requests_follow_the_given_scores():
    """A calibrated score replaces the weight norm: the lowest-scoring units go, same amount."""
    model, _ = models.load("tiny-llama")  # 2 layers, 6 heads in 2 KV groups
    scores = torch.arange(12, dtype=torch.float).reshape(2, 6).flip(-1)  # head 5 lowest, then 4...
    request = heads_request(model, 0.25, scores=scores.numpy())
    assert request == {0: [2, 5], 1: [2, 5]}  # the lowest of each KV group
    width = arch.mlp_width(model, 0)
    neuron_scores = [torch.arange(width, dtype=torch.float).flip(0) for _ in range(2)]
    request = neurons_request(model, 0.25, scores=neuron_scores)
    lowest = sorted(range(width - width // 4, width))
    assert {layer: sorted(n) for layer, n in request.items()} == {0: lowest, 1: lowest}


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_structured_cuts_default_to_the_data_aware_score(name):
    """Lesson 4: by weight norm, 25% of SmolLM2's neurons cost perplexity 1.5 million; by activation 21.8.
    Unless told otherwise, prune_with and the requests choose by the data (for neurons, the measured
    contribution: column norm x RMS activation, which ranks them otherwise than the mean |activation|)."""
    model, tokenizer = models.load(name)
    calib = _calib(tokenizer, name)
    for method, by_data in (("mlp", M.neuron_importance_contribution(model, calib)),
                            ("heads", H.head_importance_contribution(model, calib))):
        request = (neurons_request if method == "mlp" else heads_request)
        expected = request(model, 0.25, scores=by_data)
        assert request(model, 0.25, calib=calib) == expected
        assert request(model, 0.25, scores=importance(model, method, "weight-norm")) != expected  # a real choice
        if method == "mlp":  # and not the lessons' mean |activation| under another name
            assert request(model, 0.25, scores=importance(model, method, "activation", calib)) != expected
        handle = prune_with(model, method, 0.25, calib=calib)
        assert handle.info["score"] == SCORES[method][0]
        assert handle.info["neurons" if method == "mlp" else "heads"] == expected
        handle.restore()
    with pytest.raises(ValueError, match="calib=windows.calib.*'weight-norm'"):
        neurons_request(model, 0.25)  # no data and no scores: never a silent weight norm
    with pytest.raises(ValueError, match="weight-norm"):
        prune_with(model, "heads", 0.25)


@pytest.mark.parametrize("method,default", [("mlp", "contribution"), ("heads", "contribution"),
                                            ("layers", "block-influence"), ("wanda", None)])
def test_prune_names_its_score_and_takes_another(capsys, method, default):
    result = _prune(capsys, "tiny-llama", "--method", method, "--sparsity", "0.5")
    assert result["score"] == default and result["calib_windows"] == 4
    if method in ("mlp", "heads"):
        result = _prune(capsys, "tiny-llama", "--method", method, "--sparsity", "0.5", "--score", "weight-norm")
        assert result["score"] == "weight-norm" and result["calib_windows"] == 0  # data-free: no windows read


@pytest.mark.parametrize("args, shown", [
    (["--method", "mlp", "--score", "magnitude"], "--score 'magnitude' is not a score for --method mlp: "
                                                  "choose one of contribution, activation, weight-norm"),
    (["--method", "heads", "--score", "activation"], "choose one of contribution, ablation, weight-norm"),
    (["--method", "wanda", "--score", "activation"], "--method 'wanda' zeroes single weights"),
])
def test_a_bad_score_is_one_line_naming_the_choices(capsys, args, shown):
    assert main(["prune", "tiny-llama", *args, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and shown in err, err


def test_bench_quick_writes_the_report(tmp_path, capsys):
    assert main(["bench", "tiny-gpt2", "--quick", "--out", str(tmp_path), "--threads", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    text = (tmp_path / "results.md").read_text()
    for section in ("Machine:", "## (a) Latency", "## (b) Quality", "## (c) Sparse kernels",
                    "Break-even", "## (d) 2:4", "## Checks", "CSR 90% on MLP layers",
                    "MLP neurons removed 50%", "heads removed 50%", "sparsegpt | 2:4",
                    "perplexity (calibrated)"):
        assert section in text, section
    if not torch.cuda.is_available():
        assert "not measured here (no CUDA)" in text
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert result["quick"] and result["machine"]["threads"] == 1
    assert {row["configuration"] for row in result["latency"]} >= {"CSR 50% on MLP layers",
                                                                   "unstructured 50% zeros, dense kernel"}
    # --render: the report again from results.json, now with a recovery table measured since
    measured = (tmp_path / "results.json").read_text()
    (tmp_path / "recovery.md").write_text("## Recovery after a structured prune\n\n| measured later |\n")
    (tmp_path / "results.png").unlink()
    assert main(["bench", "--render", "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == str(tmp_path / "results.md")
    rendered = (tmp_path / "results.md").read_text()
    assert rendered.startswith(text) and "| measured later |" in rendered  # the same report, plus recovery
    assert (tmp_path / "results.json").read_text() == measured and (tmp_path / "results.png").is_file()
    assert main(["bench", "--render", "--out", str(tmp_path / "nothing")]) == 2
    assert "run `python -m course_lib bench" in capsys.readouterr().err
