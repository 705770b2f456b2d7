"""A long recovery, built once per machine and kept: what recovery costs, measured.

Twenty steps of distillation (about 90 s on 2 cores) win back part of what a cut cost:
SmolLM2 with 25% of its MLP neurons removed goes from 17.35 to 15.70 (1.21x dense,
``bench/recovery.md``). Getting closer to dense takes more text, and the question a
practitioner asks is *how much more*. This module answers it with one run, kept:

1. the cut: ``fraction`` of every layer's MLP neurons, chosen by their measured
   contribution on ``n_score`` windows of the training text (``pruning.mlp``'s
   ``neuron_importance_contribution``: down-projection column norm x RMS activation; the
   same count per layer, so the result is a standard checkpoint that opens with
   ``from_pretrained``);
2. the text: prose and code alternating (``data.mixed_windows``). A recovery that sees
   only prose learns prose: the refit fitted on prose *raised* the held-out code
   perplexity (12.30 -> 13.36 in ``bench/recovery.md``);
3. the refit (``repair.refit``: the narrowed projections, closed form, layer by layer),
   kept only if it lowers the perplexity on validation windows: prose and code of the
   training texts that the recovery never trains on (never the evaluation windows, which
   would make the test set choose the model);
4. distillation: KL(dense || student) with AdamW, ``steps`` steps of ``batch_size`` windows,
   the learning rate warmed up then decayed along a cosine (``distil.distil``). Every
   ``steps // curve_points`` steps the perplexity is measured on the protocol's evaluation
   windows (pydoc, 16 x 256) and on the held-out code (``python-source``): the recovery
   cost curve, perplexity against distillation tokens.

The result is kept in ``$COURSE_CACHE/recovered/<key>/`` (``save_pretrained``'s files plus
``recovery.json``: the plan, the curve, and its ``provenance``: command, commit, machine,
time), under a key of the dense weights, every setting of the plan and what the recipe's
code does: the same dense model and plan load what was built, anything else builds anew.
``make recover`` builds ``LONG``; ``SHORT`` (``--short``) is the same recipe in a few
minutes, to check the path end to end. No lesson loads the model built: a cell whose output
depends on what a machine has cached would not replay (lesson 6 reads the stored record,
``bench/recovery_curve.json``).

    python -m course_lib.recover.long [smollm2-135m] [--short] [--out bench]
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..core import data, metrics, models, provenance, stats
from ..pruning import io, mlp, recipes
from . import distil as D
from . import recipes as RR
from . import repair as R

RECORD = "recovery.json"


@dataclass(frozen=True)
class Plan:
    """Every setting of a long recovery (the cache key includes them all)."""

    fraction: float = 0.25  # of every layer's MLP neurons removed
    score: str = "contribution"  # which neurons go (names.SCORES["mlp"])
    n_score: int = 64  # training windows the score reads
    steps: int = 200  # distillation steps
    batch_size: int = 4  # windows per step
    lr: float = 2e-4  # peak learning rate (cosine schedule)
    warmup: int = 10
    seq_len: int = 256
    n_prose: int = 200  # training windows of each kind (data.mixed_windows)
    n_code: int = 200
    n_valid: int = 4  # validation windows of each kind (never trained on) that decide the refit
    n_eval: int = 16  # the protocol's evaluation windows (pydoc, middle of the text)
    n_heldout: int = 8  # held-out code windows (python-source, middle of the text)
    curve_points: int = 8
    seed: int = 0

    @property
    def tokens(self) -> int:
        """Distillation tokens: steps x batch x window."""
        return self.steps * self.batch_size * self.seq_len


LONG = Plan()  # make recover
SHORT = replace(LONG, steps=16, warmup=2, n_prose=16, n_code=16, curve_points=2)  # a lesson, nothing cached


def key(dense: nn.Module, plan: Plan) -> str:
    """The cache name: the dense weights, the plan, and the code and versions that decide the numbers.

    The code is keyed by what it does (``models.hash_code``): the recipe's steps here
    (``texts``, ``cut``, ``recover_in_place``), the cut and its scores (``pruning.recipes``,
    ``pruning.mlp``), the refit, the distillation and the texts' modules; a docstring,
    a comment or how the record is written does not orphan the build.
    """
    digest = hashlib.sha256(repr(plan).encode())
    models.hash_code(digest, texts, cut, recover_in_place, D, R, RR, recipes, mlp, data)
    digest.update(f"torch={torch.__version__}".encode())
    models.hash_weights(dense, digest)
    return digest.hexdigest()[:16]


def folder_for(dense: nn.Module, plan: Plan) -> Path:
    return models.cache_dir() / "recovered" / key(dense, plan)


def load(dense: nn.Module, plan: Plan = LONG) -> tuple[nn.Module, dict] | None:
    """``(recovered model, its record)`` if this dense model's recovery under ``plan`` is cached."""
    folder = folder_for(dense, plan)
    if not (folder / RECORD).is_file():
        return None
    record = json.loads((folder / RECORD).read_text())
    model = models.quiet_transformers().AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    model.eval()
    return model, record


