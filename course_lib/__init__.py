"""course_lib: the library behind "Pruning LLMs, hands-on".

Modules, by what the student learns: ``models`` and ``data`` (what we prune and
measure on), ``metrics`` and ``timing`` (how we measure), ``pruning`` (the
kernels, one module per family of methods), ``speed`` (where speed comes from),
``widgets`` and ``plots`` (seeing it), ``checks`` (exercises).
"""
import os

# Idle OpenMP threads sleep instead of spinning. On a laptop running slides, a
# browser or a second notebook, spinning threads fight for the same cores and
# make small operations 5-50x slower; sleeping costs a few microseconds.
# (Read when torch starts its thread pool, so it must be set before that.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
