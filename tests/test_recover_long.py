"""The long recovery (recover.long): built once, kept under a key of the weights and the plan,
loaded back as the same model; its record holds the cost curve and the paired comparison."""
from dataclasses import replace

import pytest
import torch

from course_lib.core import models
from course_lib.recover import long as L

MODEL = "tiny-llama-trained"  # has learnt something: distillation lowers its KL measurably
PLAN = replace(L.LONG, steps=4, warmup=1, n_prose=4, n_code=4, n_valid=2, n_eval=2, n_heldout=2,
               seq_len=64, curve_points=2)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import os
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("COURSE_CACHE")
    dense, tokenizer = models.load(MODEL)  # from the usual cache: the tiny model is trained once
    os.environ["COURSE_CACHE"] = str(cache)
    try:
        before = {k: v.clone() for k, v in dense.state_dict().items()}
        model, record = L.build(dense, tokenizer, MODEL, PLAN, log=lambda *_: None)
        yield dense, tokenizer, model, record, before
    finally:
        if old is None:
            os.environ.pop("COURSE_CACHE", None)
        else:
            os.environ["COURSE_CACHE"] = old


def test_the_recovery_is_kept_and_loads_as_the_same_model(built):
    dense, _, model, record, before = built
    assert all(torch.equal(v, before[k]) for k, v in dense.state_dict().items()), "the dense model changed"
    loaded, again = L.load(dense, PLAN)
    assert again == record
    ids = torch.randint(0, dense.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert L.load(dense, replace(PLAN, steps=5)) is None  # another plan: another key, nothing cached


def test_the_record_holds_the_cost_curve_and_exact_parameter_counts(built):
    dense, _, model, record, _ = built
    assert [p["step"] for p in record["curve"]] == [0, 2, 4]
    assert [p["tokens"] for p in record["curve"]] == [0, 2 * 4 * 64, 4 * 4 * 64]
    assert record["recovered"] == {k: record["curve"][-1][k] for k in ("eval", "heldout")}
    assert record["parameters"]["recovered"] == sum(p.numel() for p in model.parameters())
    assert record["parameters"]["recovered"] < record["parameters"]["dense"]
    from course_lib.core import arch
    assert arch.mlp_width(model, 0) == round(arch.mlp_width(dense, 0) * (1 - PLAN.fraction))
    assert record["refit"]["kept"] == (record["refit"]["valid_after"] < record["refit"]["valid_before"])
    for kind in ("eval", "heldout"):
        paired = record["paired"][kind]
        assert paired["low"] <= paired["ratio"] <= paired["high"]


def test_a_half_written_folder_is_not_a_recovery(built):
    dense, *_ = built
    folder = L.folder_for(dense, PLAN)
    (folder / L.RECORD).rename(folder / "recovery.json.bak")
    try:
        assert L.load(dense, PLAN) is None  # the record is written last: without it, not finished
    finally:
        (folder / "recovery.json.bak").rename(folder / L.RECORD)


def test_the_command_line_loads_the_long_recovery_of_its_cut(built, capsys, monkeypatch):
    """``prune --recover distil`` (no --steps) of the cut the long recovery made loads it from the
    cache: the report names it and its steps, and the model scored after is the recovered one."""
    import json

    from course_lib.cli import prune as P
    from course_lib.cli.main import main
    from course_lib.core import data, metrics

    dense, tokenizer, model, record, _ = built
    monkeypatch.setattr(L, "LONG", PLAN)
    monkeypatch.setattr(P, "_is_long_cut", lambda args, *rest: args.model == MODEL)
    fast = ["--seq-len", "32", "--n-eval", "2", "--n-calib", "4", "--runs", "1", "--latency-tokens", "8",
            "--threads", "1", "--json"]
    saved = L.models.cache_dir() / "saved-long"  # the fixture's temporary cache
    assert main(["prune", MODEL, "--method", "mlp", "--sparsity", str(PLAN.fraction), "--recover", "distil",
                 "--save", str(saved), *fast]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["saved_format"] == "standard Hugging Face checkpoint"  # the recovered model, saved
    assert result["recover_steps"] == PLAN.steps and result["recover_source"].startswith("the long recovery")
    windows = data.windows_for(tokenizer, MODEL, seq_len=32, n_eval=2, n_calib=0)
    assert result["perplexity_after"] == round(metrics.perplexity(model, windows.eval), 3)
    assert result["parameters_after"] == record["parameters"]["recovered"]
    # with --steps, the short recovery runs instead, and says so
    assert main(["prune", MODEL, "--method", "mlp", "--sparsity", str(PLAN.fraction), "--recover", "distil",
                 "--steps", "1", *fast]) == 0
    short = json.loads(capsys.readouterr().out)
    assert short["recover_steps"] == 1 and short["recover_source"].startswith("short: 1 step of")
