"""Graceful, bounded shutdown: what happens between SIGTERM and the process's exit.

On SIGTERM uvicorn stops accepting connections, lets the requests it accepted finish, and cancels what is
still running after its ``timeout_graceful_shutdown`` (the setting ``shutdown_timeout_s``) before running
the lifespan's shutdown. A request cancelled there gets no answer at all, so the ``Drain`` acts first:

- from the signal on, /readyz answers 503 ``shutting_down`` (a load balancer stops sending), and so does a
  request that finds the encoders already stopped;
- ``margin`` seconds plus the slowest recent encoder call before uvicorn's deadline it closes the
  batchers: the encoder call already running finishes (no further call of its round starts), every request
  not served by then fails with ``ShuttingDown``, which its handler answers as 503 ``shutting_down`` while
  uvicorn still waits for it;
- ``margin`` seconds before the deadline, an encoder call still running (one longer than the time left:
  a short ``shutdown_timeout_s`` and a slow model) is abandoned: its requests get their 503 at once and its
  results are dropped when it ends;
- the lifespan's shutdown then joins the batcher workers for what is left of the deadline, or for the
  slowest recent encoder call if that is longer (at least ``margin``): the process does not exit with a
  worker inside a native call (that can abort it), and a stuck call cannot hold the exit for longer (the
  workers are daemon threads).

So every accepted request ends with its answer or a 503 within ``shutdown_timeout_s`` of the signal, and the
process exits within about ``max(shutdown_timeout_s, slowest encoder call) + margin`` plus its own teardown
(closing the indexes, the interpreter's exit: a second or two).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from service.errors import ApiError

log = logging.getLogger(__name__)


def shutting_down() -> ApiError:
    """What a request gets when the service cannot do its work because it is stopping."""
    return ApiError(503, "shutting_down", "the service is shutting down: retry on another replica")


def margin_for(timeout_s: float) -> float:
    """Seconds before the deadline at which queued work is failed: long enough for the running batch of a
    real model to end and its handlers to answer."""
    return min(2.0, timeout_s / 4)


class Drain:
    """The service's shutdown state. ``begin()`` may be called from a signal handler: it only assigns and
    hands the rest to the event loop with ``call_soon_threadsafe``."""

    def __init__(self, timeout_s: float = 20.0) -> None:
        self.timeout_s = timeout_s
        self.margin_s = margin_for(timeout_s)
        self.since: float | None = None  # time.monotonic() of the signal
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batchers: Sequence[Any] = ()
        self._timer: asyncio.TimerHandle | None = None
        self._last_timer: asyncio.TimerHandle | None = None

    @property
    def draining(self) -> bool:
        return self.since is not None

    def attach(self, loop: asyncio.AbstractEventLoop, batchers: Sequence[Any]) -> None:
        """Called by the lifespan once the batchers run (``close()`` and ``stop(timeout)`` each)."""
        self._loop = loop
        self._batchers = list(batchers)
        if self.since is not None:  # the signal came during startup
            loop.call_soon_threadsafe(self._arm)

    def detach(self) -> None:
        for timer in (self._timer, self._last_timer):
            if timer is not None:
                timer.cancel()
        self._loop = None
        self._batchers = ()

    def begin(self) -> None:
        if self.since is not None:
            return
        self.since = time.monotonic()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if self._loop is None or self._timer is not None:
            return
        log.info("shutting down: answering what was accepted for up to %.0f s", self.timeout_s)
        self._timer = self._loop.call_later(max(0.0, self.left() - self.lead_s()), self.close_batchers)
        self._last_timer = self._loop.call_later(max(0.0, self.left() - self.margin_s), self.abandon_running)

    def lead_s(self) -> float:
        """How long before the deadline the batchers close: the margin for the handlers to answer, plus the
        slowest recent encoder call, which a worker may have just started when they close (a real LLM's
        call of thousands of tokens takes seconds on a CPU)."""
        return self.margin_s + self._slowest_call_s()

    def _slowest_call_s(self) -> float:
        return max((getattr(b, "slowest_call_s", 0.0) for b in self._batchers), default=0.0)

    def left(self) -> float:
        """Seconds until uvicorn's graceful deadline (the whole timeout when no signal came)."""
        if self.since is None:
            return self.timeout_s
        return self.since + self.timeout_s - time.monotonic()

    def close_batchers(self) -> None:
        """Stop taking work; fail what is queued (its requests answer 503). Does not block."""
        for batcher in self._batchers:
            if batcher.pending:
                log.warning("shutting down: failing %d queued %s items", batcher.pending, batcher.name)
            batcher.close()

    def abandon_running(self) -> None:
        """``margin`` seconds before the deadline: an encoder call still running cannot be stopped, so the
        requests waiting on it get their 503 now, while uvicorn still waits for their answers."""
        for batcher in self._batchers:
            if getattr(batcher, "busy", False):
                log.warning("shutting down: the %s encoder's call is still running: its requests get 503",
                            batcher.name)
            batcher.abandon()

    async def stop_batchers(self) -> None:
        """The lifespan's end: close, then join each worker for what is left of the deadline, or for as long
        as the slowest recent encoder call if that is longer (at least the margin), all at once. A worker
        left inside a native encoder call when the interpreter exits can abort the process, so a call that
        started just before the deadline is waited for; one stuck for longer is given up."""
        self.close_batchers()
        timeout = max(self.left(), self.lead_s())
        await asyncio.gather(*(asyncio.to_thread(b.stop, timeout) for b in self._batchers))
        self.detach()
