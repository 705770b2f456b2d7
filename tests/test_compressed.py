"""The bitmask save of an unstructured sparse model: fewer bytes, identical weights."""
import pytest
import torch

from course_lib.core import models
from course_lib.pruning import compressed, io
from course_lib.pruning import heads as H
from course_lib.pruning.masks import magnitude_prune


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_round_trip_is_bit_exact_and_smaller(tmp_path, name):
    model, tokenizer = models.load(name, device="cpu")
    handle = magnitude_prune(model, 0.7)
    dense_folder = io.save_pruned(model, tmp_path / "dense", handle, tokenizer=tokenizer)
    small_folder = io.save_pruned(model, tmp_path / "small", handle, tokenizer=tokenizer, compress=True)
    manifest = io.read_manifest(small_folder)
    assert manifest["compression"] == "sparse-bitmask"
    assert manifest["bytes_on_disk"] == io.folder_bytes(small_folder) - (small_folder / io.MANIFEST).stat().st_size
    dense_bytes = (dense_folder / io.WEIGHTS).stat().st_size
    sparse_bytes = (small_folder / io.SPARSE_WEIGHTS).stat().st_size
    assert sparse_bytes < 0.8 * dense_bytes  # the decoder is most of a tiny model's weights
    loaded, _ = io.load_pruned(small_folder)
    assert same_weights(loaded, model)


def test_structured_and_sparse_together(tmp_path):
    model, tokenizer = models.load("tiny-llama", device="cpu")
    H.remove_heads(model, {0: [0, 1, 2]})  # layers differ: recipe format
    magnitude_prune(model, 0.5)
    io.save_pruned(model, tmp_path / "m", compress=True)
    assert same_weights(io.load_pruned(tmp_path / "m")[0], model)


def test_packing_matches_compressed_tensors():
    ct = pytest.importorskip("compressed_tensors.utils")
    mask = torch.rand(7, 29, generator=torch.Generator().manual_seed(0)) < 0.5
    assert torch.equal(compressed.pack_bitmask(mask), ct.pack_bitmasks(mask))
    assert torch.equal(compressed.unpack_bitmask(compressed.pack_bitmask(mask), mask.shape), mask)


def test_weight_round_trip_and_damaged_file():
    w = torch.randn(5, 11, generator=torch.Generator().manual_seed(1))
    w[w.abs() < 0.7] = 0
    parts = compressed.compress_weight(w)
    assert parts[".compressed"].numel() == int((w != 0).sum())
    assert torch.equal(compressed.decompress_weight(parts), w)
    assert not compressed.worth_compressing(torch.randn(8, 64))  # dense: stays dense
    stored = {"x" + k: v for k, v in parts.items() if k != ".row_offsets"}
    with pytest.raises(ValueError, match="damaged"):
        compressed.decompress_state_dict(stored)


def test_compress_and_standard_together_is_refused(tmp_path):
    model, _ = models.load("tiny-llama", device="cpu")
    with pytest.raises(ValueError, match="not both"):
        io.save_pruned(model, tmp_path / "m", compress=True, standard=True)
