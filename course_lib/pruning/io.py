"""Saving and loading pruned models.

``from_pretrained`` builds every layer from one config, so it cannot load a model
whose layers have different head counts or MLP widths. A pruned model is saved
as a *recipe* instead:

- ``manifest.json``: the base model's course name (``model.course_name``), its
  config, and what each layer kept (original head / neuron indices), plus the
  unstructured sparsity;
- ``model.safetensors``: every weight, as it is now (zeros included);
- ``tokenizer/``: the tokenizer.

``load_pruned`` loads the base model by name, removes the same heads and neurons
(so every matrix has the saved shape), then loads the saved weights strictly:
any missing, extra or misshapen tensor is an error, never a silent mismatch.

**Standard checkpoints.** When every layer was cut the same way (the same number
of heads, KV heads and MLP neurons in every layer -- *which* ones may differ, since
each layer keeps its own slices), one config describes every layer again, and
``export_pretrained`` writes a plain Hugging Face checkpoint: ``config.json`` with
the new ``num_attention_heads`` / ``num_key_value_heads`` / ``intermediate_size``
(``n_inner`` for GPT-2) and an explicit ``head_dim``, the kept slices as weights,
the tokenizer beside them. Anyone loads it with ``AutoModelForCausalLM.from_pretrained``,
no ``course_lib`` needed. ``save_pruned`` writes that form whenever the shapes allow
(adding the manifest, so ``load_pruned`` still knows the base model), and the recipe
form otherwise. Get a uniform cut with ``recipes.uniform_heads_request`` /
``uniform_groups_request`` / ``uniform_neurons_request``.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..core import arch, metrics, models
from .heads import kept_heads, remove_heads
from .mlp import kept_neurons, remove_neurons
from . import compressed
from .undo import PruneHandle

FORMAT = "course-pruned-v1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
SPARSE_WEIGHTS = "model.bitmask.safetensors"  # the course's own layout (pruning.compressed)
TOKENIZER = "tokenizer"

# config keys that must agree between the saved model and the base reloaded by name
_CHECKED_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "n_layer",
                 "n_embd", "num_attention_heads", "n_head", "num_key_value_heads",
                 "intermediate_size", "n_inner", "head_dim")


def _jsonable(value: Any) -> Any:
    """JSON-safe copy of handle.info: tensors and arrays become a short description."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    shape = getattr(value, "shape", None)
    return f"<{type(value).__name__}{' ' + str(tuple(shape)) if shape is not None else ''}>"


def _dump(manifest: dict) -> str:
    """JSON with one top-level key per line (long index lists stay on their line)."""
    lines = [f" {json.dumps(key)}: {json.dumps(value)}" for key, value in manifest.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _base_shapes(config) -> tuple[int, int]:
    """(heads, MLP width) of every layer of the unpruned model."""
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) \
        or 4 * config.hidden_size
    return config.num_attention_heads, width


