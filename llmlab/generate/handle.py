"""A request submitted to the batcher, as its caller sees it: text pieces to iterate (or
`async for`), the finished Completion, and `cancel()`."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from llmlab.generate.logprobs import TokenLogprob
from llmlab.generate.reply import Completion
from llmlab.generate.sampling import SamplingParams


class Piece(str):
    """A text piece as a Handle yields it: a plain `str` to every caller, with `.logprobs`
    the tokens that produced it when the request asked for logprobs (a piece can carry several
    tokens, or none while a multi-byte character or a possible stop string is held back)."""

    logprobs: list[TokenLogprob] | None = None


class Handle:
    """One submitted request. Iterate it (or `async for`) for text pieces as they arrive;
    `.result` is the finished Completion. Leaving the loop early cancels the request."""

    def __init__(self, prompt: list[int], params: SamplingParams) -> None:
        self.prompt, self.params = prompt, params
        self.result: Completion | None = None
        self.error: BaseException | None = None
        self._q: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # None = finished
        self._cancel = threading.Event()
        self._notify: Callable[[], None] | None = None
        self.admitted: int | None = None  # 1 for the first request to start decoding, ...

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Free the request's batch slot at the next step (a no-op once it has finished)."""
        self._cancel.set()

    def _put(self, item: str | None) -> None:
        self._q.put(item)
        notify = self._notify
        if notify is not None:
            try:
                notify()
            except RuntimeError:  # the consumer's event loop is gone
                self.cancel()

    def __iter__(self) -> Iterator[str]:
        try:
            while (item := self._q.get()) is not None:
                yield item
        finally:
            self.cancel()
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        self._notify = lambda: loop.call_soon_threadsafe(wake.set)
        try:
            while True:
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    await wake.wait()  # a client disconnect cancels us here
                    wake.clear()
                    continue
                if item is None:
                    break
                yield item
        finally:
            self._notify = None
            self.cancel()
        if self.error is not None:
            raise self.error

    def text(self) -> Completion:
        """Block until finished; return the Completion."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def atext(self) -> Completion:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result
