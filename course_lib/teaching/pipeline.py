"""From dense to shipped, one stage at a time, every stage measured the same way.

    dense fp32 -> structured prune -> recovered -> int8 (PyTorch) -> ONNX Runtime -> served

Each stage is a model (or a runtime session) plus the file that would ship it.
Every stage is measured against the dense fp32 PyTorch model *in the same run*:
perplexity on the evaluation windows, prefill latency (interleaved, ``timing.speedup``),
decode latency per token with the KV cache (interleaved), and the bytes of its
file on disk (``metrics.file_bytes``).

The recovery stage here is a closed-form stand-in: after MLP neurons are removed,
each layer's ``down_proj`` is refitted by least squares so the kept neurons
reproduce the dense MLP's output on calibration text:

    min_W' sum_t || W' h_K(t) - W h(t) ||^2   =>   W' = W G[:, K] (G[K, K] + lambda I)^-1,
    G = sum_t h(t) h(t)^T  (the dense model's hidden units, calibration tokens),

so what the removed neurons contributed is re-expressed, as far as it is linearly
predictable, through the neurons that stay. One pass over the calibration
windows and one small solve per layer; no gradient steps.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import arch, data, metrics, timing
from ..pruning import mlp, recipes
from ..runtime import export, quantize, speed, store

STAGES = ("dense", "pruned", "recovered", "int8 (PyTorch)", "ONNX Runtime", "shipped")
DEFAULT_FRACTION = 0.25  # MLP neurons removed per layer (lesson 4's best-measured recipe)


@torch.no_grad()
def mlp_gram(model: nn.Module, windows: torch.Tensor, batch_size: int = 4) -> list[torch.Tensor]:
    """Per layer, G = sum_t h h^T of the hidden units h entering ``down_proj`` (float64)."""
    layers = arch.decoder_layers(model)
    grams: list[torch.Tensor | None] = [None] * len(layers)

    def make_hook(i):
        def hook(module, args):
            h = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            g = (h.T @ h).double()  # float32 products (fast), float64 sums (a stable solve)
            grams[i] = g if grams[i] is None else grams[i] + g
        return hook

    hooks = [mlp._down(model, arch.mlp(block)).register_forward_pre_hook(make_hook(i))
             for i, block in enumerate(layers)]
    try:
        for start in range(0, windows.shape[0], batch_size):
            model(windows[start:start + batch_size], use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return grams


@torch.no_grad()
def refit_down(dense: nn.Module, pruned: nn.Module, windows: torch.Tensor, damp: float = 0.01) -> int:
    """Refit every narrowed ``down_proj`` of ``pruned`` in place (closed form, see the module doc).

    ``damp`` adds ``damp * mean(diag G[K, K])`` to the diagonal (a ridge, for a stable solve).
    Returns how many layers were refitted. Llama-style MLPs only (``down_proj``).
    """
    if arch.family(pruned) == "gpt2":
        raise ValueError("refit_down handles gated (Llama / Qwen2 / Gemma3) MLPs; GPT-2's c_proj is a Conv1D.")
    grams = mlp_gram(dense, windows)
    kept = mlp.kept_neurons(pruned)
    done = 0
    for i, (block_d, block_p) in enumerate(zip(arch.decoder_layers(dense), arch.decoder_layers(pruned))):
        keep = kept.get(i)
        if keep is None:
            continue
        idx = torch.as_tensor(keep, dtype=torch.long)
        g = grams[i]
        g_kk = g[idx][:, idx]
        g_kk = g_kk + damp * g_kk.diagonal().mean() * torch.eye(len(idx), dtype=g.dtype)
        w = arch.mlp(block_d).down_proj.weight.double()  # (hidden, width)
        rhs = w @ g[:, idx]  # (hidden, K)
        new = torch.linalg.solve(g_kk, rhs.T).T  # rhs G_kk^-1 (G symmetric)
        arch.mlp(block_p).down_proj.weight.copy_(new.to(arch.mlp(block_p).down_proj.weight.dtype))
        done += 1
    return done


@dataclass
class StageResult:
    """One row of the pipeline table (speedups against dense fp32 PyTorch, same run)."""

    stage: str
    perplexity: float
    prefill_speedup: timing.Speedup | None
    decode_speedup: timing.Speedup | None
    disk_bytes: int
    seconds: float  # time to produce this stage from the previous one
    note: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        s = lambda x: None if x is None else round(x.median, 3)  # noqa: E731
        return {"stage": self.stage, "perplexity": round(self.perplexity, 3),
                "prefill_speedup": s(self.prefill_speedup), "decode_speedup": s(self.decode_speedup),
                "disk_bytes": int(self.disk_bytes), "seconds": round(self.seconds, 2)}


def table(rows: list[StageResult]) -> str:
    """The stage table as aligned text."""
    lines = [f"{'stage':<16}{'perplexity':>11}{'prefill':>10}{'decode':>9}{'disk MB':>9}{'seconds':>9}  note"]
    for r in rows:
        pre = "-" if r.prefill_speedup is None else f"{r.prefill_speedup.median:.2f}x"
        dec = "-" if r.decode_speedup is None else f"{r.decode_speedup.median:.2f}x"
        lines.append(f"{r.stage:<16}{r.perplexity:>11.2f}{pre:>10}{dec:>9}{r.disk_bytes / 1e6:>9.1f}"
                     f"{r.seconds:>9.1f}  {r.note}")
    return "\n".join(lines)


def fingerprint(model: nn.Module) -> str:
    """A short hash of the weights (and their shapes): the name of a cached export."""
    import hashlib

    digest = hashlib.sha1()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            digest.update(name.encode())
            digest.update(str(tuple(p.shape)).encode())
            digest.update(p.detach().float().flatten()[:: max(1, p.numel() // 4096)].cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def cached_export(model: nn.Module, folder: str | Path, bits: int = 8) -> tuple[Path, Path, float]:
    """(float ONNX file, ``nbits``-quantized ONNX file, seconds spent): reused when the weights match."""
    folder = Path(folder)
    key = fingerprint(model)
    fp32, int8 = folder / f"{key}.onnx", folder / f"{key}-nbits{bits}.onnx"
    started = time.perf_counter()
    if not fp32.exists():
        tmp = fp32.with_suffix(".tmp.onnx")
        export.export_onnx(model, tmp)
        tmp.replace(fp32)
    if not int8.exists():
        tmp = int8.with_suffix(".tmp.onnx")
        export.quantize_onnx(fp32, tmp, "nbits", bits)
        tmp.replace(int8)
    return fp32, int8, time.perf_counter() - started


@dataclass
class Shipped:
    """Everything the pipeline produced: the table rows, the models and sessions, the files."""

    rows: list[StageResult]
    models: dict
    files: dict
    prefill: dict
    decode: dict


def run(model: nn.Module, windows: data.Windows, folder: str | Path, fraction: float = DEFAULT_FRACTION,
        keep_float: int = 8, bits: int = 8, tokens: int = 128, runs: int = 5, decode_context: int = 32,
        decode_tokens: int = 16, decode_runs: int = 3, threads: int = 2, log=print) -> Shipped:
    """Dense -> pruned -> recovered -> int8 (PyTorch) -> ONNX Runtime -> ONNX Runtime int8 (shipped).

    ``model`` stays untouched (every stage is a copy). Files go to ``folder``;
    ONNX files are reused when the weights match (``cached_export``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seconds, notes, files, stages = {}, {}, {}, {"dense": model}

    started = time.perf_counter()
    scores = mlp.neuron_importance_activation(model, windows.calib)
    pruned = copy.deepcopy(model)
    mlp.remove_neurons(pruned, recipes.neurons_request(pruned, fraction, scores=scores))
    stages["pruned"], seconds["pruned"] = pruned, time.perf_counter() - started
    notes["pruned"] = f"{fraction:.0%} of MLP neurons removed (activation score)"
    log(f"pruned in {seconds['pruned']:.1f} s")

    started = time.perf_counter()
    recovered = copy.deepcopy(pruned)
    refit_down(model, recovered, windows.calib)
    stages["recovered"], seconds["recovered"] = recovered, time.perf_counter() - started
    notes["recovered"] = "down_proj refitted by least squares (closed form)"
    log(f"recovered in {seconds['recovered']:.1f} s")

    started = time.perf_counter()
    ratios = quantize.activation_outlier_ratio(recovered, windows.calib)
    sensitive = quantize.most_sensitive(ratios, keep_float)
    int8 = quantize.quantized_copy(recovered, "dynamic", keep_float=sensitive)
    stages["int8 (PyTorch)"], seconds["int8 (PyTorch)"] = int8, time.perf_counter() - started
    notes["int8 (PyTorch)"] = f"torch.ao dynamic int8, {keep_float} outlier projections kept float"
    log(f"int8 in {seconds['int8 (PyTorch)']:.1f} s")

    fp32_file, int8_file, spent = cached_export(recovered, folder / "onnx", bits)
    seconds["ONNX Runtime"], seconds["shipped"] = spent, 0.0
    stages["ONNX Runtime"] = export.OrtModel(fp32_file, threads)
    stages["shipped"] = export.OrtModel(int8_file, threads)
    notes["ONNX Runtime"] = "recovered model exported to ONNX (float32)"
    notes["shipped"] = f"ONNX Runtime MatMulNBits {bits}-bit weights, 4-bit embedding"
    log(f"exported and quantized in {spent:.1f} s")

    seconds["dense"] = 0.0
    files["dense"] = store.save_safetensors(model, folder / "dense.safetensors")
    files["pruned"] = store.save_safetensors(pruned, folder / "pruned.safetensors")
    files["recovered"] = store.save_safetensors(recovered, folder / "recovered.safetensors")
    files["int8 (PyTorch)"] = store.save_torch(int8, folder / "int8.pt")
    files["ONNX Runtime"], files["shipped"] = fp32_file, int8_file

    return measure(stages, files, windows, seconds, notes, tokens, runs, decode_context, decode_tokens,
                   decode_runs, threads, log)


def measure(stages: dict, files: dict, windows: data.Windows, seconds: dict | None = None,
            notes: dict | None = None, tokens: int = 128, runs: int = 5, decode_context: int = 32,
            decode_tokens: int = 16, decode_runs: int = 3, threads: int = 2, log=print) -> Shipped:
    """Measure every stage against ``stages["dense"]``: perplexity, prefill and decode latency
    (each one interleaved call over all stages, ``timing.speedup``), bytes of ``files[stage]``."""
    seconds, notes = seconds or {}, notes or {}
    model = stages["dense"]
    ppl = {}
    for label, m in stages.items():
        if isinstance(m, export.OrtModel):
            ppl[label] = export.ort_perplexity(m, windows.eval)
        else:
            ppl[label] = metrics.perplexity(m, windows.eval)
    log("perplexity: " + ", ".join(f"{k} {v:.2f}" for k, v in ppl.items()))

    vocab = model.config.vocab_size
    ids = timing._token_batch(model, 1, tokens)
    prefill_fns = {label: ((lambda m=m: m(ids)) if isinstance(m, export.OrtModel)
                           else (lambda m=m: m(ids, use_cache=False))) for label, m in stages.items()}
    prefill = timing.time_side_by_side(prefill_fns, runs=runs, warmup=2, threads=threads)
    torch_models = {k: m for k, m in stages.items() if not isinstance(m, export.OrtModel)}
    fns, setup = speed.decode_workloads(torch_models, decode_context, decode_tokens)
    for label, m in stages.items():
        if isinstance(m, export.OrtModel):
            fns[label], setup[label] = m.decode_workload(decode_context, decode_tokens, vocab)
    decode = timing.time_side_by_side(fns, setup=setup, runs=decode_runs, warmup=1, threads=threads,
                                      per=decode_tokens)

    rows = [StageResult(label, ppl[label], timing.speedup(prefill["dense"], prefill[label]),
                        timing.speedup(decode["dense"], decode[label]), metrics.file_bytes(files[label]),
                        seconds.get(label, 0.0), notes.get(label, "float32 PyTorch"))
            for label in stages]
    return Shipped(rows, stages, files, prefill, decode)
