"""Stopping work whose result nobody wants any more: the slider moved on.

A long computation (a prune walking 30 layers, a timing loop) calls ``checkpoint()``
between its steps. Normally that does nothing. Whoever may want to stop it early runs
it inside ``stop_when(test)``: the next checkpoint *in the same thread* then raises
``Cancelled`` as soon as ``test()`` is true. A prune undoes itself on the way out, as
after any error (``pruning.undo.restoring_on_error``), so a stopped prune leaves every
weight as it was.

``Cancelled`` is a ``BaseException`` (like ``KeyboardInterrupt``): an ``except Exception``
meant for real errors does not swallow it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

_state = threading.local()


class Cancelled(BaseException):
    """Raised at a checkpoint when the work's result is no longer wanted."""


@contextmanager
def stop_when(test: Callable[[], bool]):
    """Inside the block, ``checkpoint()`` in this thread raises ``Cancelled`` once ``test()`` is true."""
    previous = getattr(_state, "test", None)
    _state.test = test
    try:
        yield
    finally:
        _state.test = previous


def checkpoint() -> None:
    """A place where the current work may stop: raises ``Cancelled`` if it is no longer wanted."""
    test = getattr(_state, "test", None)
    if test is not None and test():
        raise Cancelled("stopped: the result is no longer wanted")


def carried(fn: Callable) -> Callable:
    """``fn``, to run in a worker thread, stopping when the calling thread's work would."""
    test = getattr(_state, "test", None)
    if test is None:
        return fn

    def run(*args, **kwargs):
        with stop_when(test):
            return fn(*args, **kwargs)
    return run


@contextmanager
def checkpoints_inside(modules):
    """Inside the block, every call of each module in ``modules`` passes a ``checkpoint()`` first.

    For work that is one long call: a model's forward pass is 30 decoder layers, so with
    each layer in ``modules`` a stale forward stops within one layer instead of running to
    its end. Timing both sides of a comparison this way keeps the pair fair (each side pays
    the same few microseconds per layer).
    """
    handles = [module.register_forward_pre_hook(lambda *_: checkpoint()) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
