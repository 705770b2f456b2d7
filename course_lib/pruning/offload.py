"""Pruning a model that does not fit in memory: one decoder layer on the device at a time.

accelerate loads a model with ``device_map`` so that some modules live "offloaded":
their parameters are ``meta`` placeholders, the real values sit in a *weights map*
(CPU memory, or files on disk: the checkpoint's own safetensors, or ``.dat`` files
in an offload folder), and a hook on each module copies them to the execution
device just before its forward and drops them just after. A forward pass then
never holds more than one module's weights.

The calibration walk (``calibrate.walk``) already works one decoder layer at a
time, so it only needs the layer it is calibrating to stay *materialized* while
it collects statistics, edits weights and runs the pruned layer. ``layer_on_device``
does that:

1. for every offloaded module of the layer, load its weights from the weights map
   onto the execution device and tell its hook not to drop them (``offload=False``);
2. run the body (statistics, pruning, the output pass);
3. write the (pruned) weights back to the store -- a new ``.dat`` file in the
   offload folder, or the CPU weights map -- point the map at them, turn the
   parameters back into ``meta`` and the hook back on.

Undo stays exact without keeping the originals in memory: the prune handle
remembers where each weight's original lives (the map entry pointing at the
checkpoint file, or the overwritten ``.dat`` kept under another name) and puts
that back; while a layer is materialized the handle makes no copy of it either
(``PruneHandle.kept_elsewhere``). Nothing stays behind on disk: ``restore`` moves
each backup back in place (and deletes a ``.dat`` whose original is the
checkpoint), ``make_permanent`` deletes the backups.
Peak memory is then one layer's weights, its calibration activations, and
whatever was never offloaded (embeddings, head), instead of the whole model.
Two details keep it so in practice (bench/results.md, "Pruning beyond memory"):
a layer is read as a private memory map of its file rather than copied, and
glibc's mmap threshold is pinned, so the C heap does not keep what each layer
freed (without both, the heap grew by about the decoder's size over one walk).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .undo import PruneHandle


def _offloaded(layer: nn.Module) -> list[tuple[nn.Module, object]]:
    """(module, accelerate hook) for every module of ``layer`` whose weights are offloaded."""
    found = []
    for module in layer.modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", [hook]):  # SequentialHook holds several
            if getattr(h, "offload", False) and getattr(h, "weights_map", None) is not None:
                found.append((module, h))
    return found


def is_offloaded(model: nn.Module) -> bool:
    """Whether some weights of ``model`` live outside it (accelerate offloading)."""
    return bool(_offloaded(model))


_HEAP_PINNED = False


def _pin_mmap_threshold(size: int = 1 << 20) -> None:
    """Make glibc give every allocation of ``size`` bytes or more its own memory map (once).

    By default glibc raises this threshold (up to 32 MB) each time a mapped block is
    freed, so after the first large temporary every layer-sized tensor comes from the
    C heap instead, and the heap only shrinks from its top: walking one layer after
    another, it grew by about the decoder's size (measured in bench/results.md). With
    the threshold fixed, a freed weight or temporary goes back to the system at once.
    No-op off glibc.
    """
    global _HEAP_PINNED
    if _HEAP_PINNED:
        return
    _HEAP_PINNED = True
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        ctypes.CDLL(None).mallopt(-3, size)  # M_MMAP_THRESHOLD; also turns off the raising
    except (OSError, AttributeError):
        pass


def _on_disk(weights_map, name: str):
    """``(dataset, key)`` where ``weights_map`` reads ``name`` from: the loader itself and the
    full key for a prefixed view of an accelerate ``OffloadedWeightsLoader``."""
    from accelerate.utils.offload import PrefixedDataset

    if isinstance(weights_map, PrefixedDataset):
        return weights_map.dataset, weights_map.prefix + name
    return weights_map, name


def _is_file(dataset, key: str) -> bool:
    """Whether ``dataset`` reads ``key`` from a file (checkpoint safetensors or offload ``.dat``)."""
    from accelerate.utils.offload import OffloadedWeightsLoader

    return isinstance(dataset, OffloadedWeightsLoader) and key not in dataset.state_dict


def _read(weights_map, name: str, device) -> torch.Tensor:
    """The stored value of ``name``, mapped from its file rather than copied into memory.

    accelerate reads an offload ``.dat`` file by copying it into a new tensor; one layer
    after another, those copies (freed again at the end of each layer) fragment the C
    heap, which then grows by about the decoder's size over a walk. A private memory map
    (``torch.from_file(shared=False)``) holds no copy: pages are read from the file when
    used, an in-place edit (pruning) copies only the pages it writes, and everything goes
    back to the system when the tensor is freed. The checkpoint's own safetensors are
    mapped the same way by ``safetensors``.
    """
    dataset, key = _on_disk(weights_map, name)
    if _is_file(dataset, key):
        info = dataset.index[key]
        dtype = getattr(torch, str(info.get("dtype")), None)
        numel = 1
        for size in info.get("shape", ()):
            numel *= size
        if "safetensors_file" not in info and isinstance(dtype, torch.dtype) and numel > 0:
            dat = Path(dataset.save_folder) / f"{key}.dat"
            return torch.from_file(str(dat), shared=False, size=numel, dtype=dtype).view(info["shape"])
        return weights_map[name]  # from the checkpoint: a private map of its safetensors
    # a weights map in memory hands out its own tensor: on its device, work on a copy, so
    # the original stays in the map for undo (``_store`` puts the pruned copy in its place)
    value = weights_map[name]
    return value.clone() if value.device == torch.device(device) else value


def _write_dat(value: torch.Tensor, key: str, folder: Path, index: dict) -> None:
    """``offload_weight`` into ``folder/key.dat``, replacing the file rather than rewriting it:
    a map still open on the old file (``value`` itself, when it was read from there) keeps
    reading the old contents instead of a truncated file."""
    import os

    from accelerate.utils import offload_weight

    staging = folder / ".writing"
    staging.mkdir(exist_ok=True)
    offload_weight(value, key, str(staging), index=index)  # writes the file, updates the index
    os.replace(staging / f"{key}.dat", folder / f"{key}.dat")


def _backup_name(folder: Path, key: str) -> Path:
    """``key.dat.undo-N``, N one more than any backup of ``key`` still there (some may be gone)."""
    taken = [int(p.name.rsplit("-", 1)[1]) for p in folder.glob(f"{key}.dat.undo-*")
             if p.name.rsplit("-", 1)[1].isdigit()]
    return folder / f"{key}.dat.undo-{max(taken, default=-1) + 1}"


def _store(weights_map, name: str, value: torch.Tensor, handle: PruneHandle | None) -> None:
    """Write ``value`` where the map reads ``name`` from; remember how to put the original back."""
    import os

    dataset, key = _on_disk(weights_map, name)
    value = value.detach().to("cpu").contiguous()
    if _is_file(dataset, key):
        folder = Path(dataset.save_folder)
        folder.mkdir(parents=True, exist_ok=True)
        old_info = dict(dataset.index[key])
        dat = folder / f"{key}.dat"
        backup = None
        if "safetensors_file" not in old_info and dat.exists():  # an earlier .dat: keep it
            backup = _backup_name(folder, key)
            os.replace(dat, backup)  # a rename: an open map of it still reads the same bytes
        _write_dat(value, key, folder, dataset.index)
        if handle is None:  # nothing will ever restore it
            if backup is not None:
                backup.unlink()
            return

        def undo(index=dataset.index, key=key, old_info=old_info, backup=backup, dat=dat):
            if backup is not None:
                os.replace(backup, dat)  # the earlier .dat back in place, and no copy left
            else:  # the original is the checkpoint's: this prune's .dat goes
                dat.unlink(missing_ok=True)
            index[key] = old_info
        handle.on_restore(undo)
        if backup is not None:
            handle.on_permanent(lambda backup=backup: backup.unlink(missing_ok=True))
        return
    from accelerate.utils.offload import OffloadedWeightsLoader

    mapping = dataset.state_dict if isinstance(dataset, OffloadedWeightsLoader) else dataset
    old = mapping[key]
    mapping[key] = value
    if handle is not None:
        handle.on_restore(lambda mapping=mapping, key=key, old=old: mapping.__setitem__(key, old))


@contextmanager
def layer_on_device(layer: nn.Module, handle: PruneHandle | None = None, write_back: bool = True):
    """Keep an offloaded ``layer``'s weights on its execution device for the block, then
    write them back to their store (no-op for a layer that is not offloaded).
    ``write_back=False``: only read them (the store is left as it was)."""
    from accelerate.utils import set_module_tensor_to_device

    entries = _offloaded(layer)
    if entries:
        _pin_mmap_threshold()
    for module, hook in entries:
        for name, _ in module.named_parameters(recurse=False):
            set_module_tensor_to_device(module, name, hook.execution_device,
                                        value=_read(hook.weights_map, name, hook.execution_device))
            if handle is not None:  # its original is in the store: the handle keeps no copy
                handle.kept_elsewhere(getattr(module, name).data)
        hook.offload = False  # the hook now leaves the weights where they are
    try:
        yield
    finally:
        for module, hook in entries:
            for name, param in module.named_parameters(recurse=False):
                if write_back:
                    _store(hook.weights_map, name, param.data, handle)
                if handle is not None:
                    handle.forget_tensor(param.data)  # its original is in the store (kept_elsewhere)
                set_module_tensor_to_device(module, name, "meta")
            hook.offload = True


def achieved_sparsity(model: nn.Module) -> float:
    """Zeros among the decoder's prunable weights, reading offloaded layers from their store."""
    from ..core import arch

    zeros = total = 0
    for layer in arch.decoder_layers(model):
        with layer_on_device(layer, write_back=False):
            for module in layer.modules():
                if arch.is_linear(module):
                    zeros += int((module.weight == 0).sum())
                    total += module.weight.numel()
    return zeros / total


