"""A model on disk: real files, measured with the file system.

Four ways to store the same weights, each written to a file whose size
``metrics.file_bytes`` reads back with ``os.stat`` (never computed from shapes):

- ``save_safetensors``: every float32 value, zeros included (what ``save_pretrained`` writes);
- ``compress_file``: that file through zstd (or gzip): zeros and repeated bytes shrink;
- ``save_bitmask``: the non-zeros of each sparse matrix plus one bit per position, the
  course's own bitmask layout (``pruning.compressed``, which ``prune --save --compress``
  writes too; only the course reads it);
- ``save_torch``: ``torch.save`` of any state dict, e.g. an int8-quantized model's.

A structurally pruned model needs none of the tricks: its matrices are smaller,
so its plain file is smaller.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from torch import nn

from ..pruning import compressed

CODECS = ("zstd", "gzip")


def save_safetensors(model: nn.Module, path: str | Path) -> Path:
    """The float weights as one safetensors file (a tied lm_head is stored once)."""
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, str(path))
    return path


def compress_file(source: str | Path, codec: str = "zstd", level: int = 3) -> Path:
    """``source`` compressed with ``codec`` into ``source.zst`` / ``source.gz``; returns the new path."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is unknown: use one of {CODECS}.")
    source = Path(source)
    if codec == "gzip":
        target = source.with_name(source.name + ".gz")
        with open(source, "rb") as src, gzip.open(target, "wb", compresslevel=level) as dst:
            shutil.copyfileobj(src, dst)
        return target
    from .optional import require

    zstandard = require("zstandard", what="zstd compression")
    target = source.with_name(source.name + ".zst")
    with open(source, "rb") as src, open(target, "wb") as dst:
        zstandard.ZstdCompressor(level=level).copy_stream(src, dst)
    return target


def bitmask_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict in the course's bitmask layout (``pruning.compressed``: every 2-D weight sparse
    enough to gain as ``.bitmask`` / ``.compressed`` / ``.row_offsets`` / ``.shape``, the rest as
    it is); a tied copy (lm_head = embedding) is stored once."""
    unique: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        unique[name] = tensor
    return compressed.compress_state_dict(unique)


def unpack_bitmask(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense tensors back from ``bitmask_state`` (bit for bit)."""
    return compressed.decompress_state_dict(state)


def save_bitmask(model: nn.Module, path: str | Path) -> Path:
    """The model in the bitmask layout, as a safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(bitmask_state(model), str(path))
    return path


def save_torch(model: nn.Module, path: str | Path) -> Path:
    """``torch.save`` of the state dict (quantized modules store their packed int8 weights)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
