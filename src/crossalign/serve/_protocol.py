"""uvicorn's HTTP/1.1 protocol (h11) with a deadline on reading each request.

uvicorn closes a connection left idle *after* an answer (``timeout_keep_alive``), but waits
forever for a request that has not arrived whole: a connection that sends nothing, headers
trickled a line at a time, a body at a byte a second. Here a request must arrive whole within
``HEADER_TIMEOUT_S`` for its headers and ``BODY_TIMEOUT_S`` for its body, counted from its
first byte (from the connection's start, for the first request); otherwise the connection is
closed and its socket freed.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["GuardedH11Protocol", "HEADER_TIMEOUT_S", "BODY_TIMEOUT_S"]

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` that closes a connection whose request does not arrive in time."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "headers"
        self._arm(self.header_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.logger.info("closed a connection whose request did not arrive in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._phase = "headers"  # the first bytes of the next request on this connection
            self._arm(self.header_timeout_s)
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase == "headers":
            self._phase = "body"
            self._arm(self.body_timeout_s)
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the request is whole (or the connection is over)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
