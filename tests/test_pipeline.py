"""Lesson 6's pipeline (runtime.pipeline) and the ``ship`` command, on the trained tiny model.

Every stage row must be what it says: speedups to the dense model from one
interleaved call (dense to itself is exactly 1), bytes that are the stage's own
weights, a perplexity that is the stage's own (computed here from the logits; the
prune costs quality on a model that learnt something, the refit wins some back, the
ONNX float32 stage equals its PyTorch source), the original model untouched, exports
reused only for the same weights, to the last bit.
"""
import copy
import json

import onnxruntime  # noqa: F401  a hard dependency: a broken install fails here, loudly
import numpy as np
import pytest
import torch

from course_lib.cli import ship
from course_lib.cli.main import main
from course_lib.core import data, metrics, models
from course_lib.pruning import heads as H
from course_lib.pruning import io
from course_lib.runtime import export, pipeline, serve

MODEL = "tiny-llama-trained"  # a random model's perplexity is ~its vocabulary whatever is pruned
FRACTION = 0.5  # half of every MLP: on this model +3% perplexity, the refit wins most of it back
ROUNDED = 0.006  # the pipeline reports perplexity to 2 decimals
SAFETENSORS_HEADER = 16_384  # bytes beyond 4 per float32 parameter: the JSON header (2 kB here)


def perplexity_from_logits(model, windows) -> float:
    """exp(mean negative log-likelihood of every next token), written out here."""
    with torch.no_grad():
        logits = model(windows, use_cache=False).logits[:, :-1]
    return float(torch.exp(torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))))


