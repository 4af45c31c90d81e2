"""Ctrl-C as the trainer and the table runner expect it, however their process was started.

A process started with SIGINT ignored (``nohup cmd &`` from a non-interactive shell, or a parent
that ignores it) inherits that: Python then leaves SIGINT ignored and Ctrl-C (or ``kill -INT``)
does nothing. The commands install their own handler instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _stop_once(signum: int, frame: object) -> None:
    # The first SIGINT stops the run; one more (a terminal's Ctrl-C that a parent forwards
    # again, say) must not interrupt the clean stop that is under way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_stops(*, once: bool) -> Iterator[None]:
    """Within the block, SIGINT raises ``KeyboardInterrupt`` in the main thread.

    Args:
        once: after the first SIGINT, ignore further ones until the block ends (the trainer:
            its clean stop writes the plot and its summary); otherwise every SIGINT raises
            (the runner: a second Ctrl-C stops it waiting for its trainer).

    Elsewhere than in the main thread (where Python cannot install handlers) this does nothing.
    The previous handler is restored when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _stop_once if once else signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = ["sigint_stops"]
