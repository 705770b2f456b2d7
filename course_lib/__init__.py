"""course_lib: the library behind "Pruning LLMs, hands-on".

Organised by what the student learns; arrows point down only (cli and teaching
use runtime and pruning, which use core):

- ``core``: what we prune and how we measure it (models, data, arch, metrics, timing);
- ``pruning``: the kernels, one module per family (masks, heads, mlp, wanda, sparsegpt,
  calibrate, undo, io, recipes);
- ``runtime``: where speed comes from (speed: ideal vs measured; sparse: CSR/BSR, 2:4);
- ``teaching``: lesson, widgets, plots, checks, student, presenter, summary, run_all;
- ``cli``: ``python -m course_lib`` (info, eval, prune, bench).
"""
import os

# Idle OpenMP threads sleep instead of spinning. On a laptop running slides, a
# browser or a second notebook, spinning threads fight for the same cores and
# make small operations 5-50x slower; sleeping costs a few microseconds.
# (Read when torch starts its thread pool, so it must be set before that.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
