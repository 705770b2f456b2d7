"""The live explorer, driven without a browser: labels, cache, errors, restore, memory,
the answer that sharpens run by run, and the stale measurement stopped when the slider moves."""
import gc
import json
import threading
import time

import pytest
import torch

from course_lib.core import cancel, data, metrics, models, stats, timing
from course_lib.pruning import masks
from course_lib.pruning.undo import PruneHandle, restoring_on_error
from course_lib.teaching import widgets
from course_lib.teaching.widgets import Explorer, grid_step


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


def tiny(seq_len=32, n_eval=2):
    model, tokenizer = models.load("tiny-llama")
    windows = data.make_windows(tokenizer, data.load_text(), seq_len=seq_len, n_eval=n_eval, n_calib=0).eval
    return model, windows


@pytest.fixture
def setup():
    model, windows = tiny()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    explorer = Explorer(model, windows, prune, methods=("magnitude", "random", "broken"),
                        latency_tokens=16, latency_runs=2)
    return model, explorer, original


def same_weights(model, original):
    return all(torch.equal(v, original[k]) for k, v in model.state_dict().items())


def move(explorer, value=None, method=None):
    """What a person does: change the widget, then watch until the answer is complete."""
    if method is not None:
        explorer.method.value = method
    if value is not None:
        explorer.slider.value = value
    return explorer.wait(timeout=120)


