"""The timer: statistics on known workloads, the CPU path end to end, the CUDA guard."""
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import torch.utils.benchmark as benchmark

from course_lib.core import models, timing


def test_statistics_of_known_run_times():
    m = timing.Measurement.from_times("x", [0.010, 0.020, 0.030, 0.040, 0.050], "cpu", 2)
    assert m.median_ms == pytest.approx(30)
    assert m.iqr_ms == pytest.approx(20)  # q75 40 - q25 20
    assert m.runs == 5
    per_token = timing.Measurement.from_times("x", [0.1, 0.1], "cpu", 2, per=10)
    assert per_token.median_ms == pytest.approx(10)


class FakeClock:
    """A perf_counter that only advances when a workload says so: timings known exactly."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake))
    return fake


def test_a_workload_of_known_duration_is_timed_exactly(clock):
    m = timing.time_call(lambda: clock.advance(0.02), runs=6, warmup=1)
    assert m.median_ms == pytest.approx(20) and m.iqr_ms == pytest.approx(0)
    assert m.runs == 6 and m.threads == 2 and m.device == "cpu"


def test_alternating_workload_gives_median_and_spread(clock):
    durations = iter([0.005, 0.025] * 10)
    m = timing.time_call(lambda: clock.advance(next(durations)), runs=8, warmup=2)
    assert m.median_ms == pytest.approx(15)  # halfway between the two populations
    assert m.iqr_ms == pytest.approx(20)  # the spread shows both


def test_our_cpu_timer_agrees_with_torch_utils_benchmark(clock):
    """Both timers read the same clock over the same workload: the same figure."""
    durations = iter([0.003, 0.004, 0.005] * 200)
    fn = lambda: clock.advance(next(durations))  # noqa: E731
    ours = timing.time_call(fn, runs=9, warmup=0, threads=1)
    theirs = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=1, timer=clock).timeit(9)
    assert ours.median_ms == pytest.approx(4) and theirs.mean * 1e3 == pytest.approx(4)


def test_side_by_side_ratio_sees_a_workload_twice_as_long(clock):
    fns = {"short": lambda: clock.advance(0.01), "long": lambda: clock.advance(0.02)}
    result = timing.time_side_by_side(fns, runs=5, warmup=1)
    assert result["long"].ratio_to(result["short"]) == pytest.approx(2)


def test_side_by_side_alternates_the_order_and_keeps_runs_paired(clock):
    """Whoever runs first in a round pays a cold cache (2 ms, else 1 ms): equal workloads.

    Reversing the order every other round shares the penalty, so the verdict is
    'within noise'; a fixed order would call the second candidate faster.
    """
    order = []

    def workload(label):
        def run():
            order.append(label)
            clock.advance(0.002 if len(order) % 2 == 1 else 0.001)
        return run

    result = timing.time_side_by_side({"a": workload("a"), "b": workload("b")}, runs=6, warmup=2)
    assert order == ["a", "b", "b", "a"] * 4
    assert result["a"].median_ms == pytest.approx(result["b"].median_ms)
    assert timing.speedup(result["a"], result["b"]).verdict == "within noise"
    # run i of each candidate comes from the same round: round 2+i (after the warm-up)
    assert result["a"].times_ms == pytest.approx((2.0, 1.0, 2.0, 1.0, 2.0, 1.0))
    assert result["b"].times_ms == pytest.approx((1.0, 2.0, 1.0, 2.0, 1.0, 2.0))


def test_a_model_on_cuda_1_is_timed_with_events_and_syncs_on_cuda_1(monkeypatch):
    """Every event and synchronisation happens on the timed GPU, not on the default one."""
    log, current = [], ["cuda:0"]

    class FakeEvent:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.device = current[0]

        def record(self):
            log.append(("record", self.device, current[0]))

        def elapsed_time(self, end):
            return 5.0

    @contextmanager
    def fake_device(device):
        before, current[0] = current[0], str(torch.device(device))
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda device=None: log.append(("sync", str(device), current[0])))
    m = timing.time_call(lambda: log.append(("work", None, current[0])), device="cuda:1",
                         runs=3, warmup=1)
    assert m.median_ms == pytest.approx(5) and m.device == "cuda:1"
    assert [kind for kind, _, _ in log] == ["sync", "record", "work", "record", "sync"] * 4
    assert all(on == "cuda:1" for _, _, on in log)  # the current device while timing
    assert all(device == "cuda:1" for kind, device, _ in log if kind in ("sync", "record"))
    with pytest.raises(ValueError, match="cuda:2.*2 CUDA GPU"):
        timing.time_call(lambda: None, device="cuda:2")


def test_thread_count_is_applied_and_restored():
    before = torch.get_num_threads()
    seen = []
    timing.time_call(lambda: seen.append(torch.get_num_threads()), runs=2, threads=1)
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_cuda_timing_without_cuda_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        timing.time_call(lambda: None, device="cuda")


def test_bad_runs_is_an_error():
    with pytest.raises(ValueError, match="runs"):
        timing.time_call(lambda: None, runs=0)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gemma3"])
def test_model_prefill_and_decode_end_to_end(name):
    model, _ = models.load(name)
    prefill = timing.prefill_latency(model, tokens=32, runs=3)
    decode = timing.decode_latency(model, context=16, new_tokens=4, runs=3)
    assert prefill.median_ms > 0 and decode.median_ms > 0
    assert "prefill 1x32" in str(prefill)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_events_time_a_gpu_workload():
    a = torch.randn(4096, 4096, device="cuda")
    m = timing.time_call(lambda: a @ a, device="cuda", runs=5)
    assert m.device == "cuda" and m.median_ms > 0
    on_model = timing.prefill_latency(models.load("tiny-llama", device="cuda")[0], tokens=16, runs=2)
    assert on_model.device == f"cuda:{torch.cuda.current_device()}" and on_model.median_ms > 0


def test_speedup_is_decided_against_the_paired_spread():
    base = timing.Measurement.from_times("dense", [1.00, 1.20, 0.90, 1.10, 1.00], "cpu", 2)
    half = timing.Measurement.from_times("half", [0.50, 0.61, 0.44, 0.56, 0.50], "cpu", 2)
    noisy = timing.Measurement.from_times("noisy", [0.90, 1.30, 0.80, 1.20, 1.05], "cpu", 2)
    fast = timing.speedup(base, half)
    assert fast.verdict == "faster" and 1.9 < fast.median < 2.1 and fast.low > 1
    # same medians-ish, but the paired ratios straddle 1: not an effect
    assert timing.speedup(base, noisy).verdict == "within noise"
    assert timing.speedup(half, base).verdict == "slower"
    # runs are paired by position: the same times in another order give another verdict
    shuffled = timing.Measurement.from_times("shuffled", [1.10, 0.90, 1.20, 1.00, 1.00], "cpu", 2)
    assert timing.speedup(base, shuffled).low < 1 < timing.speedup(base, shuffled).high
    with pytest.raises(ValueError, match="side by side"):
        timing.speedup(base, timing.Measurement.from_times("x", [1.0, 1.0], "cpu", 2))


def test_decode_reads_the_kv_cache_one_token_at_a_time():
    """Prefill once, then one new token per step on a cache that grows by one each time.

    Counted, not timed: a decode that ignored the cache (or re-ran the prefix) passes
    more tokens through the model per step, or finds the cache not growing.
    """
    model, _ = models.load("tiny-llama")
    calls = []

    def count(_module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        calls.append((ids.shape[1], None if cache is None else cache.get_seq_length()))

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        timing.decode_latency(model, context=16, new_tokens=4, runs=2, warmup=0)
    finally:
        hook.remove()
    # each run: a 16-token prefill into an empty cache, then 4 single tokens on 16, 17, 18, 19
    assert calls == [(16, 0), (1, 16), (1, 17), (1, 18), (1, 19)] * 2
    decoded = sum(tokens for tokens, cached in calls[1:5])
    rerun_prefix = sum(16 + step + 1 for step in range(4))  # the same 4 tokens without a cache
    assert decoded == 4 < rerun_prefix


def test_claim_prints_its_mark_and_evidence(capsys):
    from course_lib.teaching import lesson

    assert lesson.claim("removal is faster", True, "1.40x") is True
    assert lesson.claim("zeros are faster", False, "1.00x") is False
    lesson.claim("SparseGPT beats magnitude", False, "ppl 20 vs 227", needs_real_model=True,
                 model_name="tiny-llama")
    lesson.claim("SparseGPT beats magnitude", True, "ppl 20 vs 227", needs_real_model=True,
                 model_name="smollm2-135m")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "✓ removal is faster  [1.40x]"
    assert lines[1].startswith("✗ zeros are faster")
    assert lines[2].startswith("· ") and "not decided" in lines[2]
    assert lines[3].startswith("✓ ")


def test_a_lesson_claim_is_truthy_and_silent_at_the_end_of_a_cell(capsys):
    """A notebook kernel sends no result for a value whose formatter returns no data."""
    from IPython.core.interactiveshell import InteractiveShell

    from course_lib.teaching import lesson

    run = lesson.Lesson("tiny-llama", None, None, None, "cpu", 2)
    held, failed = run.claim("a held claim", True, "1 < 2"), run.claim("a failed one", False)
    assert "✓ a held claim  [1 < 2]" in capsys.readouterr().out
    assert held and not failed and held == True and failed == False  # noqa: E712
    data, _ = InteractiveShell.instance().display_formatter.format(held)
    assert data == {}


@pytest.mark.parametrize("low, median, high, bound, expected", [
    (0.95, 1.00, 1.10, 1.25, True),    # within noise, and the spread stays below the bound
    (0.90, 1.02, 1.30, 1.25, False),   # within noise but too wide to rule a 1.25x speedup out
    (1.05, 1.10, 1.15, 1.25, False),   # faster: not "not faster", whatever the bound
])
def test_not_faster_states_what_it_rules_out(low, median, high, bound, expected):
    from course_lib.core.timing import Speedup

    assert Speedup(median, low, high, 9).rules_out(bound) is expected


@pytest.mark.parametrize("decided_on, expected", [(1, 1), (2, 2), (None, 3)])
def test_a_lesson_measures_again_while_the_spread_does_not_decide(capsys, monkeypatch, decided_on, expected):
    """``Lesson.latency(decides=...)``: a measurement whose spread does not decide the claim is
    taken again, up to ``attempts`` in all, and the last one is returned."""
    from course_lib.teaching import lesson

    taken = []

    def compare_prefill(candidates, **_):
        taken.append(len(taken) + 1)
        return {label: timing.Measurement.from_times(label, [0.01 * len(taken)] * 3, "cpu", 2)
                for label in candidates}

    monkeypatch.setattr(timing, "compare_prefill", compare_prefill)
    run = lesson.Lesson("tiny-llama", None, None, None, "cpu", 2)
    result = run.latency({"a": None, "b": None}, runs=3,
                         decides=lambda r: decided_on is not None and len(taken) >= decided_on)
    assert len(taken) == expected
    assert result["a"].median_ms == pytest.approx(10 * expected)  # the last measurement
    assert capsys.readouterr().out.count("measured again") == expected - 1
    run.latency({"a": None}, runs=3)  # no decides: measured once
    assert len(taken) == expected + 1
