"""prune --method layers and --recover {none,refit,distil,long}: promised keys, honest values, clear errors."""
import json

import pytest
import torch

from course_lib.cli.main import main

FAST = ["--seq-len", "32", "--n-eval", "2", "--n-calib", "4", "--runs", "1",
        "--latency-tokens", "8", "--threads", "1", "--json"]
KEYS = ("perplexity_before", "perplexity_pruned", "perplexity_after", "prune_seconds",
        "recover_seconds", "latency_ratio", "ideal_ratio", "ideal_latency_ratio", "sparsity_achieved")


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _prune(capsys, *args):
    assert main(["prune", *args, *FAST]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gemma3"])
def test_layers_method_removes_a_fifth_of_the_layers(capsys, name):
    result = _prune(capsys, name, "--method", "layers", "--sparsity", "0.2")
    assert all(key in result for key in KEYS)
    assert result["sparsity_unit"] == "decoder layers removed"
    assert result["sparsity_achieved"] == pytest.approx(0.5)  # 2 layers: at least one goes
    assert result["ideal_ratio"] < 1.0 and result["parameters_after"] < result["parameters_before"]
    assert result["perplexity_after"] == result["perplexity_pruned"]  # --recover none
    assert result["recover"] == "none" and result["recover_steps"] == 0


@pytest.mark.parametrize("method, recover", [("mlp", "refit"), ("heads", "refit"), ("mlp", "distil"),
                                             ("layers", "distil")])
def test_recover_reports_each_stage_and_wins_quality_back(capsys, method, recover):
    """On the trained tiny model (a random one has nothing to lose or win back): the cut costs
    perplexity, and each recovery, reported as such, lowers it again on the held-out windows."""
    result = _prune(capsys, "tiny-llama-trained", "--method", method, "--sparsity", "0.5",
                    "--recover", recover, "--steps", "3")
    assert all(key in result for key in KEYS)
    assert result["recover"] == recover
    assert result["recover_steps"] == (3 if recover == "distil" else 0)
    assert result["perplexity_pruned"] > result["perplexity_before"]  # half of the heads/neurons/layers
    assert result["perplexity_after"] < result["perplexity_pruned"], result  # improved, not just changed
    assert result["ideal_ratio"] < 1.0 and result["parameters_after"] < result["parameters_before"]
    if method != "layers":  # refit, also before distil: both layers' projections win on the kept-out windows
        assert result["refit_projections"] == "2/2"
    else:
        assert result["refit_projections"] is None


@pytest.mark.parametrize("args, message", [
    (["--method", "layers", "--recover", "refit"], "nothing to refit"),
    (["--method", "wanda", "--recover", "distil"], "repairs a structured prune"),
    (["--method", "mlp", "--recover", "distil", "--steps", "-2"], "argument --steps: -2 is out of range"),
    (["--method", "layers", "--sparsity", "1.2"], "outside [0, 1)"),
    (["--method", "mlp", "--recover", "long"], "--recover long is the long recovery of one cut"),
])
def test_bad_recovery_requests_exit_2(capsys, args, message):
    assert main(["prune", "tiny-llama", *args, *FAST]) == 2
    assert message in capsys.readouterr().err
