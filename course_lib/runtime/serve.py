"""Serving: ``generate()`` with the KV cache, greedy, and what it costs per token.

Prefill (the prompt, all tokens at once) is compute-bound: big matrix products.
Decode (one token at a time, reusing the cache) reads every weight once per
token for very little arithmetic: memory-bound. A change can help one and not
the other, so the course times both: ``decode_side_by_side`` interleaves the
candidates' decoding steps (``speed.decode_workloads``), and ``generate_text``
runs the real ``generate()`` loop a user would, for the words and the tokens/s.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ..core import timing
from ..core.timing import Measurement
from .speed import decode_workloads

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
