"""Ctrl-C during training: the step that is running finishes, then the run saves and stops.

An interrupt that lands inside a step leaves a state no uninterrupted run passes through: mid
forward, BatchNorm running statistics were already updated and random numbers drawn for a step
that did not happen; mid optimizer step, some tensors were updated and others not. Saving that
and resuming gives other weights than the run would have had. So while training, SIGINT only
records the request (``StopRequest.requested``); the trainer looks at it between steps. Where
nothing is changed (validation), ``immediate()`` lets Ctrl-C stop at once. A second Ctrl-C
always stops at once (``forced``), and then nothing is saved: the last saved state stays.
"""
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator, Optional

__all__ = ['StopRequest']


class StopRequest:
    """A context in which SIGINT asks the training loop to stop at the next step boundary.

    Outside the main thread (where Python cannot install signal handlers) Ctrl-C raises as usual.

    Attributes:
        requested: Ctrl-C was pressed (or ``request()`` called).
        forced: It was pressed twice: the KeyboardInterrupt came mid-step, nothing may be saved.
    """

    def __init__(self, message: str = 'Ctrl-C: finishing this step, then saving the run '
                                      '(Ctrl-C again stops at once, without saving)') -> None:
        self.message = message
        self.requested = self.forced = False
        self._immediate = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> 'StopRequest':
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
            self._installed = False

    def request(self) -> None:
        """Asks for a stop at the next step boundary (what the first Ctrl-C does)."""
        self.requested = True

    @contextmanager
    def immediate(self) -> Iterator[None]:
        """Within: Ctrl-C raises KeyboardInterrupt at once (for work that changes no training
        state, such as validation); a stop requested before entering raises on entry."""
        if self.requested:
            raise KeyboardInterrupt
        self._immediate = True
        try:
            yield
        finally:
            self._immediate = False

    def _on_sigint(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._immediate:
            self.requested = True
            raise KeyboardInterrupt
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True
        print(f'\n{self.message}', file=sys.stderr, flush=True)
