"""Optional runtimes (torchao, onnxruntime, onnx...): import them, or say what to install.

The pruning lessons need only torch; lesson 6 ships the model through other
runtimes. A missing one is a clear error naming the package, never a bare
``ModuleNotFoundError`` deep in a stack trace.
"""
from __future__ import annotations

import importlib
import logging


class MissingRuntimeError(ImportError, RuntimeError):
    """An optional package this step needs is not installed (the CLI reports it and exits 2)."""


def require(module: str, package: str | None = None, what: str = "this step"):
    """``import module`` or raise ``MissingRuntimeError`` saying ``pip install package``.

    The import leaves the process's logging as it was: ONNX Runtime's MatMulNBits
    quantizer calls ``logging.basicConfig(level=INFO)`` when imported, which would make
    every library's routine INFO records appear on stderr from then on.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = package or module.split(".")[0]
        raise MissingRuntimeError(
            f"{what} needs the optional package {package!r} (import {module!r} failed: {err}). "
            f"Install it with `pip install {package}` (the course pins its version in "
            "pyproject.toml; `make install` installs it).") from err
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
