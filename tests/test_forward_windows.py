"""One loop runs windows through a model for every activation statistic (``arch.forward_windows``):
each batch goes to the device of the model that reads it, and no module keeps a loop of its own.

There is no GPU here, so the device move is proved on the ``meta`` device: a model moved
there reports ``meta`` for its parameters, and a pre-hook on its input embedding records
where the token ids arrive (then stops the forward: a meta model computes no numbers).
Without the move, the ids would arrive on the CPU, where the windows are made.
"""
import copy
import re
from pathlib import Path

import pytest
import torch

from course_lib.core import arch, models
from course_lib.pruning import allocation, heads, layers, mlp, one_layer
from course_lib.recover import repair

WINDOWS = torch.randint(0, 256, (5, 12), generator=torch.Generator().manual_seed(0))


class _Arrived(Exception):
    """Raised by the embedding hook once it has seen where the token ids are."""


def _watch_input_device(model, seen: list, stop: bool = True):
    def hook(module, args):
        seen.append(args[0].device.type)
        if stop:
            raise _Arrived
    return model.get_input_embeddings().register_forward_pre_hook(hook)


SCORES = {
    "heads.head_importance_contribution": lambda m: heads.head_importance_contribution(m, WINDOWS),
    "mlp.neuron_importance_activation": lambda m: mlp.neuron_importance_activation(m, WINDOWS),
    "layers.block_influence": lambda m: layers.block_influence(m, WINDOWS),
    "allocation.outlier_shares": lambda m: allocation.outlier_shares(m, WINDOWS),
    "one_layer.module_inputs": lambda m: one_layer.module_inputs(m, arch.mlp(arch.decoder_layers(m)[0]).down_proj,
                                                                 WINDOWS),
}


@pytest.mark.parametrize("name", list(SCORES))
def test_every_score_moves_the_windows_to_the_models_device(name):
    model, _ = models.load("tiny-llama", device="cpu")
    model.to("meta")
    seen = []
    hook = _watch_input_device(model, seen)
    try:
        with pytest.raises(_Arrived):
            SCORES[name](model)
    finally:
        hook.remove()
    assert seen == ["meta"]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())  # all removed


def test_the_paired_collect_sends_each_model_its_own_device():
    """repair.collect runs the dense model and the pruned one in lockstep: each gets the batch
    on its own device (the dense one here on the CPU, the pruned one on meta)."""
    dense, _ = models.load("tiny-llama", device="cpu")
    pruned = copy.deepcopy(dense).to("meta")
    seen_dense, seen_pruned = [], []
    hooks = [_watch_input_device(dense, seen_dense, stop=False), _watch_input_device(pruned, seen_pruned)]
    try:
        with pytest.raises(_Arrived):
            repair.collect(pruned, dense, WINDOWS)
    finally:
        for h in hooks:
            h.remove()
    assert (seen_dense, seen_pruned) == (["cpu"], ["meta"])  # dense first, then the pruned model


def test_forward_windows_batches_hooks_and_tokens():
    model, _ = models.load("tiny-llama", device="cpu")
    twin = copy.deepcopy(model)
    layer = arch.decoder_layers(model)[1]
    order, batches, hidden = [], [], []

    def kwargs_hook(module, args, kwargs, output):
        hidden.append((args[0] if args else kwargs["hidden_states"]).shape)

    tokens = arch.forward_windows(
        model, WINDOWS, batch_size=2, paired=twin,
        pre_hooks={model.get_input_embeddings(): lambda m, a: order.append(("model", a[0].shape[0])),
                   twin.get_input_embeddings(): lambda m, a: order.append(("paired", a[0].shape[0]))},
        kwargs_hooks={layer: kwargs_hook},
        after_batch=lambda: batches.append(len(order)))
    assert tokens == WINDOWS.numel()
    assert order == [("paired", 2), ("model", 2), ("paired", 2), ("model", 2), ("paired", 1), ("model", 1)]
    assert batches == [2, 4, 6]  # after both models ran each batch
    assert hidden == [(2, 12, model.config.hidden_size)] * 2 + [(1, 12, model.config.hidden_size)]
    assert not any(m._forward_pre_hooks or m._forward_hooks or m._forward_hooks_with_kwargs
                   for m in [*model.modules(), *twin.modules()])


def test_forward_windows_removes_its_hooks_when_a_hook_fails():
    model, _ = models.load("tiny-llama", device="cpu")

    def fails(module, args):
        raise RuntimeError("a hook failed")

    with pytest.raises(RuntimeError, match="a hook failed"):
        arch.forward_windows(model, WINDOWS, pre_hooks={arch.decoder_layers(model)[0]: fails})
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_no_module_keeps_a_batch_and_hook_loop_of_its_own():
    """Hooks on a whole model's forward are registered in one place: ``arch.forward_windows``
    (the calibration walk registers its own on single decoder layers it runs itself, and
    ``cancel.checkpoints_inside`` a pre-hook that reads nothing: it only stops stale work)."""
    root = Path(arch.__file__).resolve().parents[1]
    allowed = {root / "core" / "arch.py", root / "pruning" / "calibrate.py", root / "core" / "cancel.py"}
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if path not in allowed and re.search(r"register_forward(_pre)?_hook", path.read_text())]
    assert offenders == []


def test_a_hook_can_stop_a_batch_early_and_the_next_batch_still_runs():
    from course_lib.core import arch, models

    model = models.load("tiny-llama")[0]
    layers = arch.decoder_layers(model)
    seen = {"first": 0, "last": 0}

    def first(_, args):
        seen["first"] += 1
        raise arch.StopForward

    def last(_, args):
        seen["last"] += 1

    windows = torch.randint(0, model.config.vocab_size, (5, 8))
    tokens = arch.forward_windows(model, windows, 2, pre_hooks={layers[0]: first, layers[-1]: last})
    assert seen == {"first": 3, "last": 0} and tokens == 40  # 3 batches, none past the first layer
