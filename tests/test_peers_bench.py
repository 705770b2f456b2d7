"""bench/peers/compare.py (make bench-peers) without the peer: its table and verdicts.

llm-compressor lives in its own venv (.venv-peers), so here our kernel stands in for
the peer: the same kernel on a fresh copy of the same model must give the same
perplexity (ratio exactly 1), and a time ratio near 1 must fail the 0.8 target.
"""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

COMPARE = Path(__file__).resolve().parents[1] / "bench" / "peers" / "compare.py"


@pytest.fixture
def compare(monkeypatch):
    spec = importlib.util.spec_from_file_location("peers_compare", COMPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "theirs", module.ours)  # the peer, played by our own kernel
    monkeypatch.setattr(module, "peer_version", lambda: "stand-in")
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_same_kernel_on_both_sides_gives_ratio_one_and_a_failed_time_target(compare, tmp_path,
                                                                             method, capsys):
    code = compare.main([method, "--pattern", "50%", "--pattern", "2:4", "--model", "tiny-llama",
                         "--seq-len", "32", "--n-calib", "4", "--n-eval", "2",
                         "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["pattern"] for r in results] == ["50%", "2:4"]
    for r in results:
        assert r["perplexity_ratio"] == 1.0  # deterministic kernel, fresh identical model
        assert abs(r["ours"]["sparsity"] - 0.5) < 0.01 and r["ours"]["sparsity"] == r["theirs"]["sparsity"]
        assert r["within_targets"] == (r["time_ratio"] <= compare.TIME_TARGET)
    assert code == (0 if all(r["within_targets"] for r in results) else 1)
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("# Ours vs llm-compressor, tiny-llama, 4 x 32 calibration")
    assert f"| {method} | 2:4 |" in table and "| 1.000 |" in table
    assert "llm-compressor stand-in" in capsys.readouterr().out


def test_unknown_method_is_refused(compare, capsys):
    with pytest.raises(SystemExit) as info:
        compare.main(["magnitude"])
    assert info.value.code == 2
    assert "unknown method(s) ['magnitude']: choose from wanda, sparsegpt" in capsys.readouterr().err
