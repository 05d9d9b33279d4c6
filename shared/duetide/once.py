"""A process-wide object made at its first use, once, whichever threads ask first."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class once(Generic[T]):
    """`functools.cache` for a zero-argument maker, made under a lock.

    `functools.cache` calls the function in every thread that misses: a cold process
    given 16 requests at once made an engine per thread, each with a pool of its own,
    and kept them (28 PostgreSQL connections where the pool's bound is 15).
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._made: tuple[T] | None = None
        functools.update_wrapper(self, make)

    def __call__(self) -> T:
        made = self._made
        if made is None:
            with self._lock:
                made = self._made
                if made is None:
                    made = self._made = (self._make(),)
        return made[0]

    def cache_clear(self) -> None:
        with self._lock:
            self._made = None
