"""The float64 simulation of dynamic int8 (``quantize.simulated_copy``) computes torch.ao's scheme."""
import warnings

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import default_dynamic_qconfig

from course_lib.core import models
from course_lib.runtime import quantize


def kernel_linear(linear):
    linear.qconfig = default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DynamicLinear.from_float(linear)


@pytest.mark.parametrize("shift", [0.0, 2.5, -4.0])  # inputs around zero, all positive, all negative
def test_one_projection_equals_the_int8_kernel(shift):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(16, 64) * 3 + shift
    x[:, 5] *= 40  # an outlier channel: the scale the ordinary channels must live with
    kernel = kernel_linear(linear)(x)
    simulated = quantize.SimulatedDynamicInt8(linear)(x)
    assert simulated.dtype == torch.float64
    # the same codes and scales: only float32 rounding of the kernel's output remains
    assert (simulated.float() - kernel).abs().max() < 1e-5 * kernel.abs().max()
    # and int8 is a real change: the float product differs by far more than that
    assert (linear(x) - kernel).abs().max() > 1e-3 * kernel.abs().max()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_the_copy_swaps_the_chosen_projections_and_keeps_the_model(name):
    model, _ = models.load(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = quantize.decoder_linear_names(model)
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        float_logits = model(ids, use_cache=False).logits.double()
        nothing_kept = quantize.simulated_copy(model)(ids, use_cache=False).logits
        all_kept = quantize.simulated_copy(model, keep_float=names)(ids, use_cache=False).logits
    assert torch.allclose(all_kept, float_logits, atol=1e-5)  # nothing swapped: the float model in float64
    assert not torch.allclose(nothing_kept, float_logits, atol=1e-4)  # every projection rounded
    swapped = quantize.simulated_copy(model, keep_float=names[:1])
    kinds = {n: type(m).__name__ for n, m in swapped.named_modules() if n in names}
    assert kinds[names[0]] != "SimulatedDynamicInt8" and all(
        kinds[n] == "SimulatedDynamicInt8" for n in names[1:])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original untouched
    with pytest.raises(ValueError, match="not decoder projections"):
        quantize.simulated_copy(model, keep_float=["lm_head"])
