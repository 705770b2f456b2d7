"""Serving: ``generate()`` with the KV cache, greedy, and what it costs per token.

Prefill (the prompt, all tokens at once) is compute-bound: big matrix products.
Decode (one token at a time, reusing the cache) reads every weight once per
token for very little arithmetic: memory-bound. A change can help one and not
the other, so the course times both: ``decode_side_by_side`` interleaves the
candidates' decoding steps (``speed.decode_workloads``), and ``generate_text``
runs the real ``generate()`` loop a user would, for the words and the tokens/s.

What a server sells is tokens per second: ``throughput`` times whole greedy
generations (the prompt's prefill, then one step per new token, KV cache on) of
a batch of prompts, every candidate interleaved run by run, PyTorch models and
ONNX Runtime sessions alike (``greedy`` is the one loop for both). A batch of 8
reads each weight once per step for 8 tokens: where decoding is bound by reading
the weights, batch 8 serves more tokens per second than batch 1; where the
arithmetic already fills the processor, batching cannot help much.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..core import timing
from ..core.timing import Measurement, Speedup
from .export import OrtModel
from .speed import decode_workloads

SERVE_BATCHES = (1, 8)  # prompts served at once

PROMPT = "The three most useful things to know about Python's standard library are"


@dataclass(frozen=True)
class Served:
    """One greedy generation."""

    text: str  # the new tokens only, decoded
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds

    def first_words(self, count: int = 12) -> str:
        return " ".join(self.text.split()[:count])


@torch.inference_mode()
def generate_text(model: nn.Module, tokenizer, prompt: str = PROMPT, new_tokens: int = 128) -> Served:
    """Greedy ``generate()`` of exactly ``new_tokens`` tokens after ``prompt`` (KV cache on)."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens={new_tokens}: generate at least one token.")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    started = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         use_cache=True, pad_token_id=pad)
    seconds = time.perf_counter() - started
    new = out[0, ids.shape[1]:]
    return Served(tokenizer.decode(new, skip_special_tokens=True), int(new.numel()), seconds)


def decode_side_by_side(models: dict[str, nn.Module], context: int = 32, new_tokens: int = 16,
                        runs: int = 3, warmup: int = 1, threads: int | None = 2) -> dict[str, Measurement]:
    """Per-token decode latency of several models, interleaved run by run (for ``timing.speedup``)."""
    fns, setup = decode_workloads(models, context, new_tokens)
    return timing.time_side_by_side(fns, setup=setup, runs=runs, warmup=warmup, threads=threads,
                                    per=new_tokens)


@torch.inference_mode()
def greedy(stage, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``(batch, new_tokens)`` greedy tokens after the prompts ``input_ids`` (one length, no padding).

    ``stage``: a PyTorch model (its own KV cache, as ``generate()`` keeps it) or an
    ``export.OrtModel`` (the cache kept in ONNX Runtime): one prefill of the prompts,
    then one single-token step per new token after the first.
    """
    if new_tokens < 1:
        raise ValueError(f"new_tokens={new_tokens}: generate at least one token.")
    if isinstance(stage, OrtModel):
        return stage.greedy(input_ids, new_tokens)
    cache = DynamicCache(config=stage.config)
    logits = stage(input_ids.to(next(stage.parameters()).device), cache=cache, use_cache=True).logits
    tokens = []
    for i in range(new_tokens):
        token = logits[:, -1:].argmax(-1)
        tokens.append(token)
        if i + 1 < new_tokens:
            logits = stage(token, cache=cache, use_cache=True).logits
    return torch.cat(tokens, dim=1).cpu()


@dataclass(frozen=True)
class Throughput:
    """Greedy generation at one batch size, every stage timed in one interleaved call."""

    batch: int
    prompt_tokens: int
    new_tokens: int
    tokens: dict  # label -> tokens one generation produced (counted from its output)
    measurements: dict  # label -> Measurement of one whole generation (prefill + steps)

    def tokens_per_s(self, label: str) -> float:
        """New tokens per second of wall time (the prompt's prefill included)."""
        return self.tokens[label] / (self.measurements[label].median_ms / 1e3)

    def speedup(self, label: str, baseline: str = "dense") -> Speedup:
        """Paired speedup of ``label`` over ``baseline`` at this batch size."""
        return timing.speedup(self.measurements[baseline], self.measurements[label])


def throughput(stages: dict, vocab: int, batches=SERVE_BATCHES, prompt_tokens: int = 32, new_tokens: int = 16,
               runs: int = 3, warmup: int = 1, threads: int | None = 2, seed: int = 0) -> dict[int, Throughput]:
    """Greedy tokens per second of each stage (model or ``OrtModel``) at each batch size.

    Per batch size, the same random prompts (``batch x prompt_tokens`` ids below
    ``vocab``) go to every stage, and the whole generations are interleaved run by
    run (``timing.time_side_by_side``), so ``Throughput.speedup`` pairs them.
    """
    torch_stages = [s for s in stages.values() if not isinstance(s, OrtModel)]
    device = timing._model_device(torch_stages[0]) if torch_stages else "cpu"
    results = {}
    for batch in batches:
        ids = torch.randint(0, vocab, (batch, prompt_tokens), generator=torch.Generator().manual_seed(seed))
        counted: dict[str, int] = {}

        def generation(label, stage):
            def run():
                counted[label] = greedy(stage, ids, new_tokens).numel()
            return run

        measured = timing.time_side_by_side({label: generation(label, stage) for label, stage in stages.items()},
                                            runs=runs, warmup=warmup, threads=threads, device=device)
        results[batch] = Throughput(batch, prompt_tokens, new_tokens, counted, measured)
    return results
