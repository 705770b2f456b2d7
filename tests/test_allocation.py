"""Per-layer allocation, OWL sparsities, the SparseGPT column step and lesson 5's new checks."""
import numpy as np
import pytest
import torch

from course_lib.core import data, metrics, models
from course_lib.pruning import allocation, masks, sparsegpt, wanda
from course_lib.teaching import checks


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = models.load("tiny-llama")
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=32, n_eval=2, n_calib=4)
    return model, windows


def test_prune_layers_prunes_each_layer_to_its_own_sparsity_and_restores(tiny):
    model, windows = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = len(allocation.layer_modules(model))
    alloc = np.linspace(0.2, 0.8, n)
    for method in ("magnitude", "wanda"):
        handle = allocation.prune_layers(model, alloc, method, windows.calib)
        for layer, mods in enumerate(allocation.layer_modules(model)):
            zeros = sum(int((m.weight == 0).sum()) for m in mods.values())
            size = sum(m.weight.numel() for m in mods.values())
            assert zeros / size == pytest.approx(alloc[layer], abs=0.02), (method, layer)
        handle.restore()
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    uniform = allocation.prune_layers(model, [0.5] * n, "wanda", windows.calib)  # equals Wanda itself
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    uniform.restore()
    library = wanda.wanda_prune(model, windows.calib, 0.5)
    assert all(torch.equal(v, ours[k]) for k, v in model.state_dict().items())
    library.restore()


def test_owl_sparsities_keep_the_total_and_spare_the_outlier_layers(tiny):
    model, windows = tiny
    shares = np.array([0.01, 0.03])
    s = allocation.owl_sparsities(model, shares, 0.6, lam=0.08)
    assert allocation.total_sparsity(model, s) == pytest.approx(0.6)
    assert s[1] < s[0] and s.max() - s.min() == pytest.approx(0.16)


def test_outlier_shares_are_owls_d_of_each_layer(tiny):
    """D_l = the share of a layer's Wanda scores |W_ij| * ||X_j|| above 5x the layer's mean score,
    written out here from each projection's own inputs (``one_layer.module_inputs``)."""
    from course_lib.pruning import one_layer

    model, windows = tiny
    expected = []
    for modules in allocation.layer_modules(model):
        scores = torch.cat([(module.weight.abs() * one_layer.module_inputs(model, module, windows.calib)
                             .double().norm(dim=0).float()).reshape(-1) for module in modules.values()])
        expected.append(float((scores > 5 * scores.mean()).float().mean()))
    measured = allocation.outlier_shares(model, windows.calib)
    assert measured == pytest.approx(expected, abs=1e-4)  # a tie flipped by rounding at most
    assert measured[0] != measured[1]  # the layers differ: D is not a constant


def test_a_bad_allocation_is_refused_with_the_count():
    model, _ = models.load("tiny-llama")
    with pytest.raises(ValueError, match="one sparsity per decoder layer"):
        allocation.prune_layers(model, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="outside"):
        allocation.prune_layers(model, [0.5, 1.5])


def test_the_sensitivity_scan_prunes_one_layer_at_a_time(tiny):
    model, windows = tiny
    scan = allocation.sensitivity_scan(model, windows.eval, [0.0, 0.9], layers=[1])
    assert scan[0, 0] == pytest.approx(metrics.perplexity(model, windows.eval))
    handle = allocation.prune_layers(model, [0.0, 0.9])
    assert scan[0, 1] == pytest.approx(metrics.perplexity(model, windows.eval))
    handle.restore()


def test_the_column_step_applied_column_by_column_is_sparsegpt():
    torch.manual_seed(0)
    W = torch.randn(8, 16, dtype=torch.float64)
    X = torch.randn(64, 16, dtype=torch.float64)
    H = 2 * X.t() @ X / 64
    new, keep = sparsegpt.sparsegpt_layer(W, H, 0.5, blocksize=16, update_block=16)
    U = sparsegpt.inverse_cholesky(H)
    stepped = W.clone()
    for i in range(16):
        stepped = sparsegpt.column_step(stepped, U, i, ~keep[:, i])
    assert torch.allclose(stepped, new.double(), atol=1e-6)


