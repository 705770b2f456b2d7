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


HEAVY = ("torch", "transformers", "torchao", "onnx", "onnxruntime")


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv", [
    ["--help"], ["prune", "--help"], ["ship", "--help"], ["bench", "--help"],
    ["eval", "tiny-llama", "--runs", "0"],                        # argparse's type check
    ["prune", "tiny-llama", "--method", "lottery"],               # the method's name
    ["prune", "tiny-llama", "--method", "heads", "--pattern", "2:4"],
    ["prune", "tiny-llama", "--method", "magnitude", "--recover", "refit"],
    ["ship", "tiny-llama", "--recipe", "wanda"],
])
def test_help_and_option_errors_import_no_model_code(argv):
    """--help and a bad option answer before torch, transformers or a runtime is imported (they take
    seconds); the answer is the usual one: usage with code 0, or one error line with code 2."""
    done = _fresh("import json, sys\nfrom course_lib.cli.main import main\n"
                  f"code = main({argv!r})\n"
                  f"print(json.dumps([code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))")
    code, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert imported == [], f"{argv} imported {imported}"
    if "--help" in argv:
        assert code == 0 and "usage:" in done.stdout
    else:
        assert code == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_model_command_prints_no_third_party_noise():
    """`info tiny-llama` loads a model, which makes transformers import torchao: stderr stays empty
    (torchao's failed GPU kernel libraries and torch's pytree deprecation notes are not the user's)."""
    done = subprocess.run([sys.executable, "-m", "course_lib", "info", "tiny-llama"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "architecture: LlamaForCausalLM" in done.stdout
    assert done.stderr == "", done.stderr


def test_importing_the_library_for_a_lesson_prints_nothing():
    """What a lesson's first cell imports, then a model load and the int8 runtime: no output at all."""
    done = _fresh("from course_lib.core import models\nfrom course_lib.runtime import quantize, export\n"
                  "from course_lib.teaching import lesson\n"
                  "model, _ = models.load('tiny-llama')\n"
                  "quantize.quantized_copy(model, 'torchao-int8-weight')\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == "", done.stdout + done.stderr
