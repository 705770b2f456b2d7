"""course_lib: the library behind "Pruning LLMs, hands-on".

Organised by what the student learns; arrows point down only (cli and teaching
use runtime, recover and pruning, which use core):

- ``core``: what we prune and how we measure it (arch, models, data, metrics, timing,
  progress);
- ``pruning``: the kernels, one module per family (masks, slicing, heads, mlp, layers,
  calibrate, wanda, sparsegpt, one_layer, allocation, offload, compressed, undo, io, recipes);
- ``recover``: winning quality back after a structured prune (repair: the closed-form
  refit; distil: KL distillation from the dense model; recipes);
- ``runtime``: from a pruned model to a shipped one (speed: ideal vs measured; sparse:
  CSR/BSR, 2:4; quantize: int8 in PyTorch; export: ONNX and ONNX Runtime; store: files
  on disk; serve: generation; pipeline: every stage measured; optional: missing extras);
- ``teaching``: lesson, widgets, plots, checks, student, presenter, summary, run_all;
- ``cli``: ``python -m course_lib`` (info, eval, prune, ship, bench).
"""
import logging
import os

# Idle OpenMP threads sleep instead of spinning. On a laptop running slides, a
# browser or a second notebook, spinning threads fight for the same cores and
# make small operations 5-50x slower; sleeping costs a few microseconds.
# (Read when torch starts its thread pool, so it must be set before that.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _ImportNoise(logging.Filter):
    """Drops the log lines torchao's import writes on every machine, whoever imports it.

    transformers imports torchao whenever it loads a model (its quantizer table), and
    torchao then logs one warning per GPU kernel library it cannot load here (FP8 / MX
    kernels for Hopper GPUs: the course's int8 schemes never use them), while torch's
    pytree logs a deprecation warning for two of torchao's enums. Four lines of noise
    at the top of every command and lesson output, about nothing the course runs.
    Only these records are dropped: any other torchao or torch warning still shows.
    """

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


# logging is configured before torchao is imported (loggers exist before their modules),
# so the filters are in place whenever and by whom torchao is imported; no import here.
logging.getLogger("torchao").addFilter(_ImportNoise("_C_mxfp8", "_C_cutlass"))
logging.getLogger("torch.utils._pytree").addFilter(
    _ImportNoise("is an Enum subclass and is now natively supported"))
