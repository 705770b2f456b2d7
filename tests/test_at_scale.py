"""docs/at-scale.md: every command it shows runs, on a tiny model of the same architecture.

The blocks are read from the page itself (so the page cannot drift from what is
tested); model ids become tiny models, ``--device cuda`` / ``device="cuda"`` become the
CPU, the windows get short. Blocks marked "NOT run by the tests" are skipped.
"""
import re
import shlex
from pathlib import Path

import pytest

from course_lib.cli.main import main
from course_lib.core import models

DOC = Path(__file__).resolve().parents[1] / "docs" / "at-scale.md"
TINY_FOR = {"gpt2": "tiny-gpt2", "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tiny-llama",
            "Qwen/Qwen2.5-0.5B": "tiny-qwen2", "meta-llama/Llama-2-7b-hf": "tiny-llama"}
FAST = {"eval": ["--seq-len", "32", "--n-eval", "2", "--runs", "2", "--latency-tokens", "16"],
        "prune": ["--seq-len", "32", "--n-eval", "2", "--n-calib", "2", "--runs", "2",
                  "--latency-tokens", "16"], "info": []}


def blocks(language):
    text = DOC.read_text()
    return [b for b in re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)
            if "NOT run by the tests" not in b]


def test_the_page_is_linked_from_the_readme():
    assert "docs/at-scale.md" in (DOC.parents[1] / "README.md").read_text()


def test_shell_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = [line for b in blocks("bash") for line in b.splitlines()
                if line.startswith("python -m course_lib")]
    assert len(commands) == 5
    for line in commands:
        argv = shlex.split(line)[3:]
        argv = [TINY_FOR.get(a, a) for a in argv]
        if "--device" in argv:
            del argv[argv.index("--device"):argv.index("--device") + 2]
        assert main(argv + FAST[argv[0]]) == 0, line
    assert (tmp_path / "qwen-mlp25" / "config.json").is_file()  # a standard checkpoint
    assert "mlp_width" in capsys.readouterr().out


def test_python_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, tokenizer = models.load("tiny-llama", device="cpu")  # stands in for the 7B checkpoint
    model.save_pretrained(tmp_path / "tiny-llama-ckpt")
    tokenizer.save_pretrained(tmp_path / "tiny-llama-ckpt")
    sources = blocks("python")
    assert len(sources) == 2
    for source in sources:
        source = source.replace('"meta-llama/Llama-2-7b-hf"', repr(str(tmp_path / "tiny-llama-ckpt")))
        source = source.replace('"Qwen/Qwen2.5-0.5B"', '"tiny-qwen2"').replace('device="cuda"', 'device="cpu"')
        source = re.sub(r"seq_len=\d+, n_eval=\d+, n_calib=\d+", "seq_len=32, n_eval=2, n_calib=2", source)
        exec(compile(source, str(DOC), "exec"), {})
    # the offloaded, pruned model was saved with its pruned weights: half zeros in the decoder
    import torch
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "llama2-7b-wanda50")
    q = saved.model.layers[1].self_attn.q_proj.weight
    assert q.device.type == "cpu" and (q == 0).float().mean().item() == pytest.approx(0.5)
    assert not torch.equal(q, model.model.layers[1].self_attn.q_proj.weight)
