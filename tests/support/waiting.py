"""Waiting for a state instead of sleeping: poll until it holds, fail with what was last seen.

    status = wait_for(lambda: api.GetStatus(...), until=lambda s: s.in_flight == 2,
                      describe="the import holds both slots")

A test that asserts on a state that something else changes (a health watch, a breaker,
a replica count, a process, a file) waits for it with a generous timeout: on a busy
machine things take longer, they do not happen in another order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_NOTHING = object()


def _timeout_error(describe: str, timeout: float, last: Any, error: BaseException | None) -> TimeoutError:
    seen = f"last seen: {last!r}" if last is not _NOTHING else "nothing seen"
    if error is not None:
        seen += f"; last error: {type(error).__name__}: {error}"
    return TimeoutError(f"waited {timeout:g} s for {describe}; {seen}")


def wait_for(observe: Callable[[], T], until: Callable[[T], Any] = bool, *, timeout: float = 60.0,
             describe: str = "the condition", interval: float = 0.1,
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call `observe` until `until(value)` is true; return that value.

    Exceptions of the `ignore` types count as "not yet" (a server still starting).
    """
    deadline = time.monotonic() + timeout
    last: Any = _NOTHING
    error: BaseException | None = None
    while True:
        try:
            last = observe()
            if until(last):
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise _timeout_error(describe, timeout, last, error)
        time.sleep(interval)


async def wait_for_async(observe: Callable[[], T], until: Callable[[T], Any] = bool, *, timeout: float = 30.0,
                         describe: str = "the condition", interval: float = 0.01) -> T:
    """wait_for for tests inside an event loop: yields to the loop between looks."""
    deadline = time.monotonic() + timeout
    while True:
        last = observe()
        if until(last):
            return last
        if time.monotonic() >= deadline:
            raise _timeout_error(describe, timeout, last, None)
        await asyncio.sleep(interval)