def structure(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """What each pruned layer kept, in original indices: ``{"heads": {...}, "neurons": {...}}``.

    Only layers changed by ``remove_heads`` / ``remove_neurons`` appear. A model
    whose shapes changed some other way is refused: it could not be rebuilt.
    """
    n_heads, width = _base_shapes(model.config)
    heads = {str(i): k for i, k in kept_heads(model).items() if k is not None}
    neurons = {str(i): k for i, k in kept_neurons(model).items() if k is not None}
    for i in range(len(arch.decoder_layers(model))):
        now_heads = arch.attention_shape(model, i).n_heads
        now_width = arch.mlp_width(model, i)
        if len(heads.get(str(i), range(n_heads))) != now_heads or \
                len(neurons.get(str(i), range(width))) != now_width:
            raise ValueError(f"layer {i} has {now_heads} heads and {now_width} MLP neurons, which "
                             "the course's remove_heads/remove_neurons did not produce: "
                             "save_pruned cannot record how to rebuild it.")
    return {"heads": heads, "neurons": neurons}


def _manifest(model: nn.Module, handle_or_manifest) -> dict:
    name = getattr(model, "course_name", None)
    if name is None:
        raise ValueError("the model has no course_name: load it with course_lib.core.models.load(name) "
                         "(or set model.course_name to the name it was loaded by), so that "
                         "load_pruned knows which base model to rebuild.")
    kept = structure(model)
    n_layers = len(arch.decoder_layers(model))
    sparsity = metrics.total_sparsity(model)
    kind = "structured" if kept["heads"] or kept["neurons"] else (
        "unstructured" if sparsity > 0 else "dense")
    manifest = {
        "format": FORMAT,
        "base_model": name,
        "kind": kind,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "config": json.loads(model.config.to_json_string(use_diff=False)),
        "kept_heads": kept["heads"],
        "kept_neurons": kept["neurons"],
        "unstructured": {"sparsity": sparsity},
        # for people reading the file; load_pruned checks these after rebuilding
        "heads_per_layer": [arch.attention_shape(model, i).n_heads for i in range(n_layers)],
        "kv_heads_per_layer": [arch.attention_shape(model, i).n_kv_heads for i in range(n_layers)],
        "mlp_width_per_layer": [arch.mlp_width(model, i) for i in range(n_layers)],
        "weights": WEIGHTS,
    }
    if isinstance(handle_or_manifest, PruneHandle):
        manifest["prune"] = {"description": handle_or_manifest.description,
                             "info": _jsonable(handle_or_manifest.info)}
    elif isinstance(handle_or_manifest, dict):
        manifest["notes"] = _jsonable(handle_or_manifest)
    elif handle_or_manifest is not None:
        raise TypeError("handle_or_manifest must be a PruneHandle, a dict of notes or None, "
                        f"got {type(handle_or_manifest).__name__}.")
    return manifest


def save_pruned(model: nn.Module, folder, handle_or_manifest=None, tokenizer=None,
                standard: bool | None = None, compress: bool = False,
                _manifest_optional: bool = False) -> Path:
    """Write ``folder`` = manifest + safetensors weights (+ tokenizer), atomically.

    ``compress=True`` stores sparse weights in the bitmask layout (``compressed``):
    fewer bytes for an unstructured sparse model, opened by ``load_pruned`` only;
    ``manifest["bytes_on_disk"]`` then reports the saved folder's size.
    ``standard``: None (default) writes a standard Hugging Face checkpoint when the
    layers were cut uniformly (see ``export_pretrained``) and the recipe form
    otherwise; True requires the standard form; False always writes the recipe form.

    Everything is written into a temporary folder next to ``folder`` and renamed
    into place at the end, so an interrupted save leaves either the previous
    save or nothing -- never a folder that loads wrong. An existing ``folder``
    is replaced only if it is itself a save (holds a manifest).
    """
    folder = Path(folder).expanduser().absolute()
    if folder.exists() and not (folder / MANIFEST).is_file() and not is_standard(folder) and \
            (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder} exists and is not a saved pruned model (no {MANIFEST}); "
                         "choose a new folder, or delete this one yourself.")
    if compress:
        if standard:
            raise ValueError("compress=True writes the course's bitmask file, which from_pretrained "
                             "cannot open: ask for standard=True or compress=True, not both.")
        standard = False
    if standard is None:
        try:
            uniform_shapes(model)
            standard = True
        except ValueError:
            standard = False
    elif standard:
        uniform_shapes(model)
    optional = _manifest_optional and getattr(model, "course_name", None) is None
    manifest = None if optional else _manifest(model, handle_or_manifest)
    folder.parent.mkdir(parents=True, exist_ok=True)
    models.remove_stale_staging(folder.parent, f".{folder.name}.saving-*")
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.saving-", dir=folder.parent))
    try:
        if standard:
            _write_standard(model, staging, tokenizer)
            if manifest is not None:
                manifest.update(standard=True, weights=WEIGHTS, tokenizer_folder=".")
        elif compress:
            from safetensors.torch import save_file
            state = _unique_state(model)
            save_file(compressed.compress_state_dict(state), str(staging / SPARSE_WEIGHTS),
                      metadata={"format": "pt", "compression": compressed.FORMAT})
            manifest.update(weights=SPARSE_WEIGHTS, compression=compressed.FORMAT)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging / TOKENIZER)
        else:
            save_model(model, str(staging / WEIGHTS), metadata={"format": "pt"})  # tied weights once
            if tokenizer is not None:
                tokenizer.save_pretrained(staging / TOKENIZER)
        if manifest is not None:
            manifest["tokenizer"] = tokenizer is not None
            manifest["bytes_on_disk"] = folder_bytes(staging)  # without the manifest itself
            (staging / MANIFEST).write_text(_dump(manifest))  # written last: marks the save complete
        if folder.exists():
            # rename(2) cannot replace a non-empty folder: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old)
            try:
                os.replace(staging, folder)
            except BaseException:
                os.replace(old, folder)  # put the previous save back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left if something failed
    return folder


