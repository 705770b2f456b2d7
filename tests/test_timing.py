"""The timer: statistics on known workloads, the CPU path end to end, the CUDA guard."""
import time

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


def test_sleep_workload_is_timed_right():
    m = timing.time_call(lambda: time.sleep(0.02), runs=6, warmup=1)
    assert 19 < m.median_ms < 30
    assert m.runs == 6 and m.threads == 2 and m.device == "cpu"


def test_alternating_workload_gives_median_and_spread():
    durations = iter([0.005, 0.025] * 10)
    m = timing.time_call(lambda: time.sleep(next(durations)), runs=8, warmup=2)
    assert 4 < m.median_ms < 30  # median lies between the two
    assert m.iqr_ms > 10  # the spread shows the two populations


def test_our_cpu_timer_agrees_with_torch_utils_benchmark():
    a = torch.randn(384, 384)
    fn = lambda: a @ a  # noqa: E731
    ours = timing.time_call(fn, runs=30, warmup=5, threads=1)
    theirs = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=1).blocked_autorange(min_run_time=0.3)
    assert ours.median_ms == pytest.approx(theirs.median * 1e3, rel=0.5)


def test_side_by_side_ratio_sees_a_workload_twice_as_long():
    fns = {"short": lambda: time.sleep(0.01), "long": lambda: time.sleep(0.02)}
    result = timing.time_side_by_side(fns, runs=5, warmup=1)
    assert result["long"].ratio_to(result["short"]) == pytest.approx(2, rel=0.25)


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
