"""The router's tokenizer thread, with a bounded queue in front of it.

Tokenizing runs off the event loop (a long prompt takes a quarter of a second, and the tokenizer releases the GIL),
on one thread, so requests wait for it in turn. Without a bound, a flood of long prompts queues there for as long
as it lasts while each caller's deadline runs out; with one, the request past it is refused at once with
RESOURCE_EXHAUSTED, the client's cue to back off, as every other queue of the service does."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from overfill.serving.types import ServiceError
from overfill.status import StatusCode

T = TypeVar("T")


class TokenizerQueue:
    """One tokenizer thread and at most `max_queued` requests in it or waiting for it (`server.max_tokenizer_queue`).
    A request counts until its work is done or dropped: a caller that leaves while its request waits takes it out of
    the queue; one that leaves while it runs still holds its place until the thread is done with it."""

    def __init__(self, max_queued: int):
        self.max_queued = max_queued
        self.num_queued = 0
        self._lock = threading.Lock()  # the count is given back on the tokenizer thread
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-tokenize")

    async def run(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) on the tokenizer thread; RESOURCE_EXHAUSTED at once when the queue is full."""
        with self._lock:
            if self.num_queued >= self.max_queued:
                raise ServiceError(StatusCode.RESOURCE_EXHAUSTED,
                                   f"the tokenizer queue is full: {self.num_queued} requests are being tokenized or "
                                   f"waiting (server.max_tokenizer_queue = {self.max_queued})")
            self.num_queued += 1
        try:
            work = self._thread.submit(fn, *args)
        except RuntimeError:  # shut down
            self._done(None)
            raise
        work.add_done_callback(self._done)
        return await asyncio.wrap_future(work)  # cancelling the caller cancels work that has not started

    def _done(self, _work: Future | None) -> None:
        with self._lock:
            self.num_queued -= 1

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
