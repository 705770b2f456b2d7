"""The one-matrix microscope: errors ordered as the theory says, on real and on built inputs."""
import pytest
import torch

from course_lib.core import data, models
from course_lib.pruning import one_layer


def test_inputs_are_what_the_module_reads():
    """down_proj's inputs, multiplied by its weight, give what the MLP block wrote to the stream."""
    model, tok = models.load("tiny-llama")
    windows = data.make_windows(tok, data.load_text(), seq_len=16, n_eval=1, n_calib=2).calib
    module = model.model.layers[1].mlp.down_proj
    written = []
    hook = model.model.layers[1].mlp.register_forward_hook(lambda m, a, out: written.append(out))
    try:
        with torch.no_grad():
            model(windows, use_cache=False)  # the whole model, as it runs
    finally:
        hook.remove()
    x = one_layer.module_inputs(model, module, windows)  # stops once it has them
    assert x.shape == (2 * 16, module.in_features)
    torch.testing.assert_close(x @ module.weight.t(), written[0].reshape(-1, module.out_features))


def test_error_is_zero_without_pruning_and_ordered_with_it():
    torch.manual_seed(0)
    weight = torch.randn(64, 128)
    inputs = torch.randn(512, 128) * torch.linspace(0.1, 5, 128)  # channels of very different size
    assert one_layer.reconstruction_error(weight, weight, inputs) == 0
    errors = {m: one_layer.reconstruction_error(weight, one_layer.prune_matrix(weight, inputs, m, 0.5), inputs)
              for m in one_layer.METHODS}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]
    nm = {m: one_layer.reconstruction_error(weight, one_layer.prune_matrix(weight, inputs, m, pattern="2:4"), inputs)
          for m in one_layer.METHODS}
    assert nm["sparsegpt"] < nm["magnitude"]


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="magnitude"):
        one_layer.prune_matrix(torch.randn(4, 4), torch.randn(8, 4), "obs")