def wait_for(explorer, event, key, timeout=60.0):
    """Until the explorer's trace shows ``event`` for ``key`` (a test waits, it never times)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e == event and k == key for _, e, k in list(explorer.trace)):
            return
        time.sleep(0.005)
    raise TimeoutError(f"no {event!r} for {key} within {timeout} s: {list(explorer.trace)[-5:]}")


def test_moving_the_slider_measures_and_updates_the_labels(setup):
    model, explorer, original = setup
    assert model._course_own_memory  # its weights copied off any mapped file: the first prune pays no faults
    dense_text = explorer.text
    assert ("dense", 0.0) in explorer.cache and "perplexity" in dense_text
    move(explorer, 0.5)
    assert ("magnitude", 0.5) in explorer.cache
    assert explorer.text != dense_text and "magnitude at 0.50" in explorer.text
    point = explorer.cache[("magnitude", 0.5)]
    assert point.sparsity == pytest.approx(0.5, abs=0.02)
    assert point.perplexity != explorer.cache[("dense", 0.0)].perplexity
    assert same_weights(model, original)  # measured, then restored
    assert same_weights(explorer.dense_model(), original)  # timed beside the original, not a pruned copy


def test_a_visited_point_comes_from_the_cache(setup):
    _, explorer, _ = setup
    move(explorer, 0.3)
    move(explorer, 0.6)
    computed = explorer.measurements
    explorer.slider.value = 0.3  # no wait: a cached point is shown before the setter returns
    assert explorer.measurements == computed
    assert "magnitude at 0.30" in explorer.text and "points cached" in explorer.text


def test_method_dropdown_switches_method(setup):
    _, explorer, _ = setup
    move(explorer, 0.5)
    move(explorer, method="random")
    assert ("random", 0.5) in explorer.cache
    assert explorer.cache[("random", 0.5)].perplexity != explorer.cache[("magnitude", 0.5)].perplexity


def test_an_error_is_shown_and_the_model_is_intact(setup):
    model, explorer, original = setup
    move(explorer, 0.4)
    move(explorer, method="broken")
    assert explorer.errors and "injected failure" in explorer.errors[-1]
    assert "error" in explorer.text and "reload" not in explorer.text
    assert same_weights(model, original)
    move(explorer, method="magnitude")  # still usable afterwards
    assert "magnitude at 0.40" in explorer.text


def test_fifty_rapid_changes_end_right_and_leak_nothing(setup):
    model, explorer, original = setup
    move(explorer, 0.2)
    gc.collect()
    tensors_before = sum(torch.is_tensor(o) for o in gc.get_objects())
    settings = [(m, a) for a in (0.1, 0.2, 0.3, 0.5, 0.7) for m in ("magnitude", "random")]
    for i in range(50):  # faster than any measurement: most are stopped half-way
        method, amount = settings[(i * 7) % len(settings)]
        explorer.method.value = method
        explorer.slider.value = amount
    last = explorer.wait(timeout=120)
    assert (last.method, last.amount) == (method, amount) and f"{method} at {amount:.2f}" in explorer.text
    gc.collect()
    tensors_after = sum(torch.is_tensor(o) for o in gc.get_objects())
    assert tensors_after - tensors_before < 50  # no model copies or masks pile up
    assert same_weights(model, original)
    # every cached figure is what a fresh measurement of that setting gives
    for (m, a), point in list(explorer.cache.items()):
        if m == "dense":
            continue
        handle = prune(model, m, a)
        try:
            fresh = metrics.perplexity(model, explorer.eval_windows, batch_size=len(explorer.eval_windows))
        finally:
            handle.restore()
        assert point.perplexity == pytest.approx(fresh, rel=1e-6), (m, a)
    assert explorer.errors == []


def test_slider_does_not_measure_while_dragging(setup):
    _, explorer, _ = setup
    assert explorer.slider.continuous_update is False


# ------------------------------------------------ a stale point is stopped and leaves nothing
def stalling_prune(entered: threading.Event):
    """A prune that changes every weight, then works on until it is stopped (a long SparseGPT)."""
    def prune_fn(model, method, amount):
        if method != "stalls":
            return prune(model, method, amount)
        handle = masks.magnitude_prune(model, amount)
        with restoring_on_error(handle):
            entered.set()
            while True:
                cancel.checkpoint()
                time.sleep(0.005)
    return prune_fn


def stalling_clock(monkeypatch, moved: threading.Event):
    """From the second timed run on, a forward pass lasts until the slider has moved."""
    real, calls = timing._Clock.time, []

    def time_fn(self, fn):
        calls.append(fn)
        if len(calls) > 4:  # the warm-up round and the first timed round run freely
            assert moved.wait(60)
        return real(self, fn)

    monkeypatch.setattr(timing._Clock, "time", time_fn)


def test_a_stop_reaches_work_handed_to_another_thread():
    stop = threading.Event()
    seen = {}

    def work():
        while True:
            cancel.checkpoint()
            stop.set()  # one round done: from now on the caller wants it stopped
            time.sleep(0.001)

    def record(fn):
        try:
            fn()
        except BaseException as err:  # noqa: B036 - what stopped it, whatever it was
            seen["error"] = type(err)

    with cancel.stop_when(stop.is_set):
        thread = threading.Thread(target=record, args=(cancel.carried(work),), daemon=True)
        thread.start()
        thread.join(60)
    assert seen.get("error") is cancel.Cancelled  # the worker stopped with the caller's work
    assert cancel.carried(work) is work  # outside any stoppable work: nothing to carry
    cancel.checkpoint()  # and the caller's thread is back to never stopping


def kernels():
    from course_lib.pruning import sparsegpt, wanda
    from course_lib.runtime import quantize

    calib = torch.randint(0, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    return {"magnitude": lambda m: masks.magnitude_prune(m, 0.5),
            "random": lambda m: masks.random_prune(m, 0.5),
            "wanda": lambda m: wanda.wanda_prune(m, calib, 0.5),
            "sparsegpt": lambda m: sparsegpt.sparsegpt_prune(m, calib, 0.5),
            "int8": lambda m: quantize.quantize_in_place(m, [n for n, _ in m.named_modules()
                                                               if n.endswith("proj")])}


@pytest.mark.parametrize("kernel", list(kernels()))
def test_every_kernel_an_explorer_runs_stops_half_way_and_leaves_the_model_as_it_was(kernel):
    model, _ = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    passed = []
    with cancel.stop_when(lambda: passed.append(1) and False):  # a full run: how many checkpoints
        kernels()[kernel](model).restore()
    total, passed[:] = len(passed), []
    assert total >= 2
    with cancel.stop_when(lambda: passed.append(1) or len(passed) > total * 3 // 4):  # late: weights
        with pytest.raises(cancel.Cancelled):                                       # already changed
            kernels()[kernel](model)
    assert [type(m) for m in model.modules()] == kinds  # no int8 module left swapped in
    assert same_weights(model, before)


@pytest.mark.parametrize("phase", ["pruning", "timing"])
def test_moving_the_slider_mid_measurement_restores_the_weights_and_caches_nothing(tmp_path, phase,
                                                                                  monkeypatch):
    model, windows = tiny()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    entered, moved = threading.Event(), threading.Event()
    explorer = Explorer(model, windows, stalling_prune(entered), methods=("stalls", "magnitude"),
                        latency_tokens=16, latency_runs=12, latency_seconds=600,
                        cache_dir=tmp_path, model_name="tiny-llama")
    stale = ("stalls", 0.5) if phase == "pruning" else ("magnitude", 0.5)
    on_disk = set(tmp_path.rglob("*.json"))
    if phase == "timing":  # the prune is done and the first number shown: stop it mid-run
        stalling_clock(monkeypatch, moved)
        explorer.method.value = "magnitude"
        explorer.slider.value = 0.5
        wait_for(explorer, "round", stale)
        assert not same_weights(model, dense)  # really pruned at that moment
    else:  # stopped while the weights are half-way through a prune
        explorer.slider.value = 0.5
        assert entered.wait(60)
    explorer.method.value = "magnitude"
    explorer.slider.value = 0.3  # moved on: the stale point must stop
    moved.set()
    shown = explorer.wait(timeout=120)
    wait_for(explorer, "cancelled", stale)
    assert (shown.method, shown.amount) == ("magnitude", 0.3)
    assert stale not in explorer.cache and ("magnitude", 0.3) in explorer.cache
    assert set(tmp_path.rglob("*.json")) - on_disk == {explorer._disk_path(("magnitude", 0.3))}
    explorer.slider.value = 0.0  # the dense point: the model as it is now
    assert same_weights(model, dense)  # bit for bit, every tensor
    assert explorer.errors == []


def test_a_stale_forward_stops_within_one_layer():
    """``cancel.checkpoints_inside``: a forward pass checks before every decoder layer."""
    from course_lib.core import arch
    model, windows = tiny()
    layers = arch.decoder_layers(model)
    assert len(layers) >= 2
    done = []
    counting = [layer.register_forward_hook(lambda *_: done.append(1)) for layer in layers]
    with cancel.checkpoints_inside(layers), cancel.stop_when(lambda: len(done) >= 1):
        with pytest.raises(cancel.Cancelled):
            model(windows[:1])
    assert len(done) == 1  # the first layer ran, the second never started
    model(windows[:1])  # outside the block: no checkpoint left behind
    assert len(done) == 1 + len(layers) and all(not layer._forward_pre_hooks for layer in layers)
    for handle in counting:
        handle.remove()


def test_moving_the_slider_mid_forward_stops_the_timed_forward(monkeypatch):
    """While a point is timed, the slider moves in the middle of a forward pass: the rest of that
    forward's layers never run (one paired run of two long forwards must not delay the next point)."""
    from course_lib.core import arch
    model, windows = tiny()  # evaluation windows of 32 tokens; the timed forwards have 16
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    explorer = Explorer(model, windows, prune, latency_tokens=16, latency_runs=12, latency_seconds=600)
    layers = arch.decoder_layers(model)
    armed, inside, moved, last_layer_after_move = threading.Event(), threading.Event(), threading.Event(), []

    def tokens(args, kwargs):
        return (args[0] if args else kwargs["hidden_states"]).shape[1]

    def hold_in_first_layer(module, args, kwargs):
        if armed.is_set() and not moved.is_set() and tokens(args, kwargs) == 16:
            inside.set()
            assert moved.wait(60)  # the forward is in layer 0 when the slider moves

    def watch_last_layer(module, args, kwargs):
        if moved.is_set():
            last_layer_after_move.append(tokens(args, kwargs))
    real_round = timing.Interleaved.round

    def round_fn(self, timed=True):
        if timed and self.runs >= 1:  # from the second timed round on
            armed.set()
        return real_round(self, timed)
    monkeypatch.setattr(timing.Interleaved, "round", round_fn)
    hooks = [layers[0].register_forward_pre_hook(hold_in_first_layer, with_kwargs=True),
             layers[-1].register_forward_pre_hook(watch_last_layer, with_kwargs=True)]
    explorer.slider.value = 0.5
    assert inside.wait(60)
    armed.clear()
    explorer.slider.value = 0.3
    moved.set()
    shown = explorer.wait(timeout=120)
    wait_for(explorer, "cancelled", ("magnitude", 0.5))
    for hook in hooks:
        hook.remove()
    assert (shown.method, shown.amount) == ("magnitude", 0.3)
    assert ("magnitude", 0.5) not in explorer.cache
    # the first forward to reach the last layer after the move is the new point's evaluation
    # (32 tokens), not the end of the stale timed forward (16 tokens)
    assert last_layer_after_move and last_layer_after_move[0] == 32, last_layer_after_move[:3]
    explorer.slider.value = 0.0
    assert same_weights(model, dense)


