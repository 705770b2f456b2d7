"""The live explorer, driven without a browser: labels, cache, errors, restore, memory."""
import gc

import pytest
import torch

from course_lib.core import data, metrics, models
from course_lib.pruning import masks
from course_lib.pruning.undo import PruneHandle, restoring_on_error
from course_lib.teaching.widgets import Explorer


class Boom(RuntimeError):
    pass


def prune(model, method, amount):
    if method == "magnitude":
        return masks.magnitude_prune(model, amount)
    if method == "random":
        return masks.random_prune(model, amount)
    if method == "broken":  # changes half the layers, then fails: the fault a student's code makes
        handle = PruneHandle("broken")
        with restoring_on_error(handle):
            layers = list(model.model.layers)
            for i, layer in enumerate(layers):
                if i == len(layers) // 2:
                    raise Boom("injected failure half-way")
                handle.save_tensor(layer.mlp.up_proj.weight.data)
                layer.mlp.up_proj.weight.data.zero_()
        return handle
    raise ValueError(f"unknown method {method}")


@pytest.fixture
def setup():
    model, tokenizer = models.load("tiny-llama")
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=32, n_eval=2, n_calib=0).eval
    original = {k: v.clone() for k, v in model.state_dict().items()}
    explorer = Explorer(model, windows, prune, methods=("magnitude", "random", "broken"),
                        latency_tokens=16, latency_runs=2)
    return model, explorer, original


def same_weights(model, original):
    return all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def test_moving_the_slider_measures_and_updates_the_labels(setup):
    model, explorer, original = setup
    dense_text = explorer.text
    assert ("dense", 0.0) in explorer.cache and "perplexity" in dense_text
    explorer.slider.value = 0.5
    assert ("magnitude", 0.5) in explorer.cache
    assert explorer.text != dense_text and "magnitude at 0.50" in explorer.text
    point = explorer.cache[("magnitude", 0.5)]
    assert point.sparsity == pytest.approx(0.5, abs=0.02)
    assert point.perplexity != explorer.cache[("dense", 0.0)].perplexity
    assert same_weights(model, original)  # measured, then restored


def test_a_visited_point_comes_from_the_cache(setup):
    _, explorer, _ = setup
    explorer.slider.value = 0.3
    explorer.slider.value = 0.6
    computed = explorer.measurements
    explorer.slider.value = 0.3
    assert explorer.measurements == computed
    assert "magnitude at 0.30" in explorer.text


def test_method_dropdown_switches_method(setup):
    _, explorer, _ = setup
    explorer.slider.value = 0.5
    explorer.method.value = "random"
    assert ("random", 0.5) in explorer.cache
    assert explorer.cache[("random", 0.5)].perplexity != explorer.cache[("magnitude", 0.5)].perplexity


def test_an_error_is_shown_and_the_model_is_intact(setup):
    model, explorer, original = setup
    explorer.slider.value = 0.4
    explorer.method.value = "broken"
    assert explorer.errors and "injected failure" in explorer.errors[-1]
    assert "error" in explorer.text and "reload" not in explorer.text
    assert same_weights(model, original)
    explorer.method.value = "magnitude"  # still usable afterwards
    assert "magnitude at 0.40" in explorer.text


def test_fifty_rapid_changes_end_right_and_leak_nothing(setup):
    model, explorer, original = setup
    explorer.slider.value = 0.2
    gc.collect()
    tensors_before = sum(torch.is_tensor(o) for o in gc.get_objects())
    settings = [(m, a) for a in (0.1, 0.2, 0.3, 0.5, 0.7) for m in ("magnitude", "random")]
    for i in range(50):
        method, amount = settings[(i * 7) % len(settings)]
        explorer.method.value = method
        explorer.slider.value = amount
    gc.collect()
    tensors_after = sum(torch.is_tensor(o) for o in gc.get_objects())
    assert tensors_after - tensors_before < 50  # no model copies or masks pile up
    assert same_weights(model, original)
    # every cached figure is what a fresh measurement of that setting gives
    handle = masks.magnitude_prune(model, 0.5)
    try:
        from course_lib.core import metrics
        fresh = metrics.perplexity(model, explorer.eval_windows, batch_size=len(explorer.eval_windows))
    finally:
        handle.restore()
    assert explorer.cache[("magnitude", 0.5)].perplexity == pytest.approx(fresh, rel=1e-6)
    assert explorer.errors == []


