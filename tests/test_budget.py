"""Cuts of an equal parameter budget (course_lib/pruning/budget.py): each removes what the
budget says, in the layers it says, and undoes exactly."""
import copy

import pytest
import torch

from course_lib.core import arch, metrics, models
from course_lib.pruning import budget, mlp


def four_layers(name: str):
    """A tiny random model of the family with 4 decoder layers (the base tiny models have 2)."""
    from transformers import AutoModelForCausalLM

    config = models._tiny_config(name)
    config.num_hidden_layers = 4
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[0]] * 4
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_every_cut_removes_the_budget_and_restores_exactly(name):
    model = four_layers(name)
    calib = torch.randint(0, models.TINY_VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    n_layers = 2
    cuts = budget.equal_cuts(model, calib, n_layers)
    assert list(cuts) == list(budget.FAMILIES)
    target = n_layers * budget.layer_parameters(model)
    per_neuron = mlp.parameters_per_neuron(model)
    dense_count = metrics.parameter_count(model)
    width = arch.mlp_width(model, 0)
    for name_, cut in cuts.items():
        # whole neurons: never more than the budget, never a neuron's worth less
        assert target - per_neuron < cut.parameters <= target, (name_, cut.parameters, target)
        twin = copy.deepcopy(model)
        handles = budget.apply(twin, cut)
        assert dense_count - metrics.parameter_count(twin) == cut.parameters
        kept = [i for i in range(4) if i not in cut.layers]
        assert len(arch.decoder_layers(twin)) == len(kept)
        for position, layer in enumerate(kept):  # each kept layer lost exactly its neurons
            assert arch.mlp_width(twin, position) == width - len(cut.neurons.get(layer, []))
        assert not set(cut.neurons) & set(cut.layers)  # no neuron spent in a layer that goes
        logits = twin(calib[:1]).logits
        assert logits.shape == (1, 32, models.TINY_VOCAB) and torch.isfinite(logits).all()
        for handle in reversed(handles):
            handle.restore()
        assert all(torch.equal(v, original[k]) for k, v in twin.state_dict().items())
    assert cuts["depth"].layers and not cuts["depth"].neurons
    assert cuts["width (MLP)"].neurons and not cuts["width (MLP)"].layers
    groups = cuts["width (attention + MLP)"].heads
    assert len(groups) == 4 and all(len(h) == arch.attention_shape(model, 0).group_size for h in groups.values())
    assert len(cuts["depth + width"].layers) == n_layers // 2
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the dense model untouched


def test_the_cuts_are_chosen_by_the_scores_they_name():
    """budget.SCORES names the command line's default scores, and the cuts follow them: the
    width (MLP) cut is the lowest neurons of that score (not of another one)."""
    from course_lib.core import names
    from course_lib.pruning import recipes

    assert budget.SCORES == {method: names.check_score(method) for method in ("heads", "mlp", "layers")}
    assert budget.SCORES["mlp"] == recipes.prune_with(four_layers("tiny-llama"), "mlp", 0.25, calib=torch.zeros(
        1, 8, dtype=torch.long)).info["score"]  # what prune uses when no score is named
    model = four_layers("tiny-llama")
    calib = torch.randint(0, models.TINY_VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    cuts = budget.equal_cuts(model, calib, 2)
    parameters = 2 * budget.layer_parameters(model)
    chosen = {k: sorted(v) for k, v in cuts["width (MLP)"].neurons.items()}

    def by(score):
        request = mlp.neurons_for_parameters(model, recipes.importance(model, "mlp", score, calib), parameters)
        return {k: sorted(v) for k, v in request.items() if v}

    assert chosen == by(budget.SCORES["mlp"])
    assert chosen != by("activation")


def test_a_budget_that_leaves_no_layer_is_refused():
    model = four_layers("tiny-llama")
    with pytest.raises(ValueError, match="between 2 and 3"):
        budget.equal_cuts(model, torch.zeros(1, 8, dtype=torch.long), 4)


def test_the_stored_frontier_is_one_budget_and_its_speedups_come_from_its_raw_times():
    """bench/pareto.json (lesson 4 loads it): every cut removed the same parameters, and each
    summary speedup is what the stored raw times give when paired again."""
    from course_lib.teaching import stored

    record = stored.load("pareto")
    assert {c["parameters_removed"] for c in record["cuts"].values()} == {record["budget_parameters"]}
    for name, cut in record["cuts"].items():
        assert cut["parameters"] == record["dense"]["parameters"] - cut["parameters_removed"]
        for stage in ("prefill", "decode"):
            again = stored.speedup(record, stage, "dense", name)
            assert again.median == pytest.approx(cut[stage]["median"], abs=6e-4)
            assert (again.low, again.high) == pytest.approx((cut[stage]["low"], cut[stage]["high"]), abs=6e-4)
    assert record["provenance"]["commit"] in stored.provenance(record)


def test_a_missing_record_says_which_script_measures_it():
    from course_lib.teaching import stored

    with pytest.raises(FileNotFoundError, match="python bench/nothing.py"):
        stored.load("nothing")
