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
    from course_lib.cli.bench import report
    results = tmp_path / "results.md"
    results.write_text("# old\n\n## Checks\nx\n\n## Pruning beyond memory (decoder offloaded to disk)\n\n| a |\n")
    assert report._kept_sections(results).strip().startswith("## Pruning beyond memory")
    assert "Checks" not in report._kept_sections(results)


def _offloaded_tiny(tmp_path, name="tiny-llama"):
    model, tokenizer = models.load(name, device="cpu")
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    off, _ = offload.load_offloaded(tmp_path / "ckpt", tmp_path / "offload")
    return off, data.windows_for(tokenizer, name, seq_len=16, n_eval=1, n_calib=2)


def test_the_walk_never_copies_an_offloaded_layer(tmp_path):
    """While a layer is walked, only it is materialized, and save_tensor keeps no copy of it
    (its original is in the store); undo is still exact."""
    from course_lib.pruning import calibrate
    from course_lib.pruning.undo import PruneHandle

    off, windows = _offloaded_tiny(tmp_path)
    original = weights(off)
    layers = arch.decoder_layers(off)
    handle, copies = PruneHandle(), []

    def prune_layer(index, layer, groups):
        others = [p for i, other in enumerate(layers) if i != index for p in other.parameters()]
        assert all(p.device.type == "meta" for p in others)  # one layer in memory at a time
        for group in groups:
            for module in group.modules:
                handle.save_tensor(module.weight.data)
                module.weight.data.mul_(0.5)
        copies.append(len(handle._tensors))

    calibrate.walk(off, windows.calib, lambda stat, x: None, prune_layer, handle=handle)
    assert copies and set(copies) == {0}
    assert not handle._elsewhere  # every mark dropped once its layer went back to the store
    assert not torch.equal(weights(off)["0.self_attn.q_proj.weight"], original["0.self_attn.q_proj.weight"])
    handle.restore()
    assert all(torch.equal(original[k], v) for k, v in weights(off).items())


def _mapped_files() -> list[tuple[int, int, str]]:
    """(start, end, path) of every file mapped into this process."""
    rows = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip().startswith("/"):
                start, end = (int(x, 16) for x in parts[0].split("-"))
                rows.append((start, end, parts[5].strip()))
    return rows


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/self/maps")
def test_a_materialized_layer_is_a_map_of_its_file_not_a_copy(tmp_path):
    """Read from the checkpoint or from a pruned .dat, a layer's weights are pages of that
    file (a private map: RAM only for the pages a prune writes, freed with the layer),
    never a copy on the heap, which glibc does not give back between layers."""
    off, windows = _offloaded_tiny(tmp_path)
    first = wanda_prune(off, windows.calib, 0.5)   # layers now read from the checkpoint, written to .dat
    for source, folder in (("checkpoint", tmp_path / "ckpt"), (".dat", tmp_path / "offload")):
        layer = arch.decoder_layers(off)[1]
        if source == "checkpoint":
            first.restore()
        else:
            wanda_prune(off, windows.calib, 0.5)
        with offload.layer_on_device(layer, write_back=False):
            maps = _mapped_files()
            for name, p in layer.named_parameters():
                ptr = p.data_ptr()
                where = [path for start, end, path in maps if start <= ptr < end]
                assert where and where[0].startswith(str(folder)), (source, name, where)


def test_pruning_an_offloaded_model_twice_undoes_in_turn(tmp_path):
    """A second prune overwrites the first one's .dat files (kept as backups): each restore
    puts back exactly what was there before its prune."""
    off, windows = _offloaded_tiny(tmp_path)
    model, _ = models.load("tiny-llama", device="cpu")  # the same prunes in memory
    original = weights(off)
    first = wanda_prune(off, windows.calib, 0.5)
    after_first = weights(off)
    second = sparsegpt_prune(off, windows.calib, 0.75)
    wanda_prune(model, windows.calib, 0.5)
    sparsegpt_prune(model, windows.calib, 0.75)
    assert all(torch.equal(weights(model)[k], v) for k, v in weights(off).items())  # norms included
    assert any(not torch.equal(after_first[k], v) for k, v in weights(off).items())
    second.restore()
    assert all(torch.equal(after_first[k], v) for k, v in weights(off).items())
    first.restore()
    assert all(torch.equal(original[k], v) for k, v in weights(off).items())


