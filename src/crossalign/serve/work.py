"""Bounded work: a few slots per kind of heavy work, a short queue, and a quick "busy".

Decoding an upload, embedding a query and explaining a match take from milliseconds to
seconds of CPU. Each kind runs in a :class:`WorkPool`: at most ``slots`` at once, at most
``queue`` more waiting, each waiting at most ``wait_s``. A request that finds the queue full
is refused at once, in the event loop, without taking a thread; one that waits too long is
refused then. Either way it gets a 503 with ``Retry-After`` (:class:`Busy`), and other
routes never wait behind it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from starlette.concurrency import run_in_threadpool

__all__ = ["WorkPool", "Busy", "PoolSizes"]

T = TypeVar("T")


class Busy(Exception):
    """No slot for this work now: answered 503 with ``Retry-After``."""

    def __init__(self, what: str, retry_after: int = 1) -> None:
        super().__init__(f"the service is busy {what}; try again in a moment")
        self.retry_after = retry_after


@dataclass(frozen=True)
class PoolSizes:
    """Slots, queue length and longest wait of one pool."""

    slots: int
    queue: int
    wait_s: float


class WorkPool:
    """At most ``slots`` calls at once and ``queue`` waiting; see the module docstring.

    Args:
        what: what the work is, for the busy message ("explaining matches").
    """

    def __init__(self, what: str, sizes: PoolSizes) -> None:
        self.what, self.sizes = what, sizes
        self._slots = threading.BoundedSemaphore(sizes.slots)
        self._count = threading.Lock()
        self.admitted = 0  # running or waiting

    @property
    def waiting(self) -> int:
        return max(0, self.admitted - self.sizes.slots)

    def _admit(self) -> None:
        with self._count:
            if self.admitted >= self.sizes.slots + self.sizes.queue:
                raise Busy(self.what)
            self.admitted += 1

    def _leave(self) -> None:
        with self._count:
            self.admitted -= 1

    def _run(self, fn: Callable[..., T], *args) -> T:
        if not self._slots.acquire(timeout=self.sizes.wait_s):
            raise Busy(self.what)
        try:
            return fn(*args)
        finally:
            self._slots.release()

    async def run(self, fn: Callable[..., T], *args) -> T:
        """``fn(*args)`` in a worker thread once a slot is free; raises :class:`Busy`."""
        self._admit()
        try:
            return await run_in_threadpool(self._run, fn, *args)
        finally:
            self._leave()
