"""The worker side of :mod:`sktransfer.distributed`: what runs inside Dask tasks.

* a per-process cache of fitted extractors, so a backbone is built once per
  worker and not once per task;
* torch's thread count, which belongs to each thread, set per task or, for the
  joblib backend, in every executor thread of a worker (a worker plugin);
* glibc's malloc thresholds, which Dask's nanny sets small enough to slow a CPU
  forward pass down markedly (measured in docs/scaling.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping

import distributed
import numpy as np
import torch
from dask.system import cpu_count
from distributed import WorkerPlugin
from distributed.comm import get_address_host
from sklearn.base import clone

from ._extractor import CNNFeatureExtractor
from ._lru import LRU

_WORKER_CACHE_SIZE = 2  # fitted extractors kept per worker process (a VGG is 0.5 GB)


class _Job:
    """What a worker needs to build the extractor: its unfitted clone and a key."""

    def __init__(self, key: str, spec: CNNFeatureExtractor):
        self.key = key
        self.spec = spec


def _auto_threads(cpus: int, slots: int) -> int:
    """torch threads per task when ``slots`` concurrent tasks share ``cpus`` cores."""
    return max(1, cpus // max(1, slots))


# Fitted extractors kept per worker process, with the lock their tasks take
# turns on; built under the cache's lock, so concurrent tasks build once.
_cache: LRU[tuple[CNNFeatureExtractor, threading.Lock]] = LRU(
    max_items=_WORKER_CACHE_SIZE
)
_loads: Counter[str] = Counter()  # backbone builds per job key, in this process


def _embed_partition(job: _Job, paths, torch_threads, workers) -> np.ndarray:
    """Embed one partition of paths on a worker (runs in a worker thread).

    ``workers`` maps each host to its number of worker processes, for
    ``torch_threads="auto"``.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:  # an empty bag partition: nothing to load
        return np.empty((0, 0), dtype=np.float32)
    threads = _threads_here(torch_threads, workers)
    with _torch_threads(threads), _malloc_for_torch():
        extractor, turn = _cached_extractor(job, paths[:1])
        if threads is not None and extractor.n_jobs is None:
            # Decode with as many threads as torch gets, not min(4, all cores).
            extractor = copy.copy(extractor)  # shares the backbone
            extractor.n_jobs = threads
        # A forward pass taps its layer with a hook on the shared module, so two
        # tasks of one worker must not run the same backbone at the same time.
        with turn:
            features = extractor.transform(paths)
    if len(features) != len(paths):  # pragma: no cover - defensive
        raise RuntimeError(f"Embedded {len(features)} rows for {len(paths)} paths.")
    return features


def _cached_extractor(
    job: _Job, probe: list[str]
) -> tuple[CNNFeatureExtractor, threading.Lock]:
    """This process's fitted extractor for ``job`` (built once) and its lock."""

    def build():
        _loads[job.key] += 1
        return clone(job.spec).fit(probe), threading.Lock()

    return _cache.get_or_create(job.key, build)


def _clear_cache() -> None:
    _cache.clear()
    _loads.clear()


def _cache_loads() -> dict[str, int]:
    """Backbone builds per job key in this process (read with ``client.run``)."""
    return dict(_loads)


def _threads_here(torch_threads, workers: Mapping[str, int]) -> int | None:
    """Resolve ``torch_threads`` on the worker that runs the task.

    The tasks of one worker take turns on its backbone, so ``"auto"`` shares the
    machine's cores among its worker processes, not among their threads.
    """
    if torch_threads != "auto":
        return torch_threads
    worker = distributed.get_worker()
    host = get_address_host(worker.address)
    return _auto_threads(cpu_count(), workers.get(host, 1))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads in the calling thread, then restore."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_TORCH_TRIM = 64 << 20
_TORCH_MMAP = 32 << 20  # glibc's largest dynamic mmap threshold on 64-bit
_GLIBC_MMAP_DEFAULT = 128 << 10


