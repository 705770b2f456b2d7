"""Every prune can be undone, bit for bit, until it is made permanent.

A pruning function records what it is about to change in a ``PruneHandle``
*before* changing it:
- ``handle.save_tensor(t)`` before editing a tensor in place (masks, SparseGPT's
  weight updates): a clone is kept;
- ``handle.set_attr(obj, name, value)`` instead of ``setattr`` (swapping a sliced
  Linear into a layer, changing ``num_key_value_groups``): the old value is kept.

``handle.restore()`` puts everything back in reverse order; ``handle.make_permanent()``
drops the copies (frees memory, and the disk an offloaded prune's backups took; no way
back after that).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch


_MISSING = object()  # marks an attribute that did not exist before the prune


class PruneHandle:
    """Remembers the original tensors and attributes that a prune changed."""

    def __init__(self, description: str = "prune"):
        self.description = description
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._attrs: list[tuple[Any, str, Any]] = []
        self._seen: set[tuple] = set()
        self._undos: list = []  # callables that put back what no tensor copy holds (offloaded weights)
        self._releases: list = []  # callables that drop what only a restore would need (backup files)
        self._elsewhere: set[int] = set()  # storages whose originals are kept outside (offload store)
        self.permanent = False
        self.info: dict[str, Any] = {}  # what was pruned (masks, kept indices...), for reports

    def save_tensor(self, tensor: torch.Tensor) -> None:
        """Keep a copy of ``tensor`` (once) before it is edited in place.

        "Once" is decided by the memory the tensor covers, not by the Python object:
        ``param.data`` is a new tensor object at every access, but the same memory.
        """
        if tensor.untyped_storage().data_ptr() in self._elsewhere:
            return  # its original stays in the offload store: no copy in memory
        key = self._key(tensor)
        if key not in self._seen:
            self._seen.add(key)
            self._tensors.append((tensor, tensor.detach().clone()))

    def kept_elsewhere(self, tensor: torch.Tensor) -> None:
        """``tensor``'s original is kept outside the model (an offload store that ``on_restore``
        puts back): ``save_tensor`` makes no copy of it until ``forget_tensor``."""
        self._elsewhere.add(tensor.untyped_storage().data_ptr())

    def forget_tensor(self, tensor: torch.Tensor) -> None:
        """Drop the copy kept of ``tensor`` (its original is kept elsewhere, e.g. on disk)."""
        # ``param.data`` is a new Python object on every access: match the memory, not the object
        ptr = tensor.untyped_storage().data_ptr()
        self._elsewhere.discard(ptr)  # the memory may be reused by another tensor later
        kept = [(t, o) for t, o in self._tensors if t.untyped_storage().data_ptr() != ptr]
        for t, _ in self._tensors:
            if t.untyped_storage().data_ptr() == ptr:
                self._seen.discard(self._key(t))
        self._tensors = kept

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple:
        return (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride())

    def on_restore(self, undo) -> None:
        """Call ``undo()`` on restore (after the tensors and attributes, in reverse order)."""
        self._undos.append(undo)

    def on_permanent(self, release) -> None:
        """Call ``release()`` when the prune is made permanent (delete what only ``restore`` needed)."""
        self._releases.append(release)

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """``setattr(obj, name, value)``, remembering the old value (or that there was none)."""
        self._attrs.append((obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back every saved tensor and attribute, exactly as they were."""
        if self.permanent:
            raise RuntimeError(f"{self.description} was made permanent: there is nothing to restore. "
                               "Reload the model instead.")
        for obj, name, old in reversed(self._attrs):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        for tensor, original in reversed(self._tensors):
            tensor.copy_(original)
        for undo in reversed(self._undos):
            undo()
        self._clear()

    def make_permanent(self) -> None:
        """Forget the originals: the pruned model is now the model."""
        for release in self._releases:
            release()
        self._clear()
        self.permanent = True

    def _clear(self) -> None:
        self._tensors.clear()
        self._attrs.clear()
        self._seen.clear()
        self._undos.clear()
        self._releases.clear()
        self._elsewhere.clear()

    def __repr__(self) -> str:
        return (f"PruneHandle({self.description!r}, tensors={len(self._tensors)}, "
                f"attrs={len(self._attrs)}, permanent={self.permanent})")


@contextmanager
def restoring_on_error(handle: PruneHandle):
    """Run a prune; if it fails half-way, restore what it had already changed and re-raise."""
    try:
        yield handle
    except BaseException:
        handle.restore()
        raise