def test_slider_does_not_measure_while_dragging(setup):
    _, explorer, _ = setup
    assert explorer.slider.continuous_update is False


# ------------------------------------------------ honest explorers: grid, spread, axis, cache
from course_lib.teaching.widgets import grid_step  # noqa: E402


def test_the_slider_grid_holds_every_point_and_the_start_value():
    model, tokenizer = models.load("tiny-llama")
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=16, n_eval=1, n_calib=0).eval
    explorer = Explorer(model, windows, prune, amount_max=0.7, step=0.2, value=0.5,
                        grid=(0.3, 0.5, 0.7), latency_tokens=8, latency_runs=2)
    assert {0.0, 0.3, 0.5, 0.7} <= set(explorer.grid)
    assert explorer.slider.value == 0.5 and ("magnitude", 0.5) in explorer.cache
    assert grid_step([1 / 3, 2 / 3], 1 / 9) == pytest.approx(1 / 9)
    assert grid_step([0.25, 0.75], 0.25) == 0.25  # an already fitting step is kept


def test_each_point_is_timed_beside_dense_and_shows_its_spread(setup):
    _, explorer, _ = setup
    explorer.slider.value = 0.5
    p = explorer.cache[("magnitude", 0.5)]
    assert p.runs == explorer.latency_runs and p.dense_latency_ms > 0  # one interleaved call
    assert p.speedup_low <= p.speedup <= p.speedup_high
    assert f"[{p.speedup_low:.2f}-{p.speedup_high:.2f}, {p.verdict}]" in explorer.text
    assert "on 2x32 tokens" in explorer.text  # the perplexity says which windows
    fig = explorer.figure()
    speed_axis = fig.axes[1]
    low, high = speed_axis.get_ylim()
    assert low <= 0.5 and high >= 1.5  # 1.0 always shown, never a magnified sliver of noise
    assert speed_axis.containers, "the spread is drawn (error bars)"
    assert "windows" not in fig.axes[0].get_ylabel() and "2x32" in fig.axes[0].get_ylabel()


def test_a_second_session_reuses_the_points_from_disk(tmp_path):
    model, tokenizer = models.load("tiny-llama")
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=16, n_eval=2, n_calib=0).eval
    kwargs = dict(methods=("magnitude", "random"), latency_tokens=8, latency_runs=2,
                  cache_dir=tmp_path, model_name="tiny-llama")
    first = Explorer(model, windows, prune, **kwargs)
    first.point("random", 0.4)
    assert first.measurements == 2 and first.disk_hits == 0
    second = Explorer(model, windows, prune, **kwargs)  # a new session: nothing in memory
    again = second.point("random", 0.4)
    assert second.measurements == 0 and second.disk_hits == 2
    assert again == first.cache[("random", 0.4)]
    other_windows = Explorer(model, windows[:1], prune, **kwargs)  # other windows: measured anew
    assert other_windows.measurements == 1 and other_windows.disk_hits == 0


def test_also_on_measures_other_texts_from_the_same_pruned_weights():
    model, tokenizer = models.load("tiny-llama")
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=16, n_eval=3, n_calib=0).eval
    prunes = []

    def counting(m, method, amount):
        prunes.append((method, amount))
        return prune(m, method, amount)

    explorer = Explorer(model, windows[:2], counting, latency_tokens=8, latency_runs=2,
                        also_on={"other": windows[2:]})
    p = explorer.point("magnitude", 0.6)
    assert prunes == [("magnitude", 0.6)]  # one prune serves both texts
    handle = prune(model, "magnitude", 0.6)
    expected = metrics.perplexity(model, windows[2:])
    handle.restore()
    assert p.other_perplexity == {"other": pytest.approx(expected, rel=1e-5)}
    assert p.other_perplexity["other"] != pytest.approx(p.perplexity)  # really the other windows


def test_precompute_fills_the_grid_in_the_background(setup):
    _, explorer, _ = setup
    explorer.slider.max, explorer.slider.step = 0.4, 0.2
    thread = explorer.precompute(methods=("magnitude", "random"))
    thread.join(timeout=300)
    assert not thread.is_alive()
    for method in ("magnitude", "random"):
        for amount in (0.2, 0.4):
            assert (method, amount) in explorer.cache
    assert explorer.progress.value == explorer.progress.max == 5
    assert "ready" in explorer.progress.description and explorer.errors == []