def assert_holds_the_weights_of(path_bytes: int, model) -> None:
    """A float32 safetensors file of ``model``: 4 bytes per parameter (tied ones once), plus a header."""
    floats = 4 * metrics.count_parameters(model)["total"]
    assert 0 < path_bytes - floats < SAFETENSORS_HEADER, (path_bytes, floats)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    model, tokenizer = models.load(MODEL, device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = data.windows_for(tokenizer, MODEL, seq_len=32, n_eval=2, n_calib=4)
    folder = tmp_path_factory.mktemp("ship")
    result = pipeline.run(model, windows, folder, fraction=FRACTION, keep_float=8, log=lambda *_: None, tokens=16,
                          runs=2,
                          decode_runs=2, threads=1)
    return model, before, windows, folder, result


def test_stages_in_order_each_measured_against_dense(shipped):
    model, before, windows, folder, result = shipped
    rows = {r.stage: r for r in result.rows}
    assert list(rows) == ["dense", "pruned", "recovered", "int8 (PyTorch)", "ONNX Runtime", "shipped"]
    assert rows["dense"].prefill_speedup.median == 1.0 and rows["dense"].decode_speedup.median == 1.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the dense model changed"


def test_dense_and_shipped_are_served_at_each_batch_size(shipped):
    *_, result = shipped
    served = {r.stage: r.tokens_per_s for r in result.rows}
    assert set(served["dense"]) == set(served["shipped"]) == set(serve.SERVE_BATCHES) == {1, 8}
    assert all(rate > 0 for rate in (*served["dense"].values(), *served["shipped"].values()))
    assert all(served[stage] is None for stage in served if stage not in pipeline.SERVED)
    header, *lines = pipeline.table(result.rows).splitlines()
    assert "tok/s b1" in header and "tok/s b8" in header
    assert lines[0].split()[-2:] == [f"{served['dense'][b]:.1f}" for b in (1, 8)]
    assert lines[1].split()[-2:] == ["-", "-"]  # the pruned stage is not served
    assert result.rows[0].as_dict()["tokens_per_s"] == {f"batch_{b}": round(served["dense"][b], 2) for b in (1, 8)}


def test_disk_bytes_are_each_stages_own_weights(shipped):
    model, *_, result = shipped
    rows = {r.stage: r for r in result.rows}
    assert_holds_the_weights_of(rows["dense"].disk_bytes, model)
    assert_holds_the_weights_of(rows["pruned"].disk_bytes, result.stages["pruned"])  # not the dense file
    assert_holds_the_weights_of(rows["recovered"].disk_bytes, result.stages["recovered"])
    assert rows["shipped"].disk_bytes < rows["ONNX Runtime"].disk_bytes / 2  # 8-bit weights, 4-bit embedding


def test_each_perplexity_is_the_stages_own(shipped):
    model, before, windows, folder, result = shipped
    rows = {r.stage: r for r in result.rows}
    for stage, source in (("dense", model), ("pruned", result.stages["pruned"]),
                          ("recovered", result.stages["recovered"])):
        assert rows[stage].perplexity == pytest.approx(perplexity_from_logits(source, windows.eval), abs=ROUNDED)
    assert rows["pruned"].perplexity > 1.01 * rows["dense"].perplexity  # half the MLP is gone
    assert rows["recovered"].perplexity < rows["pruned"].perplexity  # the refit wins some back
    assert rows["ONNX Runtime"].perplexity == pytest.approx(rows["recovered"].perplexity, rel=1e-3)
    assert export.max_logit_gap(result.stages["recovered"], result.stages["ONNX Runtime"],
                                windows.eval[:1]) < export.LOGIT_TOLERANCE


def test_exports_are_reused_only_for_the_same_weights(shipped, tmp_path):
    *_, result = shipped
    recovered = result.stages["recovered"]
    first = pipeline.cached_export(recovered, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert pipeline.cached_export(copy.deepcopy(recovered), tmp_path) == first  # same weights: reused
    assert first.stat().st_mtime_ns == stamp
    # one bit of one weight that a sample of every ~4096th element never reads (flat index 1)
    other = copy.deepcopy(recovered)
    weight = other.get_input_embeddings().weight
    assert weight.numel() // 4096 > 1  # a sampling fingerprint would skip index 1
    with torch.no_grad():
        flat = weight.view(-1)
        flat[1] = torch.nextafter(flat[1], torch.tensor(float("inf")))
    assert pipeline.fingerprint(other) != pipeline.fingerprint(recovered)
    second = pipeline.cached_export(other, tmp_path)
    assert second != first and second.is_file()
    assert not list(tmp_path.glob(".*partial*")), "a finished export left its partial file"


def test_measure_refuses_rows_it_cannot_compare(shipped):
    model, *_ , result = shipped
    with pytest.raises(ValueError, match="dense"):
        pipeline.measure({"pruned": result.stages["pruned"]}, result.files, shipped[2].eval)
    with pytest.raises(ValueError, match="no file"):
        pipeline.measure({"dense": model}, {}, shipped[2].eval)


def test_ship_prints_one_json_object(capsys, tmp_path):
    argv = ["ship", MODEL, "--json", "--seq-len", "32", "--n-eval", "2", "--n-calib", "4",
            "--latency-tokens", "16", "--runs", "2", "--threads", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == MODEL and out["fraction"] == ship.FRACTION  # the default
    assert [s["stage"] for s in out["stages"]] == ["dense", "pruned", "recovered", "int8 (PyTorch)",
                                                   "ONNX Runtime", "shipped"]
    dense = out["stages"][0]
    model, tokenizer = models.load(MODEL, device="cpu")
    windows = data.windows_for(tokenizer, MODEL, seq_len=32, n_eval=2, n_calib=4)
    assert dense["perplexity"] == pytest.approx(perplexity_from_logits(model, windows.eval), abs=ROUNDED)
    assert dense["prefill_speedup"] == 1.0 and dense["decode_speedup"] == 1.0
    assert_holds_the_weights_of(dense["disk_bytes"], model)
    assert out["stages"][-1]["disk_bytes"] < dense["disk_bytes"] / 2
    assert all(set(stage["tokens_per_s"]) == {"batch_1", "batch_8"} for stage in out["stages"])  # every stage served

FAST = ["--json", "--seq-len", "32", "--n-eval", "2", "--n-calib", "4", "--latency-tokens", "16", "--runs", "2",
        "--threads", "1"]


@pytest.mark.parametrize("name,recipe", [("tiny-gpt2", "mlp"), ("tiny-gemma3", "mlp"), ("tiny-qwen2", "mlp"),
                                         ("tiny-gemma3", "heads"), ("tiny-llama", "layers")])
def test_ship_every_family_every_cut(capsys, name, recipe):
    """Every stage of every family: Conv1D and fused c_attn, q/k/v biases, sliding and global layers."""
    assert main(["ship", name, "--recipe", recipe, "--fraction", "0.5", *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    stages = [s["stage"] for s in out["stages"]]
    # whole layers removed: no layer left to refit, so no recovered stage
    assert stages == ["dense", "pruned", *(["recovered"] if recipe != "layers" else []), "int8 (PyTorch)",
                      "ONNX Runtime", "shipped"]
    by_stage = {s["stage"]: s for s in out["stages"]}
    assert by_stage["pruned"]["disk_bytes"] < by_stage["dense"]["disk_bytes"]  # really cut
    assert by_stage["ONNX Runtime"]["perplexity"] == pytest.approx(by_stage[stages[-4]]["perplexity"], rel=1e-3)


def test_a_cut_the_family_cannot_take_is_refused_alike_by_ship_and_prune_save(capsys, tmp_path):
    """GPT-2's config ties its attention width to n_embd: heads removed make no standard checkpoint."""
    model, _ = models.load("tiny-gpt2")
    H.remove_heads(model, {0: [0], 1: [0]})
    reason = io.standard_problem(model)
    assert reason and "n_embd" in reason
    assert main(["ship", "tiny-gpt2", "--recipe", "heads", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason in err, err
    assert main(["prune", "tiny-gpt2", "--method", "heads", "--sparsity", "0.25", "--save", str(tmp_path / "g"),
                 *FAST]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["standard_refused"] == reason and saved["saved_format"].startswith("course recipe")


def test_ship_opens_a_saved_folder_of_another_shape(capsys, tmp_path):
    folder = tmp_path / "cut"
    assert main(["prune", "tiny-llama", "--method", "heads", "--sparsity", "0.25", "--save", str(folder), *FAST]) == 0
    capsys.readouterr()
    assert main(["ship", str(folder), *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["stages"]) == 6 and out["stages"][-1]["tokens_per_s"]


@pytest.mark.parametrize("argv,option", [
    (["--bits", "5"], "--bits"), (["--fraction", "1.5"], "--fraction"), (["--runs", "0"], "--runs"),
    (["--keep-float", "-1"], "--keep-float"), (["--recipe", "wanda"], "--recipe"),
    (["--shipped", "gptq"], "--shipped"), (["--alpha", "1.5"], "--alpha"), (["--alpha", "x"], "--alpha"),
    (["--shipped", "int8", "--bits", "4"], "--shipped int8"),
])
def test_ship_bad_options_are_one_line_exit_2(capsys, argv, option):
    assert main(["ship", MODEL, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and option in err, err


def test_any_two_stages_compare_paired_from_the_one_measurement(shipped):
    *_, result = shipped
    rows = {r.stage: r for r in result.rows}
    for row in result.rows:  # against dense: the very figure of the table
        assert row.speedup_over(rows["dense"]) == row.prefill_speedup
        assert row.speedup_over(rows["dense"], "decode") == row.decode_speedup
    shipped_over_onnx = rows["shipped"].speedup_over(rows["ONNX Runtime"])
    ratios = [a / b for a, b in zip(rows["ONNX Runtime"].measurements["prefill"].times_ms,
                                    rows["shipped"].measurements["prefill"].times_ms)]
    assert shipped_over_onnx.median == pytest.approx(float(np.median(ratios)))  # paired run by run


def test_ship_int8_smooths_then_runs_integer_gemms(capsys, tmp_path):
    """``--shipped int8``: the float ONNX stage is the smoothed model (the same function as the
    recovered one), the shipped file runs int8 GEMMs, and the JSON says so."""
    from course_lib.runtime import smooth

    assert main(["ship", MODEL, "--shipped", "int8", *FAST, "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shipped"] == "int8" and "SmoothQuant" in out["shipped_note"]
    assert f"alpha {smooth.ALPHA:g}" in out["shipped_note"]  # the command line's default is the library's
    by_stage = {s["stage"]: s for s in out["stages"]}
    assert by_stage["shipped"]["note"] == out["shipped_note"]
    assert by_stage["ONNX Runtime"]["perplexity"] == pytest.approx(by_stage["recovered"]["perplexity"], rel=1e-3)
    assert by_stage["shipped"]["perplexity"] <= 1.02 * by_stage["recovered"]["perplexity"]
    assert by_stage["shipped"]["disk_bytes"] < by_stage["dense"]["disk_bytes"] / 2
    int8_files = list((tmp_path / "onnx").glob("*-int8.onnx"))
    assert len(int8_files) == 1
    assert export.OrtModel(int8_files[0]).op_types().get("MatMulInteger", 0) > 0


def test_ship_int8_refuses_a_family_it_cannot_smooth(capsys):
    assert main(["ship", "tiny-gemma3", "--shipped", "int8", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SmoothQuant" in err and "nbits" in err, err


def test_ship_auto_takes_int8_where_smoothing_folds_exist_and_measures_held_out_code(capsys):
    """The default ``--shipped auto``: int8 GEMMs for a Llama-layout model, weight-only for GPT-2 (no
    SmoothQuant folds); every stage is measured on held-out code too, and the JSON says which file
    was taken and why."""
    assert main(["ship", MODEL, *FAST, "--n-heldout", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["shipped"] == "int8" and out["shipped_choice"].startswith("auto: int8")
    assert out["heldout"] == "python-source 2 x 32"
    model, tokenizer = models.load(MODEL, device="cpu")
    code = data.windows_for(tokenizer, MODEL, source="python-source", seq_len=32, n_eval=2, n_calib=0).eval
    dense = out["stages"][0]
    assert dense["perplexity_heldout"] == pytest.approx(perplexity_from_logits(model, code), abs=ROUNDED)
    assert dense["perplexity_heldout"] != pytest.approx(dense["perplexity"], abs=ROUNDED)  # another text
    assert all("perplexity_heldout" in stage for stage in out["stages"])
    assert main(["ship", "tiny-gpt2", *FAST, "--n-heldout", "0"]) == 0
    gpt2 = json.loads(capsys.readouterr().out)
    assert gpt2["shipped"] == "nbits" and "no SmoothQuant folds" in gpt2["shipped_choice"]
    assert gpt2["heldout"] is None and "perplexity_heldout" not in gpt2["stages"][0]
