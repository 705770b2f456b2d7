"""The undo store: one copy per tensor, however it is reached; restore is bit for bit."""
import torch
from torch import nn

from course_lib.pruning.undo import PruneHandle


def test_a_parameter_saved_twice_through_data_is_copied_once():
    layer = nn.Linear(8, 4)
    original = layer.weight.detach().clone()
    handle = PruneHandle("test")
    handle.save_tensor(layer.weight.data)  # .data: a new tensor object at every access
    layer.weight.data.mul_(0)
    handle.save_tensor(layer.weight.data)  # already saved: the zeroed state must not be kept
    handle.save_tensor(layer.weight)
    assert len(handle._tensors) == 1
    handle.restore()
    assert torch.equal(layer.weight, original)


def test_different_views_of_one_storage_are_saved_separately():
    base = torch.arange(12.0)
    first, second = base[:6], base[6:]  # one storage, two regions
    handle = PruneHandle("test")
    handle.save_tensor(first)
    handle.save_tensor(second)
    assert len(handle._tensors) == 2
    base.zero_()
    handle.restore()
    assert torch.equal(base, torch.arange(12.0))
