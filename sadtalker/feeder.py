"""Hand work to one background thread in order, so the caller (the render loop) never waits for it.

The pipeline feeds finished frames to the encoder this way: on a GPU, piping frames into ffmpeg (a copy and a
blocking pipe write per batch) then overlaps with the next batch's rendering instead of idling the GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_STOP = object()


class BackgroundFeeder(Generic[T]):
    """Calls ``sink(item)`` on a background thread for every ``put(item)``, in order.

    At most ``depth`` items wait (``put`` blocks beyond that, so memory stays bounded).  The first exception the
    sink raises is re-raised in the caller's thread by the next ``put`` or by ``close``; later items are then
    dropped.  Use as a context manager: leaving the block waits for the queue to drain.
    """

    def __init__(self, sink: Callable[[T], object], *, depth: int = 2, name: str = "feeder") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._sink = sink
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:
                try:
                    self._sink(item)  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
                    self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError("BackgroundFeeder is closed")
        self._raise_error()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every item was handed to the sink; re-raise the sink's error, if any."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> BackgroundFeeder[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        # Already failing: stop the thread, keep the original exception.
        self._error = None
        self._closed = True
        while True:  # drop what is still queued so the thread sees the stop marker at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_STOP)
        self._thread.join()
