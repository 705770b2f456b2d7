"""The environment of a fresh Python process that reloads a saved model in a test.

Bare on purpose (no PYTHONPATH: the folder must open without ``course_lib``), but it keeps
the variables that choose the arithmetic: a test replayed with the CPU capped at AVX2
(``ATEN_CPU_CAPABILITY=avx2``, oneDNN, MKL and FBGEMM alike) must compare with a reload
capped the same way, or float32 rounding of another instruction set (1e-3 on SmolLM2's
logits) reads as a wrong reload.
"""
import os

ARITHMETIC = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
              "FBGEMM_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def bare_env(**extra: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    env.update({name: os.environ[name] for name in ARITHMETIC if name in os.environ})
    env.update(extra)
    return env
