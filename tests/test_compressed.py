"""The course's bitmask save of an unstructured sparse model: fewer bytes, identical weights, and
the layout its module docstring documents (``pruning.compressed``)."""
import json
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
    assert manifest["compression"] == compressed.FORMAT
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


def test_packing_is_the_documented_bit_order():
    """Bit j % 8 of byte j // 8 of a row is column j (written out here, bit by bit)."""
    mask = torch.rand(7, 29, generator=torch.Generator().manual_seed(0)) < 0.5
    expected = torch.zeros(7, 4, dtype=torch.uint8)
    for row, col in mask.nonzero().tolist():
        expected[row, col // 8] |= 1 << (col % 8)
    assert torch.equal(compressed.pack_bitmask(mask), expected)
    assert torch.equal(compressed.unpack_bitmask(compressed.pack_bitmask(mask), mask.shape), mask)


def test_the_file_holds_the_documented_layout(tmp_path):
    from safetensors import safe_open

    model, _ = models.load("tiny-llama", device="cpu")
    magnitude_prune(model, 0.7)
    folder = io.save_pruned(model, tmp_path / "m", compress=True)
    name = "model.layers.0.mlp.down_proj.weight"
    weight = model.state_dict()[name]
    with safe_open(str(folder / io.SPARSE_WEIGHTS), "pt") as f:
        assert f.metadata()["compression"] == compressed.FORMAT
        parts = {suffix: f.get_tensor(name + suffix) for suffix in compressed.SUFFIXES}
        assert name not in f.keys() and "model.norm.weight" in f.keys()  # 1-D: stored as it is
    rows, cols = weight.shape
    assert parts[".bitmask"].dtype == torch.uint8 and parts[".bitmask"].shape == (rows, (cols + 7) // 8)
    assert parts[".row_offsets"].dtype == torch.int32 and parts[".shape"].dtype == torch.int32
    assert parts[".shape"].tolist() == [rows, cols]
    assert torch.equal(parts[".compressed"], weight[weight != 0])  # row-major non-zeros
    starts = [0] + (weight != 0).sum(dim=1).cumsum(0)[:-1].tolist()
    assert parts[".row_offsets"].tolist() == starts


def test_a_save_in_another_layout_is_refused_by_name(tmp_path):
    model, _ = models.load("tiny-llama", device="cpu")
    magnitude_prune(model, 0.7)
    folder = io.save_pruned(model, tmp_path / "m", compress=True)
    manifest = json.loads((folder / io.MANIFEST).read_text())
    manifest["compression"] = "sparse-bitmask"
    (folder / io.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="'sparse-bitmask', a layout this version of the course does not read"):
        io.load_pruned(folder)


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
