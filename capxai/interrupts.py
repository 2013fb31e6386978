"""Ctrl-C and SIGTERM that stop a command and cannot be lost.

A signal's handler raises in whatever code runs at that moment. Usually that stops the command; but where the
moment falls inside C code that clears errors it meets (numpy's ``Generator.choice`` does, seen while generating
scenes), or inside a finalizer or an at-fork hook (Python prints "Exception ignored" and drops it), the exception
vanishes and the command runs on to its end. So the handler also records the stop, and every long loop of capxai
iterates through :func:`stoppable`, which raises it again at the next item if it is still pending: a loop that
reaches its next item was not stopped, so the first exception was lost. Cleanup code (``finally``, ``except``)
never iterates a stoppable loop, so it is not interrupted twice.

Used by the ``capxai`` command (:class:`StopSignals` around each command); a library caller who installs no handler
sees Python's usual KeyboardInterrupt, and :func:`stoppable` costs one comparison per item. Imports nothing of capxai.
"""
import contextlib
import signal
import threading
from typing import Iterable, Iterator, Optional, TypeVar

Item = TypeVar("Item")
_pending: Optional[int] = None  # the signal number of a stop the command has not acted on yet
_deferring = 0  # depth of deferred() blocks: a stop inside one is recorded, and raised when the outermost ends


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` / ``except BaseException`` cleans up."""


def _exception(number: int) -> KeyboardInterrupt:
    return Interrupted() if number == signal.SIGTERM else KeyboardInterrupt()


def raise_pending() -> None:
    """Raises the stop recorded by the handler again, if the command has not acted on it yet."""
    if _pending is not None:
        raise _exception(_pending)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a stop must not cut in two: files put in place and recorded as capxai's (a stop between the two left
    a ``last.pt`` that the resumed run refused as not capxai's, seen in a test). A Ctrl-C or SIGTERM inside is
    recorded and raised when the block ends."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _deferring == 0:
        raise_pending()


def stoppable(items: Iterable[Item]) -> Iterator[Item]:
    """``items``, checking before each one for a stop whose first exception was lost (see the module's text)."""
    for item in items:
        raise_pending()
        yield item


class StopSignals:
    """Installs the stopping handlers of Ctrl-C and SIGTERM for one command (only in the main thread, where Python
    lets handlers be set; elsewhere the caller's stay) and restores the earlier ones after it. Call :meth:`seen` when
    the command has caught the interrupt."""

    def __enter__(self) -> "StopSignals":
        global _pending
        _pending = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, _stop) for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *error) -> bool:
        self.seen()
        for number, handler in self._previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        return False

    @staticmethod
    def seen() -> None:
        global _pending
        _pending = None


def _stop(number, frame) -> None:
    global _pending
    _pending = number
    if not _deferring:
        raise _exception(number)
