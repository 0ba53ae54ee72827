"""Ctrl-C and SIGTERM as the command line takes them: imports nothing heavy, so that the
``eqprop`` entry point (:mod:`eqprop.__main__`) can use it before JAX loads."""

from __future__ import annotations

import signal
import sys


def describe(signum: int) -> str:
    """``"terminated (SIGTERM)"`` or ``"interrupted"`` (Ctrl-C), as the messages say it."""
    return "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"


def stop(signum: int, frame) -> None:
    """The handler of a running command: ask the training loop to stop at its next batch
    (:func:`eqprop.train.loop.request_stop`, where a callback of JAX's swallows the
    exception), then raise ``KeyboardInterrupt`` (empty for Ctrl-C, the cause for SIGTERM)."""
    how = describe(signum)
    loop = sys.modules.get("eqprop.train.loop")
    if loop is not None:
        loop.request_stop(how)
    raise KeyboardInterrupt(how if signum == signal.SIGTERM else "")