@functools.cache
def _libc():
    """glibc, or None (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover
        return None


def _env_bytes(name: str, default: int) -> int:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


_malloc_lock = threading.Lock()
_malloc_users = 0


@contextlib.contextmanager
def _malloc_for_torch() -> Iterator[None]:
    """Undo, while torch runs, Dask's small ``MALLOC_TRIM_THRESHOLD_``.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also
    pins glibc's mmap threshold at 128 KiB: every activation tensor is then
    mmap-ed, page-faulted and unmapped again, and a CPU forward pass runs
    markedly slower (docs/scaling.md has the numbers). Both thresholds are
    raised while any task of this process is inside the block, and set back to
    the environment's values when the last one leaves. No-op without glibc or
    without a small ``MALLOC_TRIM_THRESHOLD_``.
    """
    _malloc_acquire()
    try:
        yield
    finally:
        _malloc_release()


def _malloc_acquire() -> None:
    global _malloc_users
    with _malloc_lock:
        _malloc_users += 1
        libc = _small_trim_libc()
        if _malloc_users == 1 and libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _TORCH_MMAP)
            libc.mallopt(_M_TRIM_THRESHOLD, _TORCH_TRIM)


def _malloc_release() -> None:
    global _malloc_users
    with _malloc_lock:
        _malloc_users -= 1
        libc = _small_trim_libc()
        if _malloc_users == 0 and libc is not None:
            mmap = _env_bytes("MALLOC_MMAP_THRESHOLD_", _GLIBC_MMAP_DEFAULT)
            libc.mallopt(_M_MMAP_THRESHOLD, mmap)
            libc.mallopt(_M_TRIM_THRESHOLD, _env_bytes("MALLOC_TRIM_THRESHOLD_", 0))


def _small_trim_libc():
    """glibc when the environment sets a trim threshold below ours, else None."""
    trim = _env_bytes("MALLOC_TRIM_THRESHOLD_", -1)
    return _libc() if 0 <= trim < _TORCH_TRIM else None


class _TorchThreads(WorkerPlugin):
    """Set torch's thread count on every thread of a worker; restore on teardown.

    torch's (OpenMP's) thread count belongs to each thread, so it is set from
    inside each of the worker's executor threads, not just once per process.
    """

    def __init__(self, torch_threads, slots: Mapping[str, int], name: str):
        self.torch_threads = torch_threads
        self.slots = dict(slots)
        self.name = name
        self._previous: int | None = None

    async def setup(self, worker) -> None:
        if self.torch_threads == "auto":
            host = get_address_host(worker.address)
            n = _auto_threads(cpu_count(), self.slots.get(host, worker.state.nthreads))
        else:
            n = int(self.torch_threads)
        self._previous = await _set_threads_everywhere(worker, n)
        _malloc_acquire()

    async def teardown(self, worker) -> None:
        if self._previous is not None:
            _malloc_release()
            await _set_threads_everywhere(worker, self._previous)


async def _set_threads_everywhere(worker, n: int, timeout: float = 10.0) -> int:
    """Set torch threads in each executor thread of ``worker``; return the old value.

    One call per thread, held at a barrier so that no thread takes two; threads
    busy with a running task are skipped after ``timeout`` seconds (they keep
    their setting; threads started later inherit ``n``).
    """
    torch.set_num_threads(n)  # this thread, and the default for new threads
    executor = worker.executors["default"]
    count = max(1, worker.state.nthreads)
    barrier = threading.Barrier(count)
    previous: list[int] = []

    def apply() -> None:
        previous.append(torch.get_num_threads())
        torch.set_num_threads(n)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout)

    await asyncio.gather(
        *(asyncio.wrap_future(executor.submit(apply)) for _ in range(count))
    )
    return previous[0] if previous else n


def _malloc_users_now() -> int:
    """Tasks (and plugins) of this process inside :func:`_malloc_for_torch`."""
    with _malloc_lock:
        return _malloc_users
