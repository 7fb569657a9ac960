"""A small thread-safe least-recently-used cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """A map that keeps its most recently used entries.

    Bounded by ``max_items`` entries and/or a total ``max_size``, where each
    value weighs ``size(value)`` (e.g. its bytes). All methods are thread-safe.

    Examples
    --------
    >>> cache = LRU(max_items=2)
    >>> cache.put("a", 1); cache.put("b", 2); cache.get("a")
    1
    >>> cache.put("c", 3)  # evicts "b", the least recently used
    >>> cache.get("b") is None, len(cache)
    (True, 2)
    """

    def __init__(
        self,
        max_items: int | None = None,
        max_size: float | None = None,
        size: Callable[[V], float] = lambda value: 1,
    ):
        self.max_items = max_items
        self.max_size = max_size
        self._size = size
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._total = 0.0
        self._lock = threading.RLock()
        self._creating: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._entries:
                return default
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            if key in self._entries:
                self._total -= self._size(self._entries.pop(key))
            self._entries[key] = value
            self._total += self._size(value)
            self._evict()

    def get_or_create(self, key: Hashable, create: Callable[[], V]) -> V:
        """The value of ``key``, made by ``create()`` when absent.

        Concurrent callers of one key create it once (the others wait for
        it); other keys are served meanwhile. A value over ``max_size`` is
        returned but not kept.
        """
        with self._lock:
            if key in self._entries:
                return self.get(key)
            creating = self._creating.setdefault(key, threading.Lock())
        with creating:
            with self._lock:
                if key in self._entries:
                    return self.get(key)
            try:
                value = create()
                self.put(key, value)
            finally:
                with self._lock:
                    self._creating.pop(key, None)
            return value

    def _evict(self) -> None:
        def over() -> bool:
            too_many = (
                self.max_items is not None and len(self._entries) > self.max_items
            )
            too_big = self.max_size is not None and self._total > self.max_size
            return too_many or too_big

        while self._entries and over():
            _, value = self._entries.popitem(last=False)
            self._total -= self._size(value)

    @property
    def total_size(self) -> float:
        return self._total

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._total = 0.0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