def uniform_shapes(model: nn.Module) -> dict:
    """The one config a standard checkpoint needs, or a ValueError saying why there is none.

    Returns the per-layer counts ``{"heads", "kv_heads", "head_dim", "mlp_width"}``.
    """
    n_layers = len(arch.decoder_layers(model))
    attn = [arch.attention_shape(model, i) for i in range(n_layers)]
    widths = [arch.mlp_width(model, i) for i in range(n_layers)]
    if len(set(attn)) > 1 or len(set(widths)) > 1:
        raise ValueError(
            "no standard checkpoint is possible: the layers were cut differently (heads per layer "
            f"{[a.n_heads for a in attn]}, KV heads {[a.n_kv_heads for a in attn]}, MLP widths "
            f"{widths}), and transformers builds every layer from one config, so from_pretrained "
            "cannot rebuild them. Save it with save_pruned (course recipe format, loaded by "
            "load_pruned), or prune uniformly -- the same count in every layer, e.g. "
            "recipes.uniform_heads_request / uniform_groups_request / uniform_neurons_request -- "
            "to get a checkpoint anyone can load.")
    shape = attn[0]
    if arch.family(model) == "gpt2" and shape.n_heads != model.config.n_head:
        raise ValueError(
            f"no standard checkpoint is possible: GPT-2's attention in transformers ties its width "
            f"to n_embd ({model.config.n_embd} = n_head x head_dim), so a GPT-2 with "
            f"{shape.n_heads} of {model.config.n_head} heads cannot be described by its config. "
            "Save it with save_pruned (recipe format), or prune only MLP neurons (n_inner) "
            "for a standard GPT-2 checkpoint.")
    return {"heads": shape.n_heads, "kv_heads": shape.n_kv_heads, "head_dim": shape.head_dim,
            "mlp_width": widths[0]}


def standard_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be written as a standard checkpoint (``uniform_shapes``' reason), or None."""
    try:
        uniform_shapes(model)
    except ValueError as err:
        return str(err)
    return None


def standard_config(model: nn.Module):
    """A copy of ``model.config`` describing the pruned shapes (raises if layers differ)."""
    shapes = uniform_shapes(model)
    config = copy.deepcopy(model.config)
    if arch.family(model) == "gpt2":
        config.n_inner = shapes["mlp_width"]
    else:
        config.num_attention_heads = shapes["heads"]
        config.num_key_value_heads = shapes["kv_heads"]
        config.head_dim = shapes["head_dim"]  # explicit: hidden_size / heads no longer equals it
        config.intermediate_size = shapes["mlp_width"]
    return config


def _write_standard(model: nn.Module, staging: Path, tokenizer) -> None:
    config = standard_config(model)
    saved = model.config
    quantizer = getattr(model, "hf_quantizer", None)
    model.config = config  # save_pretrained writes self.config; put the original back after
    try:
        if quantizer is not None:  # a GGUF-loaded model: weights are already float tensors
            model.hf_quantizer = None
        model.save_pretrained(staging)
    finally:
        model.config = saved
        if quantizer is not None:
            model.hf_quantizer = quantizer
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)


def export_pretrained(model: nn.Module, folder, tokenizer=None) -> Path:
    """Write a plain Hugging Face checkpoint of a uniformly pruned model, atomically.

    ``AutoModelForCausalLM.from_pretrained(folder)`` then gives the same logits in
    any process. Raises ValueError (saying why, and how to get a uniform cut) when
    the layers differ. When the model knows its course name, the folder also gets
    the course manifest, so ``load_pruned`` opens it too.
    """
    uniform_shapes(model)  # refuse before touching the disk
    return save_pruned(model, folder, tokenizer=tokenizer, standard=True, _manifest_optional=True)


def is_standard(folder) -> bool:
    """Whether ``folder`` opens with plain ``from_pretrained`` (has a config.json)."""
    return (Path(folder) / "config.json").is_file()


def folder_bytes(folder) -> int:
    """Bytes of every file under ``folder``, as stored (measured, not estimated)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared (tied) tensor once, as safetensors' save_model keeps it."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)
        if key not in seen:
            seen.add(key)
            state[name] = tensor
    return state


def read_manifest(folder) -> dict:
    """The manifest of a save, with a clear error when ``folder`` is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        folder = Path(folder).absolute()
        # A kill between "move the previous save aside" and "rename the new one in" leaves
        # the previous save under a hidden name: point at it rather than lose it.
        aside = sorted(p for p in folder.parent.glob(f".{folder.name}.old-*") if (p / MANIFEST).is_file())
        hint = (f" An interrupted save left the previous one in {aside[-1]}: rename it back to "
                f"{folder.name} to use it." if aside and not folder.exists() else "")
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by "
                                f"save_pruned (or the save was interrupted).{hint}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}.")
    return manifest


def _check_base(model: nn.Module, manifest: dict) -> None:
    now = json.loads(model.config.to_json_string(use_diff=False))
    saved = manifest["config"]
    for key in _CHECKED_KEYS:
        if key in saved and now.get(key) != saved[key]:
            raise ValueError(f"base model {manifest['base_model']!r} now has {key}={now.get(key)!r}, "
                             f"but the save was made with {key}={saved[key]!r}: it cannot be "
                             "rebuilt from this base model.")


