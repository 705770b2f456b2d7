"""Distillation: train the pruned student to predict what the dense teacher predicts.

Perplexity only looks at the probability of the *right* next token. The dense
teacher gives a whole distribution ``p_t(. | context)`` at every position, and that
carries far more signal per token (which wrong words are nearly right), so a few
steps on a little calibration text recover a lot. The loss is

    KL(p_teacher || p_student) = sum_v p_t(v) (log p_t(v) - log p_s(v)),

averaged over every position of every window, minimised with AdamW for a fixed
number of steps. The embeddings and the ``lm_head`` (tied in most small models:
a third of SmolLM2's parameters) stay frozen; the decoder layers train.

Calibration text is all the student sees, so it can over-fit it: every
``eval_every`` steps the perplexity is measured on the evaluation windows (the
same text, other positions) *and* on a held-out text of another kind (Python
source); a recovery that helps the first and hurts the second is learning the
calibration text, not repairing the model.

Zeros stay zeros: every decoder weight that is exactly zero when training starts
(the weights an unstructured prune or a head/neuron zeroing removed) is set back to
zero after each optimizer step, so distillation recovers what the remaining weights
can do instead of quietly refilling the pruned ones (which would undo the sparsity
a sparse kernel or a sparse file relies on). A dense model's few exact zeros
(leftovers of its quantized original) are held too: a negligible restriction.

A long recovery needs a learning-rate schedule: ``schedule="cosine"`` warms up linearly
over ``warmup`` steps, then decays along a half cosine to a tenth of ``lr`` at the last step
(large early steps move far from the pruned start, small late steps settle without
over-shooting); ``"constant"`` keeps ``lr`` throughout (short runs).

The student is trained in place: the returned handle holds a copy of every
trained parameter, and ``restore()`` puts them back bit for bit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core import arch, metrics
from ..pruning.undo import PruneHandle


@dataclass
class DistilReport:
    """What a distillation run did: one row per evaluation, plus the total time."""

    history: list[dict] = field(default_factory=list)  # step, loss, ppl_eval, ppl_heldout, seconds
    seconds: float = 0.0
    train_seconds: float = 0.0

    @property
    def first(self) -> dict:
        return self.history[0]

    @property
    def last(self) -> dict:
        return self.history[-1]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The decoder's parameters: everything but the input embedding and the lm_head."""
    frozen = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        frozen.add(id(head.weight))
    out, seen = [], set()
    for p in model.parameters():
        if id(p) not in frozen and id(p) not in seen and p.dtype.is_floating_point:
            seen.add(id(p))
            out.append(p)
    return out


