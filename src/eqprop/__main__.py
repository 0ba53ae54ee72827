"""The ``eqprop`` command's entry point (also ``python -m eqprop``).

It imports nothing heavy itself: it takes Ctrl-C and SIGTERM from the process's first
instant, then imports the command and the trainer (JAX, Equinox, Lineax: a second or
more) and runs it. A signal during that import used to print the import's traceback (or
an ``ImportError`` from JAX's extension), or, raised inside a garbage-collection callback
of JAX's ("Exception ignored in"), was lost and the run went on to its end; now it ends the
command with one line and exit 130, before anything was written. Later, a signal whose
``KeyboardInterrupt`` a callback swallows still asks the training loop to stop
(:func:`eqprop.train.loop.request_stop`), and the swallowed exception is not printed.
"""

from __future__ import annotations

import signal
import sys

#: how a signal asked to stop (also the signals that arrived while the command was imported)
_EARLY: list[str] = []


def _handler(signum, frame) -> None:
    how = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    _EARLY.append(how)
    loop = sys.modules.get("eqprop.train.loop")
    if loop is not None:  # the training loop stops at its next batch if the exception is lost
        loop.request_stop(how)
    raise KeyboardInterrupt(how if signum == signal.SIGTERM else "")


def _unraisable(default):
    def hook(info) -> None:  # a KeyboardInterrupt that a callback swallowed: _EARLY has it
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            return
        default(info)

    return hook


class _HeldStream:
    """``sys.stderr`` while the command is imported: what is written is held, then written
    through if the import completes, or dropped if a signal stopped it (a C extension
    prints the interrupted import's traceback itself). It passes everything through once
    the import is over, for any logger that took it as its stream meanwhile."""

    def __init__(self, stream) -> None:
        self.stream, self.held = stream, []

    def write(self, text: str) -> int:
        if self.held is None:
            return self.stream.write(text)
        self.held.append(text)
        return len(text)

    def release(self, keep: bool) -> None:
        held, self.held = self.held or [], None
        if keep and held:
            self.stream.write("".join(held))

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def run() -> None:
    """Run the ``eqprop`` command (:func:`eqprop.cli.run`): exit 130 with one line on
    stderr when it is interrupted while it starts."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. Ctrl-C of a shell's background job
            continue
        try:
            signal.signal(sig, _handler)
        except ValueError:  # not the main thread (an embedding): leave the signals alone
            pass
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    stderr = sys.stderr = _HeldStream(sys.stderr)
    try:
        from . import cli
        from .train import loop  # noqa: F401  (the heavy part of the start, here)
    except BaseException:  # an ImportError too, when the signal lands in JAX's extension
        if not _EARLY:
            stderr.release(keep=True)
            raise
    finally:
        sys.stderr = stderr.stream
    stderr.release(keep=not _EARLY)
    if _EARLY:  # raised, or swallowed by a callback during the import
        print(f"eqprop: {_EARLY[-1]} while starting; nothing was run", file=sys.stderr)
        sys.exit(130)
    cli.run()


if __name__ == "__main__":
    run()