def decoder_device_map(model_or_config, where: str = "disk", device: str = "cpu") -> dict[str, str]:
    """A ``device_map`` keeping everything on ``device`` except the decoder layers (``where``)."""
    config = getattr(model_or_config, "config", model_or_config)
    if config.model_type == "gpt2":
        rest = ["transformer.wte", "transformer.wpe", "transformer.drop", "transformer.ln_f", "lm_head"]
        return {**{name: device for name in rest}, "transformer.h": where}
    rest = ["model.embed_tokens", "model.norm", "model.rotary_emb", "lm_head"]
    return {**{name: device for name in rest}, "model.layers": where}


def load_offloaded(folder, offload_folder, device: str = "cpu", dtype=torch.float32):
    """``(model, tokenizer)`` from a saved checkpoint with the decoder layers left on disk.

    Each layer is read from ``folder``'s safetensors when a forward (or the
    calibration walk) needs it; pruned layers are written to ``offload_folder``.
    """
    from ..core.models import quiet_transformers

    hf = quiet_transformers()
    AutoConfig, AutoModelForCausalLM, AutoTokenizer = hf.AutoConfig, hf.AutoModelForCausalLM, hf.AutoTokenizer
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, device_map=decoder_device_map(config, "disk", device),
        offload_folder=str(offload_folder))
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)
