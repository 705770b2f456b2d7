"""Text sources -> token windows for evaluation and calibration.

The offline default is the Python standard library's own reference prose,
``pydoc_data.topics`` (~460k characters of English). The same ``datasets``
code path reads WikiText-2 when online, or any local ``.txt`` file.

The course protocol (also used by the reference numbers in the issues):
- the text: pydoc topics in sorted key order, joined by blank lines,
  tokenized without special tokens;
- calibration windows: consecutive windows from the *start* of the text;
- evaluation windows: consecutive windows from the *middle* token onwards.
So calibration and evaluation never overlap, by construction (and checked).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

SOURCES = ("pydoc", "python-source", "python-train", "wikitext")

# A second offline text, deliberately of another kind: Python source code of
# standard-library modules (lesson 5 calibrates on one text and evaluates on both).
SOURCE_MODULES = ("argparse", "dataclasses", "enum", "fractions", "functools", "statistics",
                  "textwrap", "string", "shlex", "pprint", "heapq", "bisect", "csv", "json.decoder",
                  "json.encoder", "calendar", "difflib", "ipaddress")
# Python code a recovery may train on: other standard-library modules than SOURCE_MODULES,
# so the held-out code text stays unseen (checked in tests/test_data.py).
TRAIN_MODULES = ("collections", "typing", "inspect", "tokenize", "pathlib", "logging", "shutil",
                 "tempfile", "threading", "traceback", "configparser", "optparse", "random", "zipfile",
                 "urllib.parse", "ast", "contextlib")


def _builtin_texts(source: str) -> list[str] | None:
    """The documents of an offline source (no ``datasets`` needed), or None for other sources."""
    if source == "pydoc":
        from pydoc_data.topics import topics

        return [topics[key] for key in sorted(topics)]
    if source in ("python-source", "python-train"):
        import importlib
        import inspect

        names = SOURCE_MODULES if source == "python-source" else TRAIN_MODULES
        return [inspect.getsource(importlib.import_module(name)) for name in names]
    return None


def text_dataset(source: str = "pydoc") -> "Dataset":
    """A ``datasets.Dataset`` with one ``text`` column, from a named source or a file path."""
    import datasets  # imported here: it takes seconds, and the offline sources do not need it
    from datasets import Dataset, load_dataset

    datasets.disable_progress_bars()  # keep the lessons' outputs clean
    texts = _builtin_texts(source)
    if texts is not None:
        return Dataset.from_dict({"text": texts})
    if source == "wikitext":
        return load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    path = Path(source)
    if path.is_file():
        return load_dataset("text", data_files=str(path), sample_by="document", split="train")
    raise ValueError(
        f"Unknown text source '{source}': use 'pydoc' (English prose, offline), 'python-source' "
        "(Python code, offline; 'python-train': other modules, to train on), 'wikitext' (needs the internet once) or the path of a local .txt file."
    )


@lru_cache(maxsize=4)
def load_text(source: str = "pydoc") -> str:
    """The whole source as one string, documents separated by a blank line."""
    texts = _builtin_texts(source)
    return "\n\n".join(texts if texts is not None else text_dataset(source)["text"])


@dataclass(frozen=True)
class Windows:
    """Token windows of one text: ``eval`` and ``calib`` are (n, seq_len) LongTensors.

    ``eval_spans`` / ``calib_spans`` give each window's [start, end) offsets in
    the tokenized text, so anyone can check they never overlap.
    """

    eval: torch.Tensor
    calib: torch.Tensor
    eval_spans: tuple[tuple[int, int], ...]
    calib_spans: tuple[tuple[int, int], ...]
    total_tokens: int

    @property
    def eval_tokens(self) -> int:
        """Tokens whose probability enters the perplexity (the first of each window has none)."""
        return self.eval.shape[0] * (self.eval.shape[1] - 1)


def windows_tensor(windows) -> torch.Tensor:
    """``windows`` as the (n_windows, seq_len) tensor of token ids a score reads.

    A whole ``Windows`` is refused: which part to score on (calibration or evaluation
    text) is the caller's choice, and the course protocol scores on ``.calib``.
    """
    if isinstance(windows, torch.Tensor):
        return windows
    if hasattr(windows, "calib") and hasattr(windows, "eval"):
        raise TypeError("got a Windows object: pass windows.calib (score on calibration text, "
                        "as the course protocol does) or windows.eval explicitly.")
    raise TypeError(f"windows must be a LongTensor (n_windows, seq_len), got {type(windows).__name__}.")


def make_windows(tokenizer, text: str, seq_len: int = 256, n_eval: int = 16, n_calib: int = 32,
                 add_bos: bool = False, draw: int = 0) -> Windows:
    """Cut ``text`` into calibration windows (from the start) and evaluation windows (from the middle).

    With ``add_bos`` every window begins with the BOS token (Gemma needs it), and
    carries ``seq_len - 1`` text tokens.

    ``draw`` picks the calibration sample: draw 0 is the first ``n_calib`` consecutive
    windows; draw k >= 1 is ``n_calib`` distinct window slots of the first half, chosen at
    random by a generator seeded with k (the same on every machine), in text order. The
    evaluation windows are the same whatever the draw, so methods calibrated on different
    draws are compared on the same tokens.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}: a window needs at least 2 tokens to predict one.")
    if n_eval < 1 or n_calib < 0:
        raise ValueError(f"n_eval={n_eval}, n_calib={n_calib}: need n_eval >= 1 and n_calib >= 0.")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    step = seq_len - 1 if add_bos else seq_len
    middle = len(ids) // 2
    if n_calib * step > middle or middle + n_eval * step > len(ids):
        raise ValueError(
            f"The text has {len(ids)} tokens: too short for {n_calib} calibration and {n_eval} "
            f"evaluation windows of {seq_len} tokens (each half of the text must hold its windows). "
            "Ask for fewer or shorter windows, or use a longer text."
        )
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ValueError(f"draw={draw!r}: the calibration draw is a whole number >= 0 "
                         "(0: the first windows of the text; 1, 2, ...: other random samples).")
    slots = list(range(n_calib)) if draw == 0 else sorted(
        torch.randperm(middle // step, generator=torch.Generator().manual_seed(draw))[:n_calib].tolist())
    calib_spans = tuple((i * step, (i + 1) * step) for i in slots)
    eval_spans = tuple((middle + i * step, middle + (i + 1) * step) for i in range(n_eval))

    def stack(spans):
        rows = [([tokenizer.bos_token_id] if add_bos else []) + ids[a:b] for a, b in spans]
        return torch.tensor(rows, dtype=torch.long).reshape(len(spans), seq_len)

    return Windows(stack(eval_spans), stack(calib_spans), eval_spans, calib_spans, len(ids))


def windows_for(tokenizer, model_name: str, source: str = "pydoc", **kwargs) -> Windows:
    """``make_windows`` on a named source, adding BOS where the model needs it."""
    from .models import needs_bos

    kwargs.setdefault("add_bos", needs_bos(model_name))
    return make_windows(tokenizer, load_text(source), **kwargs)


def mixed_windows(tokenizer, model_name: str, n_prose: int, n_code: int, seq_len: int = 256) -> torch.Tensor:
    """Training windows of two kinds, alternating: prose, code, prose, code, ...

    Prose: the first ``n_prose`` calibration windows of the pydoc text (its first half, never
    the evaluation windows); code: the first ``n_code`` windows of ``python-train`` (standard-library
    modules that the held-out ``python-source`` text does not contain). A recovery trained on prose
    alone learns prose (the refit on prose raised the held-out code perplexity, bench/recovery.md);
    mixing the two keeps both texts in view.
    """
    prose = windows_for(tokenizer, model_name, seq_len=seq_len, n_eval=1, n_calib=n_prose).calib
    return alternate(prose, code_windows(tokenizer, model_name, n_code, seq_len, "python-train"))


def code_windows(tokenizer, model_name: str, n: int, seq_len: int = 256, source: str = "python-source") -> torch.Tensor:
    """``n`` windows of Python code: the held-out evaluation windows of ``python-source`` (the middle
    of the text, as the protocol's), or with ``source="python-train"`` the first windows of the code
    a recovery trains on."""
    if source == "python-source":
        return windows_for(tokenizer, model_name, source=source, seq_len=seq_len, n_eval=n, n_calib=0).eval
    return windows_for(tokenizer, model_name, source=source, seq_len=seq_len, n_eval=1, n_calib=n).calib


def alternate(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The rows of two window tensors interleaved: first[0], second[0], first[1], ... (the rest
    of the longer one at the end)."""
    rows = []
    for i in range(max(len(first), len(second))):
        rows += [part[i] for part in (first, second) if i < len(part)]
    return torch.stack(rows) if rows else first[:0]
