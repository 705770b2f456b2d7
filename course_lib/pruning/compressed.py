"""Saving an unstructured sparse model in fewer bytes: the course's bitmask layout.

A 50%-sparse matrix saved densely spends 32 bits on every zero. The course's own
bitmask layout (``FORMAT``, written by ``prune --save --compress`` and
``runtime.store.save_bitmask``) stores, per sparse 2-D weight ``W`` (rows x cols),
four tensors in one safetensors file:

- ``NAME.bitmask``: one bit per entry, 1 where ``W`` is non-zero, packed eight to a
  byte along each row (bit ``j % 8`` of byte ``j // 8`` is column ``j``):
  rows x ceil(cols / 8) uint8;
- ``NAME.compressed``: the non-zero values in row-major order, in ``W``'s dtype;
- ``NAME.row_offsets``: where each row starts in ``compressed``: rows int32;
- ``NAME.shape``: ``(rows, cols)`` int32;

where ``NAME`` is the state-dict key (``model.layers.0.mlp.down_proj.weight``). Every
other tensor (1-D, integer, or not sparse enough to gain) is stored under its own key,
as it is. The file's metadata says ``compression: FORMAT``.

Cost per entry, fp32, sparsity s: ``1 + 32 (1 - s)`` bits instead of 32, so the file
shrinks only once s > 1/32 (about 3%), reaches 0.53x of dense at 50% and 0.33x at 70%.
Decompression scatters ``compressed`` back where the bitmask says: the weights come
back bit for bit (exact zeros stay zeros, every other value is copied).

Only the course reads this file (``io.load_pruned`` rebuilds the dense model from it):
no other tool or serving runtime does. It is about bytes on disk, not speed: loading
gives back dense matrices, which run exactly as long as before.
"""
from __future__ import annotations

import numpy as np
import torch

FORMAT = "course-bitmask-v1"
SUFFIXES = (".bitmask", ".compressed", ".row_offsets", ".shape")


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """rows x cols bool -> rows x ceil(cols/8) uint8, bit j%8 of byte j//8 = column j."""
    return torch.from_numpy(np.packbits(mask.cpu().numpy().astype(np.uint8), axis=-1, bitorder="little"))


def unpack_bitmask(packed: torch.Tensor, shape) -> torch.Tensor:
    bits = np.unpackbits(packed.cpu().numpy(), axis=-1, count=int(shape[-1]), bitorder="little")
    return torch.from_numpy(bits.reshape(tuple(int(d) for d in shape)).astype(bool))


def compress_weight(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """One 2-D weight -> its four bitmask tensors (suffix -> tensor)."""
    w = weight.detach().cpu().contiguous()
    mask = w != 0
    return {".bitmask": pack_bitmask(mask),
            ".compressed": w[mask].clone(),  # row-major order of the non-zeros
            ".row_offsets": torch.cat([torch.zeros(1, dtype=torch.int64),
                                       mask.sum(dim=1).cumsum(0)[:-1]]).to(torch.int32),
            ".shape": torch.tensor(list(w.shape), dtype=torch.int32)}


def decompress_weight(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = parts[".shape"].tolist()
    mask = unpack_bitmask(parts[".bitmask"], shape)
    dense = torch.zeros(shape, dtype=parts[".compressed"].dtype)
    dense[mask] = parts[".compressed"]
    return dense


def worth_compressing(weight: torch.Tensor) -> bool:
    """2-D and sparse enough that the bitmask layout is smaller than the dense tensor."""
    if weight.dim() != 2 or not weight.is_floating_point():
        return False
    bits = weight.element_size() * 8
    nonzero = int(torch.count_nonzero(weight))
    return weight.numel() + nonzero * bits + 32 * (weight.shape[0] + 2) < weight.numel() * bits


def compress_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sparse 2-D weights in bitmask form, every other tensor as it is."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if worth_compressing(tensor):
            out.update({name + suffix: t for suffix, t in compress_weight(tensor).items()})
        else:
            out[name] = tensor.detach().cpu().contiguous()
    return out


def decompress_state_dict(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``compress_state_dict``."""
    out: dict[str, torch.Tensor] = {}
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in stored.items():
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            out[key] = tensor
        else:
            grouped.setdefault(key[: -len(suffix)], {})[suffix] = tensor
    for name, parts in grouped.items():
        if set(parts) != set(SUFFIXES):
            raise ValueError(f"{name}: the file holds {sorted(parts)} of the four bitmask parts "
                             f"{list(SUFFIXES)}: it is damaged.")
        out[name] = decompress_weight(parts)
    return out
