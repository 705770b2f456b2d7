"""Perplexity, counts, disk sizes and FLOPs, each checked against a plain computation."""
import math

import pytest
import torch

from course_lib.core import arch, data, metrics, models


def plain_loop_perplexity(model, windows):
    """The definition, one window and one token at a time."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in windows:
            logits = model(row[None]).logits[0]
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            for t in range(1, row.shape[0]):
                nll -= log_probs[t - 1, row[t]].item()
                count += 1
    return math.exp(nll / count)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_perplexity_matches_the_definition_for_any_batch_size(name):
    model, tokenizer = models.load(name)
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=24, n_eval=5, n_calib=0).eval
    expected = plain_loop_perplexity(model, windows)
    for batch_size in (1, 2, 5):
        assert metrics.perplexity(model, windows, batch_size) == pytest.approx(expected, rel=1e-5)


def test_uniform_model_has_perplexity_equal_to_vocab():
    model, tokenizer = models.load("tiny-llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied: zero logits everywhere -> uniform prediction
    windows = torch.randint(0, 258, (3, 10))
    assert metrics.perplexity(model, windows) == pytest.approx(258, rel=1e-5)


def test_counts_and_sparsity_see_zeros():
    model, _ = models.load("tiny-qwen2")
    assert metrics.total_sparsity(model) == pytest.approx(0, abs=1e-3)
    name, module = next(iter(arch.prunable_linears(model).items()))
    with torch.no_grad():
        arch.weight_matrix(module)[:, ::2] = 0
    row = next(r for r in metrics.sparsity_report(model) if r.name == name)
    assert row.sparsity == pytest.approx(0.5, abs=0.01)
    counts = metrics.count_parameters(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # tied counted once
    assert counts["nonzero"] <= counts["total"] - row.parameters // 2 + 10


def test_zeros_shrink_only_the_compressed_size():
    model, _ = models.load("tiny-llama")
    before = metrics.disk_size(model)
    with torch.no_grad():
        for module in arch.prunable_linears(model).values():
            module.weight[module.weight.abs() < module.weight.abs().median()] = 0
    after = metrics.disk_size(model)
    assert after["dense_bytes"] == before["dense_bytes"]
    assert after["compressed_bytes"] < 0.9 * before["compressed_bytes"]


def test_flops_follow_the_shapes():
    model, _ = models.load("tiny-llama")  # hidden 96, 6 heads x 16, 2 KV heads, MLP 192, 2 layers
    flops = metrics.flops_per_token(model, context=100)
    hidden, q, kv, mlp, vocab = 96, 96, 32, 192, 258
    assert flops.attention_projections == 2 * 2 * (hidden * q * 2 + hidden * kv * 2)
    assert flops.mlp == 2 * 2 * 3 * hidden * mlp
    assert flops.attention_scores == 2 * 2 * 2 * 6 * 16 * 100
    assert flops.lm_head == 2 * vocab * hidden
    assert sum(flops.shares().values()) == pytest.approx(1)


@pytest.mark.embedded
def test_lm_head_is_about_a_fifth_of_smollm2_flops(smollm2):
    model, _ = smollm2
    share = metrics.flops_per_token(model, context=256).shares()["lm_head"]
    assert 0.15 < share < 0.25


@pytest.mark.embedded
def test_smollm2_perplexity_on_prose_is_sane(smollm2, smollm2_windows):
    model, _ = smollm2
    ppl = metrics.perplexity(model, smollm2_windows.eval)
    assert 5 < ppl < 60


def test_storage_formats_follow_the_nonzero_count():
    model, _ = models.load("tiny-llama")
    dense = metrics.storage_bytes(model)
    numel = sum(r.parameters for r in metrics.sparsity_report(model))
    assert dense["dense"] == 4 * numel
    assert dense["csr"] > dense["dense"]  # no zeros: the index is pure overhead
    with torch.no_grad():
        for module in arch.prunable_linears(model).values():
            module.weight[:, ::2] = 0  # exactly half
    half = metrics.storage_bytes(model)
    assert half["dense"] == dense["dense"]
    assert half["bitmask"] == 2 * numel + (numel + 7) // 8
    assert abs(half["csr"] - dense["dense"]) < 0.05 * dense["dense"]  # 50%: CSR saves about nothing


def test_nonzeros_counts_what_torch_counts():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g)
    w[w.abs() < 0.5] = 0
    w[0, :3] = torch.tensor([-0.0, float("nan"), -1.0])  # -0 is zero; NaN and negatives are not
    for t in (w, w.t(), w[:, ::3], w.double(), (w * 10).to(torch.int8), w.to(torch.bfloat16)):
        assert metrics.nonzeros(t) == int(torch.count_nonzero(t))