def texts(tokenizer, name: str, plan: Plan) -> dict[str, torch.Tensor]:
    """The windows of a recovery: ``train`` (mixed), ``valid`` (mixed, never trained on),
    ``eval`` (the protocol's pydoc windows) and ``heldout`` (python-source code)."""
    # validation: the n_valid windows of each kind that follow the training windows
    prose = data.windows_for(tokenizer, name, seq_len=plan.seq_len, n_eval=plan.n_eval,
                             n_calib=plan.n_prose + plan.n_valid)
    code = data.code_windows(tokenizer, name, plan.n_code + plan.n_valid, plan.seq_len, "python-train")
    train = data.alternate(prose.calib[:plan.n_prose], code[:plan.n_code])  # = data.mixed_windows
    valid = torch.cat([prose.calib[plan.n_prose:], code[plan.n_code:]])
    heldout = data.code_windows(tokenizer, name, plan.n_heldout, plan.seq_len)
    return {"train": train, "valid": valid, "eval": prose.eval, "heldout": heldout}


def build(dense: nn.Module, tokenizer, name: str, plan: Plan = LONG, log=print,
          keep: bool = True) -> tuple[nn.Module, dict]:
    """Prune a copy of ``dense``, recover it under ``plan``; keep it in the cache (``keep``)."""
    started = time.perf_counter()
    windows = texts(tokenizer, name, plan)
    torch.manual_seed(plan.seed)

    def quality(model) -> dict:
        return {kind: stats.Quality(metrics.token_nll(model, windows[kind])) for kind in ("eval", "heldout")}

    def ppl(measured: dict) -> dict:
        return {kind: round(q.perplexity, 3) for kind, q in measured.items()}

    dense_quality = quality(dense)  # measured once: the perplexities and, at the end, the paired baseline
    record = {"model": name, "plan": asdict(plan), "tokens": plan.tokens, "dense": ppl(dense_quality)}
    log(f"dense: {record['dense']}")
    student = copy.deepcopy(dense)
    cut(student, windows, plan)
    record["pruned"] = ppl(quality(student))
    log(f"pruned {plan.fraction:.0%} of every layer's MLP neurons by {plan.score}: {record['pruned']}")
    info, report = recover_in_place(student, dense, windows, plan, curve=True, log=log)
    record["refit"] = info["refit"]
    tokens_per_step = plan.batch_size * plan.seq_len
    record["curve"] = [{"step": row["step"], "tokens": row["step"] * tokens_per_step,
                        "eval": round(row["ppl_eval"], 3), "heldout": round(row["ppl_heldout"], 3),
                        "seconds": row["seconds"]} for row in report.history]
    record["recovered"] = {"eval": record["curve"][-1]["eval"], "heldout": record["curve"][-1]["heldout"]}
    # recovered vs dense on the same tokens: the ratio with its 95% interval
    record["paired"] = {kind: q.vs(dense_quality[kind]).record() for kind, q in quality(student).items()}
    record["distil_seconds"] = round(report.seconds, 1)
    seconds = round(time.perf_counter() - started, 1)
    record["parameters"] = {"dense": metrics.parameter_count(dense), "recovered": metrics.parameter_count(student)}
    record["key"] = key(dense, plan)
    command = {LONG: f"python -m course_lib.recover.long {name}",
               SHORT: f"python -m course_lib.recover.long {name} --short"}.get(
        plan, "course_lib.recover.long.build with the plan above")
    record["provenance"] = provenance.record(command, seconds)
    log(f"recovered: {record['recovered']}; vs dense: {record['paired']['eval']['text']} (prose), "
        f"{record['paired']['heldout']['text']} (code); {seconds:.0f} s")
    if keep:
        save(student, record, folder_for(dense, plan))
    return student, record