def test_a_point_from_another_explorer_stops_a_stoppable_one_and_both_finish():
    model, windows = tiny()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    entered = threading.Event()
    first = Explorer(model, windows, stalling_prune(entered), methods=("stalls", "magnitude"),
                     latency_tokens=16, latency_runs=2)
    second = Explorer(model, windows, prune, latency_tokens=16, latency_runs=2)
    first.slider.value = 0.5  # stalls until stopped
    assert entered.wait(60)
    got = {}  # a lesson's own call on the same model goes first
    call = threading.Thread(target=lambda: got.update(point=second.point("magnitude", 0.4)), daemon=True)
    call.start()
    call.join(120)
    assert not call.is_alive(), "the stalled measurement did not give way"
    assert got["point"].sparsity == pytest.approx(0.4, abs=0.02)
    first.method.value = "magnitude"  # the stalled request is stopped by the change; this one runs
    assert first.wait(timeout=120).method == "magnitude"
    assert same_weights(model, dense)


# ------------------------------------------------ honest explorers: grid, spread, interval, cache
def test_the_slider_grid_holds_every_point_and_the_start_value():
    model, windows = tiny(seq_len=16, n_eval=1)
    explorer = Explorer(model, windows, prune, amount_max=0.7, step=0.2, value=0.5,
                        grid=(0.3, 0.5, 0.7), latency_tokens=8, latency_runs=2)
    assert {0.0, 0.3, 0.5, 0.7} <= set(explorer.grid)
    assert explorer.slider.value == 0.5 and ("magnitude", 0.5) in explorer.cache
    assert grid_step([1 / 3, 2 / 3], 1 / 9) == pytest.approx(1 / 9)
    assert grid_step([0.25, 0.75], 0.25) == 0.25  # an already fitting step is kept


