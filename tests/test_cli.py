"""The command line: JSON on stdout, clear errors."""
import json
import subprocess
import sys

import pytest

from course_lib.cli.main import main
from course_lib.core import models


def test_info_json_on_a_tiny_model(capsys):
    assert main(["info", "tiny-llama", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["heads"] == 6 and info["kv_heads"] == 2 and info["layers"] == 2
    assert info["flops_per_token"]["total"] > 0


def test_eval_json_has_the_promised_keys(capsys):
    assert main(["eval", "tiny-gpt2", "--json", "--seq-len", "32", "--n-eval", "2", "--runs", "2",
                 "--latency-tokens", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("model", "perplexity", "eval_tokens", "latency_ms_median", "latency_ms_iqr",
                "device", "threads"):
        assert key in result
    assert result["eval_tokens"] == 2 * 31 and result["threads"] == 2


def test_unknown_model_exits_2_with_advice(capsys):
    assert main(["info", "no-such-model"]) == 2
    assert "embedded model" in capsys.readouterr().err


@pytest.mark.embedded
def test_eval_embedded_model_in_a_fresh_process(smollm2):
    """A second load reads the safetensors cache (no GGUF conversion, the cache untouched).

    How long that takes is the benchmark's business, never a test's."""
    cached = models.cache_dir() / "smollm2-135m"
    before = {p.name: p.stat().st_mtime_ns for p in cached.iterdir()}
    out = subprocess.run([sys.executable, "-m", "course_lib", "eval", "smollm2-135m", "--json",
                          "--n-eval", "2", "--seq-len", "128", "--runs", "2"],
                         capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert 5 < result["perplexity"] < 60
    assert "converting" not in out.stdout + out.stderr  # the GGUF was not read again
    assert {p.name: p.stat().st_mtime_ns for p in cached.iterdir()} == before
    assert result["load_seconds"] >= 0  # reported, not judged
