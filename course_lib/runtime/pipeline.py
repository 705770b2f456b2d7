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
- bytes of the stage's file on disk, read from the file system (``metrics.file_bytes``).

The stages themselves come from the course's own modules: the structured prune is
lesson 4's (the same fraction of MLP neurons from every layer, chosen per layer by
activation on calibration text: a uniform cut, so the result is a standard
checkpoint), the recovery is ``recover.repair.refit`` (the projections whose input
narrowed, refitted layer by layer to the dense outputs), the PyTorch int8 stage is
``quantize.quantized_copy`` with the projections of largest activation outliers
kept in float, and the runtime is ``export`` (ONNX, ONNX Runtime, ``MatMulNBits``).
"""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import data, metrics, timing
from ..pruning import mlp, recipes
from ..recover import repair
from . import export, quantize, speed, store

DEFAULT_FRACTION = 0.1875  # MLP neurons removed per layer: lesson 6's choice on SmolLM2 (its quality budget)
DEFAULT_KEEP_FLOAT = 8  # projections with the largest activation outliers kept float in PyTorch int8


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

    def as_dict(self) -> dict:
        return {"stage": self.stage, "perplexity": round(self.perplexity, 3),
                "prefill_speedup": round(self.prefill_speedup.median, 3),
                "decode_speedup": round(self.decode_speedup.median, 3),
                "disk_bytes": int(self.disk_bytes), "seconds": round(self.seconds, 2), "note": self.note}


def table(rows: list[StageResult]) -> str:
    """The stage table as aligned text (speedups: paired median, interquartile range)."""
    lines = [f"{'stage':<15}{'perplexity':>11}{'prefill':>20}{'decode':>20}{'disk MB':>9}{'made in':>9}"]
    for r in rows:
        pre = f"{r.prefill_speedup.median:.2f}x ({r.prefill_speedup.low:.2f}-{r.prefill_speedup.high:.2f})"
        dec = f"{r.decode_speedup.median:.2f}x ({r.decode_speedup.low:.2f}-{r.decode_speedup.high:.2f})"
        lines.append(f"{r.stage:<15}{r.perplexity:>11.2f}{pre:>20}{dec:>20}{r.disk_bytes / 1e6:>9.1f}"
                     f"{r.seconds:>8.1f}s")
    return "\n".join(lines)


# ------------------------------------------------------------------------ the stages
def structured_prune(model: nn.Module, calib: torch.Tensor, fraction: float = DEFAULT_FRACTION) -> nn.Module:
    """A copy of ``model`` with ``fraction`` of every layer's MLP neurons removed (lowest activation)."""
    scores = mlp.neuron_importance_activation(model, calib)
    pruned = copy.deepcopy(model)
    mlp.remove_neurons(pruned, recipes.uniform_neurons_request(pruned, fraction, scores=scores))
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
    class and config, and the exporter: the source of ``runtime.export`` (its settings:
    opset, traced attention, dynamic axes) and the versions of torch, transformers,
    onnx and onnxscript. Two models that differ anywhere, even in one bit of one
    weight, never share a cached file; hashing ~0.5 GB takes about a second, a small
    part of an export.
    """
    import importlib.metadata

    digest = hashlib.sha256()
    digest.update(type(model).__name__.encode())
    digest.update(model.config.to_json_string(use_diff=False).encode())
    digest.update(Path(export.__file__).read_bytes())
    for package in ("torch", "transformers", "onnx", "onnxscript"):
        try:
            digest.update(f"{package}={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package}=absent".encode())
    first_name: dict[tuple, str] = {}
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            storage = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                       tuple(tensor.shape), tuple(tensor.stride()))
            if storage in first_name:
                digest.update(f"={first_name[storage]}".encode())
                continue
            first_name[storage] = name
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(data.view(torch.uint8).numpy())
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
            notes: dict | None = None, perplexities: dict | None = None, **timing_options) -> list[StageResult]:
    """Every stage against ``stages["dense"]``: one ``StageResult`` per stage, in order.

    ``files[stage]``: the file (or folder) that ships the stage; ``perplexities``:
    figures already measured on ``windows`` (the rest are measured here).
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
    prefill, decode = latencies(stages, stages["dense"].config.vocab_size, **timing_options)
    return [StageResult(label, ppl[label], timing.speedup(prefill["dense"], prefill[label]),
                        timing.speedup(decode["dense"], decode[label]), metrics.file_bytes(files[label]),
                        seconds.get(label, 0.0), notes.get(label, ""))
            for label in stages]


# ------------------------------------------------------------------------ all of it
@dataclass
class Shipped:
    """What ``run`` produced: the table rows, the stages (models and sessions), their files."""

    rows: list[StageResult]
    stages: dict = field(repr=False)
    files: dict = field(repr=False)


def run(model: nn.Module, windows: data.Windows, folder: str | Path, fraction: float = DEFAULT_FRACTION,
        keep_float: int = DEFAULT_KEEP_FLOAT, bits: int = 8, recover: bool = True, log=print,
        **timing_options) -> Shipped:
    """Dense -> pruned -> recovered -> int8 (PyTorch) -> ONNX Runtime -> shipped (ONNX Runtime, ``bits``).

    ``model`` is never changed (every stage is a copy). Files go to ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stages, seconds, notes = {"dense": model}, {}, {"dense": "float32 PyTorch"}

    started = time.perf_counter()
    stages["pruned"] = structured_prune(model, windows.calib, fraction)
    seconds["pruned"] = time.perf_counter() - started
    notes["pruned"] = f"{fraction:.2%} of every layer's MLP neurons removed (activation)"
    log(f"pruned in {seconds['pruned']:.1f} s")
    last = stages["pruned"]
    if recover:
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
    fp32_file = cached_export(last, folder / "onnx")
    seconds["ONNX Runtime"] = time.perf_counter() - started
    started = time.perf_counter()
    nbits_file = cached_nbits(fp32_file, bits)
    seconds["shipped"] = time.perf_counter() - started
    threads = timing_options.get("threads", 2)
    stages["ONNX Runtime"] = export.OrtModel(fp32_file, threads)
    stages["shipped"] = export.OrtModel(nbits_file, threads)
    notes["ONNX Runtime"] = "float32 ONNX"
    notes["shipped"] = f"ONNX Runtime, {bits}-bit weights (MatMulNBits, int8 kernels), 4-bit embedding"
    log(f"exported in {seconds['ONNX Runtime']:.1f} s, quantized in {seconds['shipped']:.1f} s")

    files = {"dense": store.save_safetensors(model, folder / "dense.safetensors"),
             "pruned": store.save_safetensors(stages["pruned"], folder / "pruned.safetensors"),
             "int8 (PyTorch)": store.save_torch(stages["int8 (PyTorch)"], folder / "int8.pt"),
             "ONNX Runtime": fp32_file, "shipped": nbits_file}
    if recover:
        files["recovered"] = store.save_safetensors(stages["recovered"], folder / "recovered.safetensors")
    rows = measure(stages, files, windows.eval, seconds, notes, **timing_options)
    return Shipped(rows, stages, files)
