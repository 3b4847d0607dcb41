"""A deadline for the awaits of one proxied request: ``asyncio.timeout``'s job, cheaper.

``asyncio.timeout`` builds a context object, looks up the loop and the current task and
runs an async enter and exit each time; the proxy enters one for the node's headers and
another for its body, on every request (measured: about a tenth of the proxy's own
Python time). A ``Deadline`` is made once per attempt and re-armed for each phase with a
plain ``with``. The semantics are ``asyncio.timeout``'s: when the time is up the task is
cancelled, and the cancellation comes out of the ``with`` as ``TimeoutError`` unless
someone else cancelled the task too (then it stays a cancellation).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a Deadline needs a running task")
        self._task = task
        self._loop = task.get_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False
        self._cancelling = 0

    def within(self, seconds: float) -> Deadline:
        """Arm for ``seconds`` from now; use as ``with deadline.within(s): await ...``."""
        self._expired = False
        self._cancelling = self._task.cancelling()
        self._handle = self._loop.call_later(seconds, self._expire)
        return self

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired:
            self._expired = False
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