def _step(W, U, i, prune, divide=True):
    W = W.clone()
    err = (W[:, i] / U[i, i] if divide else W[:, i]) * prune
    W[:, i:] -= err[:, None] * U[i, i:][None]
    W[prune, i] = 0
    return W


@pytest.mark.parametrize("wrong, hint", [
    (lambda W, U, i, p: W.clone().index_put_((p.nonzero()[:, 0], torch.full((int(p.sum()),), i)),
                                             torch.tensor(0.0, dtype=W.dtype)), "did not move"),
    (lambda W, U, i, p: _step(W, -U + 2 * torch.diag(U.diagonal()), i, p), "wrong way"),
    (lambda W, U, i, p: _step(W, U, i, p, divide=False), "divide by the diagonal"),
    (lambda W, U, i, p: _step(W, U, i, torch.ones_like(p)), "a row whose weight you keep"),
])
def test_the_sparsegpt_check_names_the_mistake(wrong, hint):
    assert checks.check_sparsegpt_step(_step)
    result = checks.check_sparsegpt_step(wrong)
    assert not result and hint in result.message, result.message


def _wanda(w, x, s):
    return masks.scores_to_mask(wanda.wanda_scores(w, x.pow(2).sum(0)), s, "row")


@pytest.mark.parametrize("wrong, hint", [
    (lambda w, x, s: masks.scores_to_mask(w.abs(), s, "row"), "magnitude pruning"),
    (lambda w, x, s: masks.scores_to_mask(w.abs() * x.pow(2).sum(0), s, "row"), "square root"),
    (lambda w, x, s: masks.scores_to_mask(wanda.wanda_scores(w, x.pow(2).sum(0)), s, "matrix"), "each output row"),
    (lambda w, x, s: masks.scores_to_mask(w * x.pow(2).sum(0).sqrt(), s, "row"), "absolute value"),
    (lambda w, x, s: masks.scores_to_mask(-wanda.wanda_scores(w, x.pow(2).sum(0)), s, "row"), "lowest scores"),
])
def test_the_wanda_check_names_the_mistake(wrong, hint):
    assert checks.check_wanda_mask(_wanda)
    result = checks.check_wanda_mask(wrong)
    assert not result and hint in result.message, result.message


def test_the_allocation_check_measures_against_uniform(tiny):
    model, windows = tiny
    off = checks.check_allocation(model, windows.eval, [0.5, 0.5], 0.6)
    assert not off and "50.0% of the decoder weights in total, not 60%" in off.message
    results = [checks.check_allocation(model, windows.eval, alloc, 0.6) for alloc in ([0.5, 0.7], [0.7, 0.5])]
    assert all("uniform" in r.message for r in results)
    n = len(allocation.layer_modules(model))
    handle = allocation.prune_layers(model, [0.5, 0.7][:n])
    ppl = metrics.perplexity(model, windows.eval)
    handle.restore()
    assert f"{ppl:.2f} with your allocation" in results[0].message


def test_the_allocation_check_takes_the_students_function_and_answers_a_stub_with_a_hint():
    from course_lib.core import data, models
    from course_lib.teaching import checks

    model, tokenizer = models.load("tiny-llama")
    windows = data.windows_for(tokenizer, "tiny-llama", seq_len=16, n_eval=2, n_calib=0)
    as_list = checks.check_allocation(model, windows.eval, [0.5, 0.7], 0.6)
    as_function = checks.check_allocation(model, windows.eval, lambda n_layers: [0.5, 0.7][:n_layers], 0.6)
    assert as_function.message == as_list.message

    def stub(n_layers):
        raise NotImplementedError

    result = checks.check_allocation(model, windows.eval, stub, 0.6)
    assert not result and "not written yet" in result.message
