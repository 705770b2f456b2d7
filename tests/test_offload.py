"""Wanda and SparseGPT on a model whose decoder lives on disk (accelerate offloading):
the same masks and the same perplexity as in memory, and undo still exact."""
import pytest
import torch

from course_lib.core import arch, data, metrics, models
from course_lib.pruning import offload
from course_lib.pruning.sparsegpt import sparsegpt_prune
from course_lib.pruning.wanda import wanda_prune

PRUNERS = {"wanda": wanda_prune, "sparsegpt": sparsegpt_prune}


def weights(model):
    """Every decoder weight, read from the store for offloaded layers."""
    out = {}
    for i, layer in enumerate(arch.decoder_layers(model)):
        with offload.layer_on_device(layer, write_back=False):
            out.update({f"{i}.{n}": p.detach().clone() for n, p in layer.named_parameters()})
    return out


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_offloaded_walk_matches_in_memory(tmp_path, name, method):
    model, tokenizer = models.load(name, device="cpu")
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    windows = data.windows_for(tokenizer, name, seq_len=32, n_eval=2, n_calib=4)
    off, _ = offload.load_offloaded(tmp_path / "ckpt", tmp_path / "offload")
    assert offload.is_offloaded(off)
    assert all(p.device.type == "meta" for p in arch.decoder_layers(off).parameters())
    original = weights(off)

    in_memory = PRUNERS[method](model, windows.calib, 0.5, batch_size=2)
    on_disk = PRUNERS[method](off, windows.calib, 0.5, batch_size=2)
    assert on_disk.info["masks"].keys() == in_memory.info["masks"].keys()
    for key, mask in in_memory.info["masks"].items():
        assert torch.equal(on_disk.info["masks"][key], mask), key
    assert on_disk.info["sparsity"] == pytest.approx(in_memory.info["sparsity"])
    assert all(p.device.type == "meta" for p in arch.decoder_layers(off).parameters())  # back on disk
    assert metrics.perplexity(off, windows.eval) == metrics.perplexity(model, windows.eval)

    on_disk.restore()  # originals come back from the checkpoint, not from a copy in memory
    assert all(torch.equal(original[k], v) for k, v in weights(off).items())


def test_the_walk_keeps_no_copy_of_offloaded_weights(tmp_path):
    """The originals of an offloaded layer stay in the store: the handle holds no tensor copy."""
    model, tokenizer = models.load("tiny-llama", device="cpu")
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    off, _ = offload.load_offloaded(tmp_path / "ckpt", tmp_path / "offload")
    windows = data.windows_for(tokenizer, "tiny-llama", seq_len=16, n_eval=1, n_calib=2)
    handle = wanda_prune(off, windows.calib, 0.5)
    assert handle._tensors == [] and handle._undos  # restored from the store, not from memory


def test_a_bench_rerun_keeps_the_offload_section(tmp_path):
    from course_lib.cli import bench
    results = tmp_path / "results.md"
    results.write_text("# old\n\n## Checks\nx\n\n## Pruning beyond memory (decoder offloaded to disk)\n\n| a |\n")
    assert bench._kept_sections(results).strip().startswith("## Pruning beyond memory")
    assert "Checks" not in bench._kept_sections(results)
