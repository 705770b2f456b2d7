"""From dense to shipped, one stage at a time, every stage measured the same way.

    dense fp32 -> structured prune -> recovered -> int8 -> ONNX Runtime -> ONNX Runtime 8-bit (shipped)

Each stage is a model (or an ONNX Runtime session) plus the file that would ship
it. Every stage is measured against the dense fp32 PyTorch model *in the same
run*, so the ratios are paired, not copied from another day:

- perplexity on the evaluation windows (``metrics.perplexity`` or, for a session,
  ``export.ort_perplexity``: the same definition);
- prefill latency: one forward over ``tokens`` tokens, all stages interleaved run
  by run (``timing.time_side_by_side``), the ratio to dense with its spread
  (``timing.speedup``);
- decode latency per token with the KV cache (``speed.decode_workloads``, and
  ``OrtModel.decode_workload`` for a session), interleaved the same way;
- bytes of the stage's file on disk, read from the file system (``metrics.file_bytes``);
- greedy tokens per second of dense and shipped at batch 1 and 8 (``serve.throughput``:
  whole generations, interleaved the same way).

The stages themselves come from the course's own modules: the structured prune is
lesson 4's by default (the same fraction of MLP neurons from every layer, chosen per
layer by their measured contribution on calibration text: a uniform cut, so the result is
a standard checkpoint; ``heads`` and ``layers`` cut heads or whole layers instead, by their own
data-aware scores, ``recipes.SCORES``), the recovery is ``recover.repair.refit`` (the
projections whose input narrowed, refitted layer by layer to the dense outputs), the PyTorch int8 stage is
``quantize.quantized_copy`` with the projections of largest activation outliers
kept in float, and the runtime is ``export`` (ONNX, ONNX Runtime, ``MatMulNBits``).
``run(..., shipped="int8")`` ships int8 arithmetic instead: the recovered model's activation
outliers moved into its weights (``smooth``, SmoothQuant), then per-channel int8 weights and
int8 activations in every MatMul (``export.quantize_onnx(..., "int8")``): prefill is
arithmetic-bound and gains from integer GEMMs, which weight-only 8-bit does not give it.
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import data, metrics, models, timing
from ..core.names import SHIPPED, STRUCTURED, check_alpha, check_recipe
from ..pruning import io, recipes
from ..recover import repair
from ..recover.recipes import can_refit
from . import export, quantize, serve, smooth, speed, store

RECIPES = STRUCTURED  # the structured cut: every layer's heads or MLP neurons, or whole layers
SERVED = ("dense", "shipped")  # the stages whose greedy tokens/s is measured


def check_shipped(shipped: str) -> str:
    if shipped not in SHIPPED:
        raise ValueError(f"shipped={shipped!r}: use one of {SHIPPED} ('nbits': ONNX Runtime's MatMulNBits, "
                         "weight-only; 'int8': SmoothQuant, then int8 weights and activations).")
    return shipped


@dataclass
class StageResult:
    """One row of the pipeline table (speedups against dense fp32 PyTorch, same run)."""

    stage: str
    perplexity: float
    prefill_speedup: timing.Speedup
    decode_speedup: timing.Speedup
    disk_bytes: int
    seconds: float  # time to make this stage from the one before it
    note: str = ""
    tokens_per_s: dict | None = None  # batch size -> greedy tokens per second (served stages only)
    measurements: dict = field(default_factory=dict, repr=False)  # "prefill"/"decode" -> Measurement
    perplexity_heldout: float | None = None  # on held-out text of another kind (code), when measured

    def speedup_over(self, other: "StageResult", kind: str = "prefill") -> timing.Speedup:
        """This stage against another of the same measurement (paired: one interleaved call)."""
        return timing.speedup(other.measurements[kind], self.measurements[kind])

    def as_dict(self) -> dict:
        served = None if self.tokens_per_s is None else {
            f"batch_{batch}": round(rate, 2) for batch, rate in self.tokens_per_s.items()}
        heldout = {} if self.perplexity_heldout is None else {
            "perplexity_heldout": round(self.perplexity_heldout, 3)}
        return {"stage": self.stage, "perplexity": round(self.perplexity, 3), **heldout,
                "prefill_speedup": round(self.prefill_speedup.median, 3),
                "decode_speedup": round(self.decode_speedup.median, 3),
                "disk_bytes": int(self.disk_bytes), "seconds": round(self.seconds, 2), "note": self.note,
                "tokens_per_s": served}


def table(rows: list[StageResult]) -> str:
    """The stage table as aligned text (speedups: paired median, interquartile range; tokens/s by batch)."""
    batches = sorted({b for r in rows for b in (r.tokens_per_s or {})})
    lines = [f"{'stage':<15}{'perplexity':>11}{'prefill':>20}{'decode':>20}{'disk MB':>9}{'made in':>9}"
             + "".join(f"{f'tok/s b{b}':>11}" for b in batches)]
    for r in rows:
        pre = f"{r.prefill_speedup.median:.2f}x ({r.prefill_speedup.low:.2f}-{r.prefill_speedup.high:.2f})"
        dec = f"{r.decode_speedup.median:.2f}x ({r.decode_speedup.low:.2f}-{r.decode_speedup.high:.2f})"
        served = "".join(f"{r.tokens_per_s[b]:>11.1f}" if r.tokens_per_s and b in r.tokens_per_s else f"{'-':>11}"
                         for b in batches)
        lines.append(f"{r.stage:<15}{r.perplexity:>11.2f}{pre:>20}{dec:>20}{r.disk_bytes / 1e6:>9.1f}"
                     f"{r.seconds:>8.1f}s{served}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ the stages
def structured_prune(model: nn.Module, calib: torch.Tensor, fraction: float,
                     recipe: str = "mlp") -> nn.Module:
    """A copy of ``model`` with ``fraction`` of every layer's MLP neurons (``recipe="mlp"``) or heads
    (``"heads"``; GQA: the same number from every group), or of the layers (``"layers"``), removed,
    chosen by the data-aware score on ``calib`` (``recipes.prune_with``).

    What ships must be a checkpoint of the model's own family, so a cut its config cannot
    describe (heads removed from a GPT-2) is refused with the reason (``io.standard_problem``).
    """
    pruned = copy.deepcopy(model)
    recipes.prune_with(pruned, check_recipe(recipe), fraction, calib=calib)
    problem = io.standard_problem(pruned)
    if problem:
        raise ValueError(f"the {recipe} recipe cannot ship {type(model).__name__}: {problem}")
    return pruned


def recovered_copy(pruned: nn.Module, dense: nn.Module, calib: torch.Tensor) -> nn.Module:
    """A copy of ``pruned`` whose narrowed projections are refitted to ``dense`` (``repair.refit``)."""
    recovered = copy.deepcopy(pruned)
    repair.refit(recovered, dense, calib)
    return recovered


def fingerprint(model: nn.Module) -> str:
    """The name of a cached export: a hash of everything the exported file depends on.

    Every byte of every tensor of the state dict (with its name, dtype and shape; a
    tied tensor is hashed once and its second name recorded as an alias), the model's
    class and config, and the exporter: what the code of ``runtime.export`` does
    (``models.hash_code``; its settings: opset, traced attention, dynamic axes) and the
    versions of torch, transformers, onnx and onnxscript. Two models that differ anywhere,
    even in one bit of one weight, never share a cached file; hashing ~0.5 GB takes about a second, a small
    part of an export.
    """
    import importlib.metadata

    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    models.hash_code(digest, export)
    for package in ("torch", "transformers", "onnx", "onnxscript"):
        try:
            digest.update(f"{package}={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package}=absent".encode())
    models.hash_weights(model, digest)
    return digest.hexdigest()[:16]


def _written_beside(target: Path, write) -> Path:
    """``write(partial)`` then rename to ``target``: an interrupted write never looks finished."""
    if not target.exists():
        partial = target.with_name(f".{target.stem}.partial{target.suffix}")
        write(partial)
        partial.replace(target)
    return target


def cached_export(model: nn.Module, folder: str | Path) -> Path:
    """The float32 ONNX file of ``model`` in ``folder``, reused when the weights match (``fingerprint``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _written_beside(folder / f"{fingerprint(model)}.onnx", lambda p: export.export_onnx(model, p))


def cached_nbits(fp32_file: str | Path, bits: int = 8) -> Path:
    """``fp32_file`` with ONNX Runtime's ``MatMulNBits`` weights (and a 4-bit embedding), reused if present."""
    fp32_file = Path(fp32_file)
    return _written_beside(fp32_file.with_name(f"{fp32_file.stem}-nbits{bits}.onnx"),
                           lambda p: export.quantize_onnx(fp32_file, p, "nbits", bits))


def cached_int8(fp32_file: str | Path) -> Path:
    """``fp32_file`` (a smoothed model's export) with int8 GEMMs and a 4-bit embedding, reused if present."""
    fp32_file = Path(fp32_file)
    return _written_beside(fp32_file.with_name(f"{fp32_file.stem}-int8.onnx"),
                           lambda p: export.quantize_onnx(fp32_file, p, "int8", 8))


def shipped_note(shipped: str, bits: int, alpha: float = smooth.ALPHA) -> str:
    """What the shipped file is, in words (the ``ship`` JSON carries it)."""
    if shipped == "int8":
        return (f"ONNX Runtime int8 GEMMs: SmoothQuant (alpha {alpha:g}) folded into the weights, "
                "per-channel int8 weights, int8 activations per call, lm_head int8, 4-bit embedding")
    return f"ONNX Runtime, {bits}-bit weights (MatMulNBits, int8 kernels), 4-bit embedding"


# ------------------------------------------------------------------------ measuring
def perplexity(stage, windows: torch.Tensor) -> float:
    """Perplexity of a PyTorch model or an ONNX Runtime session (one definition)."""
    if isinstance(stage, export.OrtModel):
        return round(export.ort_perplexity(stage, windows), 2)
    return round(metrics.perplexity(stage, windows), 2)


def latencies(stages: dict, vocab: int, tokens: int = 128, runs: int = 5, decode_context: int = 32,
              decode_tokens: int = 16, decode_runs: int = 3, threads: int = 2):
    """(prefill, decode): per-stage ``Measurement`` dicts, each from one interleaved call."""
    ids = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    prefill_fns = {label: ((lambda m=m: m(ids)) if isinstance(m, export.OrtModel)
                           else (lambda m=m: m(ids, use_cache=False))) for label, m in stages.items()}
    prefill = timing.time_side_by_side(prefill_fns, runs=runs, warmup=2, threads=threads)
    torch_models = {k: m for k, m in stages.items() if not isinstance(m, export.OrtModel)}
    fns, setup = speed.decode_workloads(torch_models, decode_context, decode_tokens)
    for label, m in stages.items():
        if isinstance(m, export.OrtModel):
            fns[label], setup[label] = m.decode_workload(decode_context, decode_tokens, vocab)
    fns = {label: fns[label] for label in stages}  # the stages' order
    decode = timing.time_side_by_side(fns, setup=setup, runs=decode_runs, warmup=1, threads=threads,
                                      per=decode_tokens)
    return prefill, decode


def measure(stages: dict, files: dict, windows: torch.Tensor, seconds: dict | None = None,
            notes: dict | None = None, perplexities: dict | None = None, served=SERVED,
            batches=serve.SERVE_BATCHES, heldout: torch.Tensor | None = None,
            **timing_options) -> list[StageResult]:
    """Every stage against ``stages["dense"]``: one ``StageResult`` per stage, in order.

    ``files[stage]``: the file (or folder) that ships the stage; ``perplexities``:
    figures already measured on ``windows`` (the rest are measured here); ``served``:
    the stages whose greedy tokens per second is measured at each of ``batches`` (default dense and
    shipped; ``"all"``: every stage), by ``serve.throughput`` (a ``decode_context``-token prompt,
    ``decode_tokens`` new tokens);
    ``heldout``: windows of another kind of text (code), whose perplexity every stage also gets.
    """
    if "dense" not in stages:
        raise ValueError(f"stages {list(stages)} have no 'dense': every ratio is to the dense model.")
    missing = [label for label in stages if label not in files]
    if missing:
        raise ValueError(f"stages {missing} have no file: give each stage the file that ships it.")
    seconds, notes, ppl = seconds or {}, notes or {}, dict(perplexities or {})
    for label, stage in stages.items():
        if label not in ppl:
            ppl[label] = perplexity(stage, windows)
    ppl_heldout = {label: perplexity(stage, heldout) for label, stage in stages.items()} if heldout is not None else {}
    vocab = stages["dense"].config.vocab_size
    prefill, decode = latencies(stages, vocab, **timing_options)
    served = tuple(stages) if served == "all" else served
    serving = serve.throughput({label: stages[label] for label in served if label in stages}, vocab, batches,
                               prompt_tokens=timing_options.get("decode_context", 32),
                               new_tokens=timing_options.get("decode_tokens", 16),
                               runs=timing_options.get("decode_runs", 3), threads=timing_options.get("threads", 2))
    return [StageResult(label, ppl[label], timing.speedup(prefill["dense"], prefill[label]),
                        timing.speedup(decode["dense"], decode[label]), metrics.file_bytes(files[label]),
                        seconds.get(label, 0.0), notes.get(label, ""),
                        {b: serving[b].tokens_per_s(label) for b in serving} if label in served else None,
                        {"prefill": prefill[label], "decode": decode[label]}, ppl_heldout.get(label))
            for label in stages]


# ------------------------------------------------------------------------ all of it
@dataclass
class Shipped:
    """What ``run`` produced: the table rows, the stages (models and sessions), their files."""

    rows: list[StageResult]
    stages: dict = field(repr=False)
    files: dict = field(repr=False)


def run(model: nn.Module, windows: data.Windows, folder: str | Path, fraction: float,
        keep_float: int, bits: int = 8, recover: bool = True, log=print,
        recipe: str = "mlp", shipped: str = "nbits", alpha: float = smooth.ALPHA,
        heldout: torch.Tensor | None = None, **timing_options) -> Shipped:
    """Dense -> pruned -> recovered -> int8 (PyTorch) -> ONNX Runtime -> shipped (ONNX Runtime).

    ``fraction``: of every layer's MLP neurons or heads, or of the layers, removed; ``keep_float``:
    how many projections (largest activation outliers first) stay float in the PyTorch int8 stage.
    ``model`` is never changed (every stage is a copy). Files go to ``folder``.
    ``recipe``: the structured cut (``RECIPES``); after whole layers are removed
    there is no layer left to refit, so no recovered stage.
    ``shipped``: ``"nbits"`` (``bits``-bit MatMulNBits) or ``"int8"`` (SmoothQuant with ``alpha`` on
    the calibration windows, then int8 GEMMs; ``bits`` must be 8). With ``"int8"`` the float ONNX
    stage is the smoothed model's export: the same function (``smooth``), the file the int8 one
    is made from. ``heldout``: windows of code, measured on every stage besides ``windows.eval``.
    """
    check_shipped(shipped)
    if shipped == "int8":
        export.check_ort_method("int8", bits)
        check_alpha(alpha)
        smooth.check_smoothable(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages, seconds, notes = {"dense": model}, {}, {"dense": "float32 PyTorch"}

    started = time.perf_counter()
    stages["pruned"] = structured_prune(model, windows.calib, fraction, recipe)
    seconds["pruned"] = time.perf_counter() - started
    unit = {"mlp": "every layer's MLP neurons", "heads": "every layer's heads", "layers": "the layers"}[recipe]
    notes["pruned"] = (f"{recipes.achieved(model, stages['pruned'], recipe):.2%} of {unit} removed "
                       f"({recipes.check_score(recipe)})")
    log(f"pruned in {seconds['pruned']:.1f} s")
    last = stages["pruned"]
    if recover and can_refit(last, model):
        started = time.perf_counter()
        stages["recovered"] = last = recovered_copy(last, model, windows.calib)
        seconds["recovered"] = time.perf_counter() - started
        notes["recovered"] = "narrowed projections refitted (repair.refit)"
        log(f"recovered in {seconds['recovered']:.1f} s")

    started = time.perf_counter()
    sensitive = quantize.most_sensitive(quantize.activation_outlier_ratio(last, windows.calib), keep_float)
    stages["int8 (PyTorch)"] = quantize.quantized_copy(last, "dynamic", keep_float=sensitive)
    seconds["int8 (PyTorch)"] = time.perf_counter() - started
    notes["int8 (PyTorch)"] = f"dynamic int8, the {keep_float} projections of largest outliers float"

    started = time.perf_counter()
    source = last
    if shipped == "int8":
        source = smooth.smoothed_copy(last, smooth.channel_peaks(last, windows.calib), alpha)
    fp32_file = cached_export(source, folder / "onnx")
    seconds["ONNX Runtime"] = time.perf_counter() - started
    started = time.perf_counter()
    shipped_file = cached_int8(fp32_file) if shipped == "int8" else cached_nbits(fp32_file, bits)
    seconds["shipped"] = time.perf_counter() - started
    threads = timing_options.get("threads", 2)
    stages["ONNX Runtime"] = export.OrtModel(fp32_file, threads)
    stages["shipped"] = export.OrtModel(shipped_file, threads)
    notes["ONNX Runtime"] = "float32 ONNX" + (" (smoothed: the same function)" if shipped == "int8" else "")
    notes["shipped"] = shipped_note(shipped, bits, alpha)
    log(f"exported in {seconds['ONNX Runtime']:.1f} s, quantized in {seconds['shipped']:.1f} s")

    files = {"dense": store.save_safetensors(model, folder / "dense.safetensors"),
             "pruned": store.save_safetensors(stages["pruned"], folder / "pruned.safetensors"),
             "int8 (PyTorch)": store.save_torch(stages["int8 (PyTorch)"], folder / "int8.pt"),
             "ONNX Runtime": fp32_file, "shipped": shipped_file}
    if "recovered" in stages:
        files["recovered"] = store.save_safetensors(stages["recovered"], folder / "recovered.safetensors")
    rows = measure(stages, files, windows.eval, seconds, notes, heldout=heldout, **timing_options)
    return Shipped(rows, stages, files)