def test_each_point_is_timed_beside_dense_and_shows_its_spread_and_interval(setup):
    _, explorer, _ = setup
    p = move(explorer, 0.5)
    assert 1 <= p.runs <= explorer.latency_runs and p.dense_latency_ms > 0  # one interleaved timing
    assert p.speedup_low <= p.speedup <= p.speedup_high
    assert p.interval_low <= p.speedup <= p.interval_high
    assert not p.decidable and p.verdict == "within noise"  # 2 runs decide nothing
    assert f"[{p.interval_low:.2f}-{p.interval_high:.2f}, {p.verdict}]" in explorer.text
    assert p.timing_line() in explorer.text  # how it was measured, in one line
    assert f"spread {p.speedup_low:.2f}x-{p.speedup_high:.2f}x (IQR)" in p.timing_line()
    assert "on 2x32 tokens" in explorer.text  # the perplexity says which windows
    fig = explorer.figure()
    speed_axis = fig.axes[1]
    low, high = speed_axis.get_ylim()
    assert low <= 0.5 and high >= 1.5  # 1.0 always shown, never a magnified sliver of noise
    assert speed_axis.containers, "the interval is drawn (error bars)"
    assert "windows" not in fig.axes[0].get_ylabel() and "2x32" in fig.axes[0].get_ylabel()