def cut(student: nn.Module, windows: dict, plan: Plan):
    """The plan's cut, in place: ``plan.fraction`` of every layer's MLP neurons, by ``plan.score``
    on the first ``plan.n_score`` training windows; returns its undo handle."""
    return recipes.prune_with(student, "mlp", plan.fraction, calib=windows["train"][:plan.n_score],
                              score=plan.score)


def recover_in_place(student: nn.Module, dense: nn.Module, windows: dict, plan: Plan, curve: bool = False,
                     log=print) -> tuple[dict, D.DistilReport]:
    """The recipe on ``student``, in place: the refit if it lowers the validation perplexity,
    then ``plan.steps`` steps of distillation on ``windows["train"]`` (cosine, warmed up).

    ``windows``: from ``texts``. The refit is tried only where it applies (a cut that
    narrowed projections; a depth cut has none). ``curve``: measure the protocol and
    held-out perplexities every ``plan.steps // plan.curve_points`` steps (the report's
    history; its step 0 is the model after the refit). Returns ``({"refit": ...,
    "distil_seconds": ...}, report)``; ``bench/pareto.py`` recovers every cut with it.
    """
    info = {"refit": None}
    if RR.can_refit(student, dense) and R.changed_projections(student, dense):
        before = metrics.perplexity(student, windows["valid"])
        handle = R.refit(student, dense, windows["train"][:32])
        after = metrics.perplexity(student, windows["valid"])
        kept = after < before
        if not kept:
            handle.restore()
        info["refit"] = {"kept": kept, "valid_before": round(before, 3), "valid_after": round(after, 3)}
        log(f"refit {'kept' if kept else 'undone'} (validation {before:.2f} -> {after:.2f})")
    extra = ({"eval_windows": windows["eval"], "heldout_windows": windows["heldout"],
              "eval_every": max(1, plan.steps // plan.curve_points)} if curve else {})
    _, report = D.distil(student, dense, windows["train"], steps=plan.steps, lr=plan.lr,
                         batch_size=plan.batch_size, quiet=not curve, seed=plan.seed, schedule="cosine",
                         warmup=plan.warmup, **extra)
    info["distil_seconds"] = round(report.seconds, 1)
    return info, report


def save(model: nn.Module, record: dict, folder: Path) -> Path:
    """A standard checkpoint (``io.export_pretrained``: written beside, then renamed), then the
    record: a folder without its record is an unfinished build, and ``load`` ignores it."""
    io.export_pretrained(model, folder)
    (folder / RECORD).write_text(json.dumps(record, indent=1))
    return folder


def load_or_build(dense: nn.Module, tokenizer, name: str, plan: Plan = LONG, log=print) -> tuple[nn.Module, dict]:
    """The cached recovery when there is one, else one built now (and kept)."""
    found = load(dense, plan)
    if found is not None:
        log(f"loaded the recovery built {found[1]['provenance']['measured']} "
            f"({found[1]['provenance']['machine']}) from the cache")
        return found
    return build(dense, tokenizer, name, plan, log=log)


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build (or load) the long recovery and write its cost curve.")
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--short", action="store_true", help="the short plan (a lesson's fallback)")
    parser.add_argument("--out", default=None, help="write recovery_curve.json here (e.g. bench)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    dense, tokenizer = models.load(args.model)
    _, record = load_or_build(dense, tokenizer, args.model, SHORT if args.short else LONG)
    if args.out:
        Path(args.out, "recovery_curve.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
