"""Attention-head pruning: switch heads off (zeroing) or cut them out (removal).

Multi-head attention computes every head on its own and then mixes them with
one output projection::

    out = W_o @ concat(head_0, ..., head_{H-1})  =  sum_h  W_o[:, slice_h] @ head_h

where ``slice_h`` is the block of ``head_dim`` input columns that reads head ``h``.
Two consequences carry this whole module:

- **zeroing** ``W_o[:, slice_h]`` makes the model behave *exactly* as if head ``h``
  had output nothing, whatever its queries, keys and values computed (heads never
  mix before ``W_o``: each has its own softmax). That is ``zero_heads``.
- **removing** the head deletes those columns of ``W_o`` *and* the rows of the
  query projection that produce it (and its key/value rows when no other query
  head still uses them). The matrices get smaller, the model gets faster, and
  the logits equal the zeroed model's. That is ``remove_heads``.

Grouped-query attention (Llama-style models with fewer KV heads than query
heads) adds one rule: query heads ``k*g .. k*g+g-1`` share key/value head ``k``,
and the attention code repeats each KV head ``num_key_value_groups`` times. So
after removal every surviving group must keep the same number of query heads.

Head sets are written ``{layer_index: [query head indices]}``, counted in the
model as it is now (after an earlier removal, heads are renumbered 0..n-1).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..core import arch, data, metrics
from .slicing import block_indices, check_request, current_kept, record_kept, slice_linear
from .undo import PruneHandle, restoring_on_error

# Which heads/neurons of the *original* model a layer still has. Written by the
# removal functions (through the handle, so ``restore`` resets it); ``io`` reads
# it to save a pruned model. ``None`` means "all of them".
KEPT_HEADS_ATTR = "course_kept_heads"


# ---------------------------------------------------------------- validation --

def _check_heads(model: nn.Module, heads) -> dict[int, list[int]]:
    return check_request(model, heads, "head", lambda i: arch.attention_shape(model, i).n_heads)


def _gqa_suggestion(removed: list[int], n_heads: int, group: int) -> str:
    """Two valid requests close to an invalid one: k heads in every group, or whole groups."""
    n_groups = n_heads // group
    wanted = set(removed)
    k = min(max(round(len(removed) / n_groups), 1), group - 1)
    per_group = []
    for g in range(n_groups):
        members = list(range(g * group, (g + 1) * group))
        # the heads the user asked for first, then the lowest others of the group
        ordered = [h for h in members if h in wanted] + [h for h in members if h not in wanted]
        per_group += sorted(ordered[:k])
    option = f"remove heads {sorted(per_group)} ({k} per group)"
    m = min(max(round(len(removed) / group), 1), n_groups - 1)
    if m >= 1:
        hits = Counter(h // group for h in removed)
        chosen = sorted(sorted(range(n_groups), key=lambda g: (-hits[g], g))[:m])
        whole = [h for g in chosen for h in range(g * group, (g + 1) * group)]
        noun = "group" if m == 1 else "groups"
        option += f" or the whole {noun} {whole}"
    return option


def _check_removable(model: nn.Module, layer: int, removed: list[int]) -> None:
    """Refuse head sets that cannot become a smaller attention block."""
    shape = arch.attention_shape(model, layer)
    if len(removed) >= shape.n_heads:
        raise ValueError(f"layer {layer}: removing all {shape.n_heads} heads would leave an "
                         "attention block with no heads; a layer keeps at least one head, so "
                         f"remove at most {shape.n_heads - 1}. (To see what the layer does "
                         "without attention, zero_heads accepts all of them.)")
    g = shape.group_size
    if g == 1:  # plain multi-head attention: any subset works
        return
    removed_in = Counter(h // g for h in removed)
    kept = [g - removed_in[k] for k in range(shape.n_kv_heads)]
    if len({c for c in kept if c > 0}) > 1:
        raise ValueError(
            f"layer {layer}: cannot remove heads {removed}. This layer uses grouped-query "
            f"attention: its {shape.n_heads} query heads share {shape.n_kv_heads} key/value heads "
            f"in groups of {g} (heads {list(range(g))} share key/value head 0, and so on), and the "
            "attention code repeats each key/value head the same number of times, so every group "
            "must keep the same number of query heads (or lose all of them, together with its "
            f"key/value head). This request would keep {kept} heads in the groups. "
            f"Nearest valid choices: {_gqa_suggestion(removed, shape.n_heads, g)}.")


def _out_proj(model: nn.Module, attn: nn.Module) -> nn.Module:
    return attn.c_proj if arch.family(model) == "gpt2" else attn.o_proj


# ------------------------------------------------------------------ zeroing --

@torch.no_grad()
def zero_heads(model: nn.Module, heads, also_queries: bool = False) -> PruneHandle:
    """Switch heads off by zeroing their columns of the output projection.

    This alone is exact: the output projection is linear and reads each head
    through its own block of columns, so a zero block removes that head's
    contribution entirely (see the module docstring). Zeroing the query rows
    as well (``also_queries=True``) changes nothing in the output -- a zero
    query gives *uniform* attention, not a zero head, so it would not suffice
    on its own -- but it makes the dead head visible in ``W_q`` too.

    Zeroing every head of a layer is allowed here (the layer then adds only the
    output bias, if any); ``remove_heads`` refuses that.
    """
    heads = _check_heads(model, heads)
    handle = PruneHandle("zero heads")
    layers = arch.decoder_layers(model)
    with restoring_on_error(handle):
        for layer, chosen in heads.items():
            if not chosen:
                continue
            attn = arch.attention(layers[layer])
            d = arch.attention_shape(model, layer).head_dim
            out_proj = _out_proj(model, attn)
            handle.save_tensor(out_proj.weight.data)
            cols = block_indices(chosen, d, out_proj.weight.device)
            arch.weight_matrix(out_proj)[:, cols] = 0  # Conv1D: a transposed view, writes through
            if also_queries:
                q = attn.c_attn if arch.family(model) == "gpt2" else attn.q_proj
                # GPT-2's c_attn outputs q|k|v; the query block comes first, so the
                # query rows of head h sit at the same positions as in a q_proj.
                handle.save_tensor(q.weight.data)
                arch.weight_matrix(q)[cols, :] = 0
                if q.bias is not None:
                    handle.save_tensor(q.bias.data)
                    q.bias.data[cols] = 0
    handle.info = {"kind": "heads", "mode": "zero", "heads": heads, "also_queries": also_queries}
    return handle


# ------------------------------------------------------------------ removal --

def _remove_gpt2(attn: nn.Module, keep: list[int], d: int, handle: PruneHandle) -> None:
    # c_attn's output is [q | k | v], each block ``split_size`` wide and made of
    # head_dim-wide heads. Keep the same heads in all three blocks.
    width = attn.split_size
    device = attn.c_attn.weight.device
    head_cols = block_indices(keep, d, device)
    qkv_cols = torch.cat([head_cols, head_cols + width, head_cols + 2 * width])
    handle.set_attr(attn, "c_attn", slice_linear(attn.c_attn, keep_out=qkv_cols))
    handle.set_attr(attn, "c_proj", slice_linear(attn.c_proj, keep_in=head_cols))
    # forward splits c_attn's output with split_size; num_heads is informative only;
    # embed_dim is the residual width, which does not change
    handle.set_attr(attn, "split_size", len(keep) * d)
    handle.set_attr(attn, "num_heads", len(keep))


def _remove_llama(attn: nn.Module, keep: list[int], group: int, d: int,
                  handle: PruneHandle) -> None:
    for norm in ("q_norm", "k_norm"):  # Gemma3: one norm of size head_dim shared by all heads
        module = getattr(attn, norm, None)
        if module is not None and module.weight.shape[-1] != d:
            raise NotImplementedError(f"{norm} has shape {tuple(module.weight.shape)}, not "
                                      f"({d},): per-head norms would need slicing too.")
    # A KV head survives while at least one query head of its group does.
    keep_kv = sorted({h // group for h in keep})
    device = attn.q_proj.weight.device
    q_rows, kv_rows = block_indices(keep, d, device), block_indices(keep_kv, d, device)
    handle.set_attr(attn, "q_proj", slice_linear(attn.q_proj, keep_out=q_rows))
    handle.set_attr(attn, "k_proj", slice_linear(attn.k_proj, keep_out=kv_rows))
    handle.set_attr(attn, "v_proj", slice_linear(attn.v_proj, keep_out=kv_rows))
    handle.set_attr(attn, "o_proj", slice_linear(attn.o_proj, keep_in=q_rows))
    # forward reads the head count from the weight shapes, but the eager path
    # repeats each KV head num_key_value_groups times: it must match the new ratio.
    # (sdpa without an attention mask infers the ratio itself and would hide a stale value;
    # with one, e.g. a padded batch, it repeats the KV heads as eager does.)
    handle.set_attr(attn, "num_key_value_groups", len(keep) // len(keep_kv))


@torch.no_grad()
def remove_heads(model: nn.Module, heads) -> PruneHandle:
    """Cut heads out: smaller q/k/v/o matrices, updated head bookkeeping.

    Per layer, the kept heads' rows of the query projection, the kept KV heads'
    rows of k/v, and the kept heads' columns of the output projection are copied
    into new, smaller modules, swapped in through the handle (``restore`` swaps
    the originals back). The logits equal ``zero_heads`` on the same set.
    """
    heads = _check_heads(model, heads)
    for layer, chosen in heads.items():
        if chosen:
            _check_removable(model, layer, chosen)
    handle = PruneHandle("remove heads")
    layers = arch.decoder_layers(model)
    kept_original: dict[int, list[int]] = {}
    with restoring_on_error(handle):
        for layer, chosen in heads.items():
            if not chosen:
                continue
            shape = arch.attention_shape(model, layer)
            attn = arch.attention(layers[layer])
            dropped = set(chosen)
            keep = [h for h in range(shape.n_heads) if h not in dropped]
            original = current_kept(attn, KEPT_HEADS_ATTR, shape.n_heads)
            if arch.family(model) == "gpt2":
                _remove_gpt2(attn, keep, shape.head_dim, handle)
            else:
                _remove_llama(attn, keep, shape.group_size, shape.head_dim, handle)
            kept_original[layer] = [original[h] for h in keep]
            record_kept(handle, attn, KEPT_HEADS_ATTR, kept_original[layer])
    handle.info = {"kind": "heads", "mode": "remove", "heads": heads,
                   "kept_original_heads": kept_original}
    return handle


# --------------------------------------------------------------- importance --

def _per_layer_table(rows: list[list[float]]) -> np.ndarray:
    """layers x max_heads array; NaN where a (pruned) layer has fewer heads."""
    width = max(len(r) for r in rows)
    table = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        table[i, :len(r)] = r
    return table


@torch.no_grad()
def head_importance_weight_norm(model: nn.Module) -> np.ndarray:
    """Frobenius norm of each head's block of the output projection (layers x heads).

    Why this block: it is exactly what ``zero_heads`` sets to zero, and its norm
    bounds how strongly a unit of head output can move the residual stream. It
    is free to compute but blind to how large the head's output actually is on
    real text; ``head_importance_ablation`` measures that (at a price).
    """
    rows = []
    for layer, block in enumerate(arch.decoder_layers(model)):
        shape = arch.attention_shape(model, layer)
        w = arch.weight_matrix(_out_proj(model, arch.attention(block))).float()
        blocks = w.reshape(w.shape[0], shape.n_heads, shape.head_dim)  # (hidden, head, d)
        rows.append(blocks.pow(2).sum(dim=(0, 2)).sqrt().tolist())
    return _per_layer_table(rows)


def head_importance_ablation(model: nn.Module, windows: torch.Tensor,
                             batch_size: int = 4) -> np.ndarray:
    """Perplexity increase when each head alone is zeroed (layers x heads).

    One perplexity evaluation per head (plus one for the baseline), each head
    restored before the next: slow on big models, but it asks the model itself.
    Negative values mean the model does (slightly) better without that head.
    """
    windows = data.windows_tensor(windows)
    base = metrics.perplexity(model, windows, batch_size)
    rows = []
    for layer in range(len(arch.decoder_layers(model))):
        row = []
        for head in range(arch.attention_shape(model, layer).n_heads):
            handle = zero_heads(model, {layer: [head]})
            try:
                row.append(metrics.perplexity(model, windows, batch_size) - base)
            finally:
                handle.restore()
        rows.append(row)
    return _per_layer_table(rows)


@torch.no_grad()
def head_importance_contribution(model: nn.Module, windows: torch.Tensor,
                                 batch_size: int = 4) -> np.ndarray:
    """How much each head adds to the residual stream on real text (layers x heads).

    For head ``h`` that is ``W_o[:, slice_h] @ head_h(x)``: exactly what
    ``zero_heads`` removes. We average its norm over the calibration tokens.
    One forward pass for all heads: nearly as cheap as the weight norm, but it
    sees the activations (a head with small weights can still speak loudly).
    """
    windows = data.windows_tensor(windows)
    layers = arch.decoder_layers(model)
    totals = [None] * len(layers)
    hooks = {}
    for index, block in enumerate(layers):
        out_proj = _out_proj(model, arch.attention(block))
        shape = arch.attention_shape(model, index)
        blocks = arch.weight_matrix(out_proj).float().reshape(-1, shape.n_heads, shape.head_dim)

        def record(_, args, index=index, blocks=blocks, shape=shape):
            x = args[0].float().reshape(-1, shape.n_heads, shape.head_dim)  # (tokens, head, d)
            # per head: (tokens, d) @ (d, hidden) -> the head's share of the layer output
            share = torch.einsum("thd,ohd->tho", x, blocks).norm(dim=-1).sum(0)
            totals[index] = share if totals[index] is None else totals[index] + share

        hooks[out_proj] = record
    tokens = arch.forward_windows(model, windows, batch_size, pre_hooks=hooks)
    return _per_layer_table([(t / tokens).tolist() for t in totals])


def _group_sizes(model, group_size, n_layers: int) -> list[int]:
    if model is not None:
        return [arch.attention_shape(model, i).group_size for i in range(n_layers)]
    if group_size is None:
        raise ValueError("respect_gqa=True needs to know which heads share a key/value head: "
                         "pass model=model (or group_size=...), or respect_gqa=False.")
    if isinstance(group_size, int):
        return [group_size] * n_layers
    sizes = [int(g) for g in group_size]
    if len(sizes) != n_layers:
        raise ValueError(f"group_size has {len(sizes)} entries for {n_layers} layers.")
    return sizes


def least_important_heads(scores, fraction: float | None = None, count: int | None = None, *,
                          per_layer: bool = True, respect_gqa: bool = True,
                          model: nn.Module | None = None,
                          group_size: int | Sequence[int] | None = None) -> dict[int, list[int]]:
    """The lowest-scoring heads, as a ``{layer: [heads]}`` request.

    Give ``fraction`` (of the heads) or ``count``; ``per_layer=True`` takes that
    amount in every layer, ``False`` ranks all heads of the model together (the
    amount may then differ per layer). Every layer keeps at least one head.

    With ``respect_gqa`` (needs ``model=`` or ``group_size=``) the result can be
    given to ``remove_heads``: in a GQA layer the same number of heads goes from
    every group -- the lowest-scoring ones of each group -- so the per-layer
    amount is rounded to a multiple of the number of groups. NaN scores (padding
    of pruned layers) are ignored.
    """
    table = np.asarray(scores, dtype=float)
    if table.ndim != 2:
        raise ValueError(f"scores must be a (layers x heads) array, got shape {table.shape}.")
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction= or count=.")
    if fraction is not None and not 0 <= fraction < 1:
        raise ValueError(f"fraction={fraction}: must be in [0, 1) (every layer keeps a head).")
    if count is not None and count < 0:
        raise ValueError(f"count={count} is negative.")
    n_layers = table.shape[0]
    groups = _group_sizes(model, group_size, n_layers) if respect_gqa else [1] * n_layers
    valid = [np.flatnonzero(~np.isnan(row)) for row in table]

    # A "unit" is what can be removed at once: one head (MHA, or GQA ignored), or
    # one "round" in a GQA layer = the j-th weakest head of every group.
    units = []  # (cost, layer, size, heads)
    for layer, row in enumerate(table):
        n, g = len(valid[layer]), groups[layer]
        if g == 1:
            for h in valid[layer][np.argsort(row[valid[layer]], kind="stable")][:n - 1]:
                units.append((row[h], layer, 1, [int(h)]))
            continue
        if n % g:
            raise ValueError(f"layer {layer}: {n} heads do not split into groups of {g}.")
        ranked = [sorted(range(k * g, (k + 1) * g), key=lambda h: (row[h], h))
                  for k in range(n // g)]
        for j in range(g - 1):  # keep the strongest head of every group
            members = [grp[j] for grp in ranked]
            units.append((float(np.mean(row[members])), layer, len(members), members))

    chosen: dict[int, list[int]] = {}
    if per_layer:
        for layer in range(n_layers):
            n = len(valid[layer])
            target = round(fraction * n) if fraction is not None else count
            if count is not None and count >= n:
                raise ValueError(f"count={count} would remove every head of layer {layer} "
                                 f"({n} heads); a layer keeps at least one.")
            mine = sorted((u for u in units if u[1] == layer), key=lambda u: u[0])
            if groups[layer] > 1 and mine:  # whole rounds only: round to a multiple of groups
                size = mine[0][2]
                mine = mine[:round(target / size)]
            else:
                mine = mine[:target]
            for _, _, _, hs in mine:
                chosen.setdefault(layer, []).extend(hs)
    else:
        total = sum(len(v) for v in valid)
        target = round(fraction * total) if fraction is not None else count
        removed = 0
        # sorted by cost; rounds of one GQA layer have non-decreasing cost, so
        # they are taken in order
        for cost, layer, size, hs in sorted(units, key=lambda u: (u[0], u[1])):
            if removed + size <= target:
                chosen.setdefault(layer, []).extend(hs)
                removed += size
    return {layer: sorted(hs) for layer, hs in sorted(chosen.items()) if hs}


def least_important_groups(scores, n_groups: int, model: nn.Module) -> dict[int, list[int]]:
    """Whole KV groups to remove: per layer, the ``n_groups`` groups whose query heads score least.

    Removing a whole group also removes its key/value head, so it shrinks k_proj
    and v_proj too: more speed for the same number of query heads.
    """
    scores = np.asarray(scores, dtype=float)
    request = {}
    for layer in range(scores.shape[0]):
        shape = arch.attention_shape(model, layer)
        if not 0 < n_groups < shape.n_kv_heads:
            raise ValueError(f"n_groups={n_groups}: layer {layer} has {shape.n_kv_heads} KV groups; "
                             f"remove between 1 and {shape.n_kv_heads - 1} so the layer keeps one.")
        per_group = np.nansum(scores[layer, :shape.n_heads].reshape(shape.n_kv_heads, shape.group_size), axis=1)
        groups = sorted(np.argsort(per_group, kind="stable")[:n_groups].tolist())
        request[layer] = [g * shape.group_size + i for g in groups for i in range(shape.group_size)]
    return request


def gqa_valid_counts(n_heads: int, n_kv_heads: int) -> list[int]:
    """Every number of query heads one layer can lose and still be a GQA layer.

    Remove ``m`` whole groups (each with its KV head) and ``k`` query heads from each
    of the ``n_kv_heads - m`` groups left (``k`` below the group size): every group
    that stays keeps ``group - k`` heads. The count is ``m * group + (n_kv_heads - m) * k``.
    A layer keeps at least one head. Without GQA (``n_kv_heads == n_heads``) any count works.
    """
    if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
        raise ValueError(f"{n_heads} query heads do not split into {n_kv_heads} KV groups.")
    group = n_heads // n_kv_heads
    return sorted({m * group + (n_kv_heads - m) * k for m in range(n_kv_heads)
                   for k in range(group)} - {n_heads})


def nearest_gqa_removal(n_heads: int, n_kv_heads: int, n_remove: int, scores=None) -> list[int]:
    """Query heads to remove: the valid count nearest ``n_remove`` (ties: the smaller, at least 1).

    Among the layouts that remove that many heads (whole groups, k per group, or both),
    the one whose heads score lowest in ``scores`` (one value per head; default: lower
    indices first) is returned, sorted.
    """
    if not 0 < n_remove < n_heads:
        raise ValueError(f"n_remove={n_remove}: remove between 1 and {n_heads - 1} of {n_heads} heads.")
    counts = [c for c in gqa_valid_counts(n_heads, n_kv_heads) if c > 0]
    target = min(counts, key=lambda c: (abs(c - n_remove), c))
    group = n_heads // n_kv_heads
    row = np.arange(n_heads, dtype=float) * 1e-9 if scores is None else np.asarray(scores, dtype=float)
    best = None
    for m in range(n_kv_heads):
        rest = target - m * group
        if rest < 0 or rest % (n_kv_heads - m) or rest // (n_kv_heads - m) >= group:
            continue
        k = rest // (n_kv_heads - m)
        totals = [row[g * group:(g + 1) * group].sum() for g in range(n_kv_heads)]
        whole = sorted(range(n_kv_heads), key=lambda g: (totals[g], g))[:m]
        chosen = [h for g in whole for h in range(g * group, (g + 1) * group)]
        for g in sorted(set(range(n_kv_heads)) - set(whole)):
            members = sorted(range(g * group, (g + 1) * group), key=lambda h: (row[h], h))
            chosen += members[:k]
        cost = float(row[chosen].sum())
        if best is None or cost < best[0]:
            best = (cost, sorted(chosen))
    return best[1]


def kept_heads(model: nn.Module) -> dict[int, list[int] | None]:
    """Per layer, the original head indices still present (None: never pruned)."""
    return {i: getattr(arch.attention(block), KEPT_HEADS_ATTR, None)
            for i, block in enumerate(arch.decoder_layers(model))}