class ScriptedClock:
    """Stands in for the timer: run i of each workload takes the scripted seconds."""

    def __init__(self, dense, pruned):
        self.script = {"dense": list(dense), "pruned": list(pruned)}
        self.calls = {"dense": 0, "pruned": 0}

    def install(self, monkeypatch):
        clock = self

        def fake_time(_self, fn):
            label = fake_time.labels[fn]
            i = clock.calls[label]
            clock.calls[label] += 1
            return clock.script[label][min(i, len(clock.script[label]) - 1)]

        original = timing.prefill_workloads

        def workloads(models, batch=1, tokens=128):
            fns = original(models, batch, tokens)
            fake_time.labels = {fn: label for label, fn in fns.items()}
            return fns

        monkeypatch.setattr(timing._Clock, "time", fake_time)
        monkeypatch.setattr(timing, "prefill_workloads", workloads)


@pytest.mark.parametrize("case", ["faster", "noise"])
def test_timing_stops_once_the_interval_clears_one_and_not_before(monkeypatch, case):
    model, windows = tiny(seq_len=16, n_eval=1)
    explorer = Explorer(model, windows, prune, latency_tokens=8, latency_runs=12, latency_seconds=600)
    runs = 40
    # round 0 is the warm-up; then "faster": the pruned model always takes half the time;
    # "noise": it takes longer and shorter by turns, as on a machine where nothing changed
    pruned = [0.5] * runs if case == "faster" else [0.9 if i % 2 else 1.1 for i in range(runs)]
    ScriptedClock([1.0] * runs, pruned).install(monkeypatch)
    shown = []
    explorer._show = lambda p, final=True: shown.append(p)
    explorer.background = False
    explorer.slider.value = 0.5
    p = explorer.cache[("magnitude", 0.5)]
    first_decidable = stats.sequential_cuts(12).index(0) + 1
    if case == "faster":
        assert p.verdict == "faster" and p.runs == first_decidable  # stopped at the first look that can decide
        assert p.interval_low == pytest.approx(2.0)
    else:
        assert p.verdict == "within noise" and p.runs == 12  # ran the whole budget
        assert p.interval_low < 1 < p.interval_high
    timed = [s.runs for s in shown if s.timed and s.method == "magnitude"]
    assert timed[:3] == [1, 2, 3]  # shown after every run, not only at the end
    assert not shown[0].timed and shown[0].perplexity == p.perplexity  # the first number came first


def test_a_speedup_beyond_its_ideal_is_re_measured_never_a_verdict(monkeypatch):
    """Two-sided: zeros cannot make a dense kernel 2x faster (the FLOPs ratio is 1.0), so a
    timing that says so runs its whole budget and is shown as an error, not as "faster"."""
    from course_lib.runtime import speed

    model, windows = tiny(seq_len=16, n_eval=1)
    explorer = Explorer(model, windows, prune, latency_tokens=8, latency_runs=12, latency_seconds=600,
                        ideal=speed.flops_ideal)
    ScriptedClock([1.0] * 40, [0.5] * 40).install(monkeypatch)  # the pruned model "twice as fast"
    explorer.background = False
    explorer.slider.value = 0.5
    p = explorer.cache[("magnitude", 0.5)]
    assert p.ideal == 1.0 and p.interval_low == pytest.approx(2.0)
    assert p.verdict == "beyond its ideal 1.00x: re-measure" and not p.decided
    assert p.runs == 12  # not stopped at the first look that could decide: the whole budget
    assert "beyond its ideal 1.00x" in p.timing_line()
    # the same timing where the cut allows it (a FLOPs ratio of 2): a verdict, at the first look
    explorer = Explorer(model, windows, prune, latency_tokens=8, latency_runs=12, latency_seconds=600,
                        ideal=lambda dense, pruned: 2.0)
    ScriptedClock([1.0] * 40, [0.5] * 40).install(monkeypatch)
    explorer.background = False
    explorer.slider.value = 0.5
    p = explorer.cache[("magnitude", 0.5)]
    assert p.verdict == "faster" and p.runs == stats.sequential_cuts(12).index(0) + 1


def counting_explorer(**options):
    """An explorer on two windows, a third as the "other" text, whose prunes are counted."""
    model, windows = tiny(seq_len=16, n_eval=3)
    prunes = []

    def counting(m, method, amount):
        prunes.append((method, amount))
        return prune(m, method, amount)

    explorer = Explorer(model, windows[:2], counting, latency_tokens=8, latency_runs=2,
                        also_on={"other": windows[2:]}, **options)
    return explorer, prunes, counting, model, windows


