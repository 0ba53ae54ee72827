"""The ``eqprop`` command's entry point (also ``python -m eqprop``).

It imports nothing heavy itself: it takes Ctrl-C and SIGTERM from the process's first
instant, then imports the command and the trainer (JAX, Equinox, Lineax: a second or
more) and runs it. While that import runs, a signal is only recorded, never raised: an
exception raised inside it printed the import's traceback, surfaced as an ``ImportError``
of JAX's extension, was swallowed by a garbage-collection callback (and the run went on to
its end), or made nanobind abort the process (exit 134) while it built an enum. Once the
import is over, a recorded signal ends the command with one line and exit 130, before
anything was written. From then on a signal raises ``KeyboardInterrupt`` as usual and
also asks the training loop to stop (:func:`eqprop.signals.stop`), where a callback
swallows the exception.
"""

from __future__ import annotations

import signal
import sys

from .signals import describe, stop

#: how the signals asked to stop
_STOPS: list[str] = []


def _record(signum, frame) -> None:
    """While the command imports: note the signal, raise nothing."""
    _STOPS.append(describe(signum))


def _handler(signum, frame) -> None:
    _STOPS.append(describe(signum))
    stop(signum, frame)


def _unraisable(default):
    def hook(info) -> None:  # a KeyboardInterrupt that a callback swallowed: _STOPS has it
        if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
            return
        default(info)

    return hook


def _install(handler) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. Ctrl-C of a shell's background job
            continue
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (an embedding): leave the signals alone
            pass


def run() -> None:
    """Run the ``eqprop`` command (:func:`eqprop.cli.run`): exit 130 with one line on
    stderr when it is interrupted while it starts."""
    _install(_record)
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    from . import cli
    from .train import loop  # noqa: F401  (the heavy part of the start, here)

    _install(_handler)
    if _STOPS:  # arrived while the command was imported
        print(f"eqprop: {_STOPS[-1]} while starting; nothing was run", file=sys.stderr)
        sys.exit(130)
    cli.run()


if __name__ == "__main__":
    run()