def _files(folder):
    """Every file under ``folder`` (name -> bytes)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_offloaded_prunes_leave_no_backups_behind(tmp_path):
    """Each prune of an offloaded model backs up the .dat files it overwrites (for undo); those
    backups go when the prune is made permanent or restored, so disk use does not grow."""
    off, windows = _offloaded_tiny(tmp_path)
    folder = tmp_path / "offload"
    untouched = _files(folder)
    wanda_prune(off, windows.calib, 0.5).make_permanent()
    one_prune = _files(folder)
    assert len(one_prune) > len(untouched)  # the pruned layers now live in .dat files
    for _ in range(2):
        handle = sparsegpt_prune(off, windows.calib, 0.5)
        assert any(".undo-" in name for name in _files(folder))  # kept while it can be restored
        handle.make_permanent()
        assert _files(folder) == one_prune  # the same files, the same sizes: no backups left

    first = wanda_prune(off, windows.calib, 0.5)
    after_first = _files(folder)  # with first's backups: it may still be restored
    second = sparsegpt_prune(off, windows.calib, 0.75)
    second.restore()
    assert _files(folder) == after_first
    first.restore()
    assert _files(folder) == one_prune


def test_restoring_the_first_prune_of_an_offloaded_model_deletes_its_dat_files(tmp_path):
    off, windows = _offloaded_tiny(tmp_path)
    folder = tmp_path / "offload"
    untouched = _files(folder)
    first = wanda_prune(off, windows.calib, 0.5)
    second = wanda_prune(off, windows.calib, 0.6)
    second.restore()
    first.restore()  # every weight reads from the checkpoint again: no .dat is needed
    assert _files(folder) == untouched


def test_a_live_prune_keeps_its_backups_when_an_earlier_one_is_made_permanent(tmp_path):
    """Stacked prunes b, c; b made permanent (its backups deleted) while c is still live; then
    d: d's backups must not take the name of c's, so d and c still restore exactly."""
    off, windows = _offloaded_tiny(tmp_path)
    wanda_prune(off, windows.calib, 0.5).make_permanent()  # the layers now live in .dat files
    b = wanda_prune(off, windows.calib, 0.6)
    after_b = weights(off)
    c = wanda_prune(off, windows.calib, 0.7)
    after_c = weights(off)
    b.make_permanent()
    d = sparsegpt_prune(off, windows.calib, 0.8)
    d.restore()
    assert all(torch.equal(after_c[k], v) for k, v in weights(off).items())
    c.restore()
    assert all(torch.equal(after_b[k], v) for k, v in weights(off).items())
    assert not any(".undo-" in name for name in _files(tmp_path / "offload"))


def test_a_weights_map_in_memory_undoes_exactly():
    """Layers offloaded to a weights map in memory (accelerate's CPU offload): the walk
    prunes a copy, so the map's own tensors, the originals, come back on restore."""
    from accelerate.hooks import attach_align_device_hook

    model, tokenizer = models.load("tiny-llama", device="cpu")
    reference, _ = models.load("tiny-llama", device="cpu")
    for layer in arch.decoder_layers(model):
        attach_align_device_hook(layer, execution_device="cpu", offload=True,
                                 weights_map={k: v.clone() for k, v in layer.state_dict().items()})
    assert offload.is_offloaded(model)
    windows = data.windows_for(tokenizer, "tiny-llama", seq_len=16, n_eval=1, n_calib=2)
    original = weights(model)
    handle = wanda_prune(model, windows.calib, 0.5)
    wanda_prune(reference, windows.calib, 0.5)
    assert all(torch.equal(weights(reference)[k], v) for k, v in weights(model).items())
    assert handle._tensors == []
    handle.restore()
    assert all(torch.equal(original[k], v) for k, v in weights(model).items())