def test_a_seeded_point_is_shown_at_once_and_only_timed_when_the_slider_lands_on_it(tmp_path):
    explorer, prunes, counting, model, windows = counting_explorer(cache_dir=tmp_path, model_name="tiny")
    with pytest.raises(ValueError, match="other_perplexity has no figure for \\['other'\\]"):
        explorer.seed("magnitude", 0.6, 123.4)
    seeded = explorer.seed("magnitude", 0.6, 123.4, {"other": 56.7})
    assert explorer.point("magnitude", 0.6) is seeded and prunes == []  # handed over, not pruned
    assert seeded.other_perplexity == {"other": 56.7} and seeded.verdict == "not timed yet"
    explorer.slider.value = 0.6
    assert "perplexity 123.40" in explorer.text  # the first number, before any measurement ends
    timed = explorer.wait(timeout=120)
    assert prunes == [("magnitude", 0.6)]  # pruned once, for the latency only
    assert timed.timed and timed.perplexity == 123.4 and timed.other_perplexity == {"other": 56.7}
    assert timed.sparsity == pytest.approx(0.6, abs=0.02)
    assert explorer._disk_path(("magnitude", 0.6)).exists() is False  # the lesson's figure stays in memory
    # a point timed before (here, or in an earlier session on disk) keeps its latency when seeded
    measured = explorer.point("magnitude", 0.4)
    reseeded = explorer.seed("magnitude", 0.4, 99.0, {"other": 9.0})
    assert (reseeded.perplexity, reseeded.latency_ms, reseeded.runs) == (99.0, measured.latency_ms, measured.runs)
    later = Explorer(model, windows[:2], counting, latency_tokens=8, latency_runs=2,
                     also_on={"other": windows[2:]}, cache_dir=tmp_path, model_name="tiny")
    later.seed("magnitude", 0.4, 98.0, {"other": 8.0})
    prunes.clear()
    later.slider.value = 0.4
    from_disk = later.wait(timeout=120)
    assert prunes == [] and from_disk.perplexity == 98.0 and from_disk.runs == measured.runs


def test_a_synchronous_explorer_measures_before_the_setter_returns():
    model, windows = tiny(seq_len=16, n_eval=1)
    explorer = Explorer(model, windows, prune, latency_tokens=8, latency_runs=2, background=False)
    explorer.slider.value = 0.4
    assert explorer.cache[("magnitude", 0.4)].timed and "points cached" in explorer.text


def test_a_second_session_reuses_the_points_from_disk(tmp_path):
    model, windows = tiny(seq_len=16)
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
    other_settings = Explorer(model, windows, prune, settings={"calibration": "other"}, **kwargs)
    assert other_settings.measurements == 1 and other_settings.disk_hits == 0  # e.g. other calibration
    stored = json.loads(first._disk_path(("random", 0.4)).read_text())
    assert stored["interval_low"] == again.interval_low and stored["runs"] == again.runs


def test_also_on_measures_other_texts_from_the_same_pruned_weights():
    explorer, prunes, _, model, windows = counting_explorer()
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


def test_the_slider_goes_before_the_background_precompute(setup):
    model, explorer, original = setup
    explorer.slider.max, explorer.slider.step = 0.8, 0.1
    thread = explorer.precompute(methods=("random",))
    shown = move(explorer, 0.5, "magnitude")  # meanwhile, the room asks for a point
    thread.join(timeout=300)
    assert (shown.method, shown.amount) == ("magnitude", 0.5) and explorer.errors == []
    assert all(("random", a) in explorer.cache for a in explorer.grid[1:])  # the given-way ones too
    assert same_weights(model, original)


def test_the_disk_key_changes_with_the_layout_version(setup, tmp_path, monkeypatch):
    _, explorer, _ = setup
    explorer.cache_dir = tmp_path
    before = explorer._disk_path(("magnitude", 0.5))
    monkeypatch.setattr(widgets, "CACHE_VERSION", widgets.CACHE_VERSION + 1)
    assert explorer._disk_path(("magnitude", 0.5)) != before  # old points are never read as new ones