def zero_masks(model: nn.Module) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(weight, where it is exactly zero) for every decoder matrix that holds a zero.

    Where: a boolean mask, or the flat positions when zeros are rare (8 bytes each
    instead of 1 per weight: a dense model's few zeros cost next to nothing).
    """
    out = []
    for module in arch.prunable_linears(model).values():
        zeros = module.weight.detach() == 0
        count = int(zeros.sum())
        if count:
            out.append((module.weight, zeros if 8 * count > zeros.numel() else zeros.view(-1).nonzero()[:, 0]))
    return out


@torch.no_grad()
def hold_zeros(zeros: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Set every weight listed by ``zero_masks`` back to zero."""
    for weight, where in zeros:
        if where.dtype == torch.bool:
            weight.masked_fill_(where, 0)
        else:
            weight.view(-1).index_fill_(0, where, 0)


SCHEDULES = ("constant", "cosine")
FINAL_FRACTION = 0.1  # the cosine schedule ends at this fraction of the peak rate


def learning_rate_factor(schedule: str, steps: int, warmup: int = 0):
    """step (1-based) -> the factor of ``lr`` used at that optimizer step."""
    import math

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step <= warmup:
            return step / warmup
        t = (step - warmup) / max(1, steps - warmup)  # 0 after the warm-up .. 1 at the last step
        return FINAL_FRACTION + (1 - FINAL_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return factor


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(teacher || student), in nats."""
    s = F.log_softmax(student_logits.float(), dim=-1).reshape(-1, student_logits.shape[-1])
    t = F.log_softmax(teacher_logits.float(), dim=-1).reshape(-1, teacher_logits.shape[-1])
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def distil(student: nn.Module, teacher: nn.Module, calib: torch.Tensor, steps: int = 40,
           lr: float = 5e-5, batch_size: int = 4, eval_windows: torch.Tensor | None = None,
           heldout_windows: torch.Tensor | None = None, eval_every: int = 10,
           weight_decay: float = 0.0, quiet: bool = False, seed: int = 0,
           keep_zeros: bool = True, schedule: str = "constant",
           warmup: int = 0) -> tuple[PruneHandle, DistilReport]:
    """Train ``student`` in place to match ``teacher`` on ``calib``; returns ``(handle, report)``.

    Each step takes ``batch_size`` calibration windows in turn (cycling). With
    ``eval_windows`` / ``heldout_windows``, perplexity is measured before the first
    step, every ``eval_every`` steps and after the last. ``keep_zeros`` (default):
    decoder weights that are zero now stay zero (see the module docstring);
    ``False`` lets them train too.
    """
    if student is teacher:
        raise ValueError("student and teacher are the same object: keep a dense copy "
                         "(copy.deepcopy(model)) before pruning, to use it as the teacher.")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps={steps!r}: give a whole number of steps >= 0 (0 = no training).")
    if not lr > 0:
        raise ValueError(f"lr={lr}: the learning rate must be > 0 (5e-5 is a good start).")
    if calib is None or calib.dim() != 2 or calib.shape[0] == 0:
        raise ValueError("distil needs calibration windows: a (n, seq_len) tensor of token ids "
                         "(windows.calib, with n_calib > 0).")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: use one of {SCHEDULES}.")
    if not isinstance(warmup, int) or not 0 <= warmup <= steps:
        raise ValueError(f"warmup={warmup!r}: a whole number of steps between 0 and steps={steps}.")
    params = trainable_parameters(student)
    zeros = zero_masks(student) if keep_zeros else []
    handle = PruneHandle("distillation")
    for p in params:
        handle.save_tensor(p.data)
    report = DistilReport()
    device = next(student.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(calib.shape[0], generator=generator)
    started = time.perf_counter()

    def evaluate(step: int, loss: float | None) -> None:
        was_training = student.training
        student.eval()
        row = {"step": step, "loss": None if loss is None else round(loss, 5)}
        if eval_windows is not None:
            row["ppl_eval"] = metrics.perplexity(student, eval_windows)
        if heldout_windows is not None:
            row["ppl_heldout"] = metrics.perplexity(student, heldout_windows)
        row["seconds"] = round(time.perf_counter() - started, 2)
        report.history.append(row)
        student.train(was_training)

    requires = [p.requires_grad for p in student.parameters()]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    teacher.eval()
    try:  # the fused kernel: one pass over the weights instead of several (~7x faster on a CPU)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rate = learning_rate_factor(schedule, steps, warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: rate(i + 1))
    train_seconds = 0.0
    try:
        evaluate(0, None)
        student.eval()  # no dropout: the course's models have none, and eval keeps it so
        bar = tqdm(range(1, steps + 1), desc="distil", disable=quiet, leave=False)
        for step in bar:
            t0 = time.perf_counter()
            pick = [int(order[((step - 1) * batch_size + j) % calib.shape[0]]) for j in range(batch_size)]
            batch = calib[pick].to(device)
            with torch.no_grad():
                target = teacher(batch, use_cache=False).logits
            loss = kl_loss(student(batch, use_cache=False).logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            hold_zeros(zeros)  # pruned weights stay pruned
            train_seconds += time.perf_counter() - t0
            bar.set_postfix(kl=f"{loss.item():.4f}")
            if step % eval_every == 0 or step == steps:
                evaluate(step, loss.item())
    except BaseException:
        handle.restore()
        raise
    finally:
        for p, r in zip(student.parameters(), requires):
            p.requires_grad_(r)
        student.zero_grad(set_to_none=True)
        student.eval()
    report.seconds = time.perf_counter() - started
    report.train_seconds = train_seconds
    handle.info = {"kind": "distil", "steps": steps, "lr": lr, "batch_size": batch_size,
                   "schedule": schedule, "warmup": warmup,
                   "history": report.history, "zeros_kept": sum(int(w.sum()) if w.dtype == torch.bool else w.numel() for _, w in zeros)}
    return handle, report