def load_pruned(folder, device: str | None = None, attn_implementation: str | None = None):
    """``(model, tokenizer)`` from a ``save_pruned`` folder, identical to what was saved."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("compression") not in (None, compressed.FORMAT):
        raise ValueError(f"{folder}: its weights are stored as {manifest['compression']!r}, a layout this "
                         f"version of the course does not read (it writes {compressed.FORMAT!r}): "
                         "prune and save the model again.")
    if manifest.get("standard"):
        return _load_standard(folder, manifest, device, attn_implementation)
    models.check_safetensors(folder / manifest["weights"])
    model, tokenizer = models.load(
        manifest["base_model"], device=device, dtype=getattr(torch, manifest["dtype"]),
        attn_implementation=attn_implementation or manifest.get("attn_implementation"))
    _check_base(model, manifest)
    n_heads, width = _base_shapes(model.config)
    # Rebuild the structure: remove what was not kept (original indices).
    drop_heads = {int(i): sorted(set(range(n_heads)) - set(k))
                  for i, k in manifest["kept_heads"].items()}
    drop_neurons = {int(i): sorted(set(range(width)) - set(k))
                    for i, k in manifest["kept_neurons"].items()}
    remove_heads(model, drop_heads).make_permanent()
    remove_neurons(model, drop_neurons).make_permanent()
    n_layers = len(arch.decoder_layers(model))
    rebuilt = ([arch.attention_shape(model, i).n_heads for i in range(n_layers)],
               [arch.mlp_width(model, i) for i in range(n_layers)])
    if rebuilt != (manifest["heads_per_layer"], manifest["mlp_width_per_layer"]):
        raise ValueError(f"{folder}: rebuilding gave heads {rebuilt[0]} and widths {rebuilt[1]}, "
                         f"but the manifest says {manifest['heads_per_layer']} and "
                         f"{manifest['mlp_width_per_layer']}: the manifest is damaged.")
    device_now = next(model.parameters()).device
    try:
        if manifest.get("compression") == compressed.FORMAT:
            from safetensors.torch import load_file
            state = compressed.decompress_state_dict(load_file(str(folder / manifest["weights"])))
            _load_unique_state(model, state)
        else:
            # strict: every tensor must be there with its exact shape
            load_model(model, str(folder / manifest["weights"]), strict=True, device=str(device_now))
    except RuntimeError as err:
        raise ValueError(f"{folder}: the saved weights do not fit the rebuilt model ({err}). "
                         "Were the manifest and the weights written by different saves?") from err
    model.eval()
    if manifest.get("tokenizer") and (folder / TOKENIZER).is_dir():
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER)
    return model, tokenizer


def _load_standard(folder: Path, manifest: dict, device, attn_implementation):
    """A standard checkpoint with its manifest: from_pretrained, strictly, plus the course's records."""
    hf = models.quiet_transformers()
    AutoModelForCausalLM, AutoTokenizer = hf.AutoModelForCausalLM, hf.AutoTokenizer

    from .heads import KEPT_HEADS_ATTR
    from .mlp import KEPT_NEURONS_ATTR

    device = device or models.default_device()
    models.check_safetensors(folder)
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, manifest["dtype"]), output_loading_info=True,
        attn_implementation=attn_implementation or manifest.get("attn_implementation"))
    problems = {k: v for k, v in info.items() if v and k != "error_msgs" or k == "error_msgs" and v}
    if problems:
        raise ValueError(f"{folder}: the saved weights do not fit its config ({problems}).")
    model.to(device).eval()
    layers = arch.decoder_layers(model)
    for i, kept in manifest["kept_heads"].items():  # what remove_heads would have recorded
        setattr(arch.attention(layers[int(i)]), KEPT_HEADS_ATTR, list(kept))
    for i, kept in manifest["kept_neurons"].items():
        setattr(arch.mlp(layers[int(i)]), KEPT_NEURONS_ATTR, list(kept))
    model.course_name = manifest["base_model"]
    tokenizer = AutoTokenizer.from_pretrained(folder) if manifest.get("tokenizer") else None
    if tokenizer is None:
        tokenizer = models.load(manifest["base_model"], device="cpu")[1]
    return model, tokenizer


def _load_unique_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model`` strictly (tied tensors may appear under one name)."""
    expected = _unique_state(model)
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise RuntimeError(f"missing tensors {missing[:5]}, unexpected tensors {extra[:5]}")
    with torch.no_grad():
        for name, target in expected.items():
            if tuple(state[name].shape) != tuple(target.shape):
                raise RuntimeError(f"{name} has shape {tuple(state[name].shape)}, the model "
                                   f"expects {tuple(target.shape)}")
            target.copy_(state[name])
