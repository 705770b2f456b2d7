"""One recovery name -> what runs: shared by the command line, the benchmark and the lessons.

- ``none``: nothing;
- ``refit``: the closed-form least-squares refit of the output projections
  (``repair.refit``), for removed neurons or heads;
- ``distil``: ``steps`` of KL distillation from the dense model (``distil.distil``);
  after a refit when the shapes allow it (``refit+distil`` in the reports).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import arch
from ..core.names import DEFAULT_STEPS, RECOVERY, check_recovery  # noqa: F401 (re-exported)
from ..pruning.undo import PruneHandle
from . import distil as D
from . import repair as R


def can_refit(pruned: nn.Module, dense: nn.Module) -> bool:
    """Whether layer i of the pruned model is still layer i of the dense one (no layer removed)."""
    return len(arch.decoder_layers(pruned)) == len(arch.decoder_layers(dense))


def recover_with(pruned: nn.Module, dense: nn.Module, recover: str, calib: torch.Tensor,
                 steps: int = DEFAULT_STEPS, quiet: bool = True, **distil_kwargs) -> list[PruneHandle]:
    """Run a recovery in place; returns its undo handles (restore them in reverse order)."""
    check_recovery(recover, steps)
    if recover == "none":
        return []
    if recover == "long":
        raise ValueError("--recover long is one cached recovery (course_lib.recover.long: make recover), "
                         "not a recipe to run on any model: use --recover distil with --steps.")
    if calib is None or len(calib) == 0:
        raise ValueError(f"--recover {recover} needs calibration windows (n_calib > 0).")
    if recover == "refit" and not can_refit(pruned, dense):
        raise ValueError("--recover refit repairs layers whose neurons or heads were removed; whole "
                         "layers were removed here, so there is no layer left to refit. Use "
                         "--recover distil.")
    handles = []
    if can_refit(pruned, dense) and R.changed_projections(pruned, dense):
        handles.append(R.refit(pruned, dense, calib))
    if recover == "distil":
        handle, _ = D.distil(pruned, dense, calib, steps=steps, quiet=quiet, **distil_kwargs)
        handles.append(handle)
    return handles
