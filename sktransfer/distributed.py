"""Scale out on Dask: embed large image collections and grid-search on a cluster.

This module needs Dask's distributed scheduler (``pip install sktransfer[dask]``)
and is not imported by ``import sktransfer``::

    from dask.distributed import Client, LocalCluster
    from sktransfer import CNNFeatureExtractor
    from sktransfer import distributed

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    X = distributed.transform(CNNFeatureExtractor("resnet18"), paths, client=client)

    with distributed.parallel_backend(client):   # joblib's Dask backend
        search.fit(paths, y)                       # GridSearchCV(..., n_jobs=-1)

* :func:`transform` splits the paths into partitions, one Dask task each. Every
  worker builds the backbone once (from the extractor's parameters) and keeps it
  in a small per-process cache, so later partitions, and later calls with the
  same parameters, reuse it. A worker that dies mid-run loses only its running
  and held partitions; Dask recomputes them elsewhere, and the rows come back
  exactly once, in input order.
* :func:`parallel_backend` runs scikit-learn's ``n_jobs`` parallelism (grid
  search, cross-validation) on the cluster through joblib's Dask backend, with
  torch's thread count set on every worker thread so that the worker processes
  of one machine do not oversubscribe its cores.

See the "Scaling out" guide (``docs/scaling.md``).
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from numbers import Integral
from pathlib import Path

try:
    import dask
    import distributed
    from distributed.comm import get_address_host
except ImportError as exc:  # pragma: no cover - exercised by a test with dask hidden
    raise ImportError(
        "sktransfer.distributed needs Dask's distributed scheduler, which is not "
        f"installed ({exc}). Install it with: pip install sktransfer[dask]"
    ) from exc

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_params,
)

from ._backbones import check_model
from ._dask_worker import (
    _clear_cache,
    _embed_partition,
    _Job,
    _TorchThreads,
)
from ._extractor import CNNFeatureExtractor
from ._params import reject_bool
from .exceptions import InvalidImageError

__all__ = ["clear_worker_cache", "parallel_backend", "transform"]

_MAX_AUTO_PARTITION = 1024

# scikit-learn's constraint language; what it cannot say is checked by hand.
_POSITIVE = Interval(Integral, 1, None, closed="left")
_CLIENT = [distributed.Client, None]
_TORCH_THREADS = [_POSITIVE, StrOptions({"auto"}), None]


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
@validate_params(
    {
        "extractor": [CNNFeatureExtractor],
        "X": "no_validation",  # paths or a Dask collection: see _partitions
        "client": _CLIENT,
        "partition_size": [_POSITIVE, StrOptions({"auto"})],
        "torch_threads": _TORCH_THREADS,
        "resources": [Mapping, None],
        "progress": ["boolean", None],
    },
    prefer_skip_nested_validation=True,
)
def transform(
    extractor: CNNFeatureExtractor,
    X,
    *,
    client=None,
    partition_size="auto",
    torch_threads="auto",
    resources: Mapping[str, float] | None = None,
    progress: bool | None = None,
) -> np.ndarray:
    """Embed image files on a Dask cluster; the same array as ``extractor.transform``.

    The paths are split into partitions, one task each. A worker builds the
    backbone once, from the extractor's parameters, and reuses it for every
    partition it runs (and for later calls with the same parameters). If a worker
    dies, Dask reruns its partitions on the others; the rows still come back
    exactly once and in the order of ``X``.

    Parameters
    ----------
    extractor : CNNFeatureExtractor
        Fitted or not: the workers build the backbone from its parameters
        (``fit`` only builds the backbone, and builds are deterministic, also with
        ``weights=None``), so the result equals ``extractor.fit(X).transform(X)``.
        ``extractor`` itself is not modified. For a pipeline, pass its
        ``CNNFeatureExtractor`` step and fit the rest on the embeddings.
        Weights files and the images must be readable by the workers under the
        same paths; named pretrained weights must be in each worker's
        ``TORCH_HOME`` (or downloadable there).
    X : list of str or path-like, 1-D array of str, dask.bag.Bag or dask.array.Array
        Image file paths. A Dask bag or 1-D Dask array of paths is embedded
        partition by partition (chunk by chunk), without collecting it first.
    client : distributed.Client, default=None
        The cluster to run on; ``None`` uses the default client (the one most
        recently created in this process).
    partition_size : int or "auto", default="auto"
        Images per task. ``"auto"`` makes about four tasks per worker
        (at most 1024 images each) for a list or array of paths, and keeps a Dask
        collection's own partitions. An integer re-chunks a Dask array; a bag
        keeps its partitions (use ``bag.repartition``). Small partitions balance
        load and lose less work when a worker dies; large ones cost less overhead.
    torch_threads : int, "auto" or None, default="auto"
        torch threads per task while it runs (restored afterwards). ``"auto"``
        shares each machine's cores among the worker processes on it:
        ``max(1, cores // workers)``. ``None`` leaves the workers' setting alone
        (Dask's nanny starts workers with ``OMP_NUM_THREADS=1``). An extractor
        with ``n_jobs=None`` also decodes files with that many threads.
    resources : dict, default=None
        Dask resources each task needs, e.g. ``{"GPU": 1}`` on a cluster whose
        workers were started with ``--resources GPU=1`` (one worker per GPU).
    progress : bool, default=None
        Show :func:`distributed.progress` while the tasks run (a widget in a
        notebook, a text bar in a terminal). ``None`` follows
        ``extractor.progress``. The dashboard shows the tasks as
        ``sktransfer-embed``.

    Returns
    -------
    embeddings : ndarray of shape (n_samples, n_features), float32
        Row ``i`` embeds ``X[i]``.

    Raises
    ------
    sklearn.utils._param_validation.InvalidParameterError
        A parameter of the wrong type or out of range (a ``ValueError`` and a
        ``TypeError``), e.g. ``partition_size=0`` or an ``extractor`` that is
        not a ``CNNFeatureExtractor``.
    ValueError
        No client is given and none exists.
    InvalidImageError
        ``X`` is empty or holds something other than paths.
    FileNotFoundError, ImageDecodeError, WeightsNotAvailableError
        Raised on a worker (the first failing partition's error is re-raised here).

    Notes
    -----
    The tasks of one worker share its backbone and take turns on it, so use one
    thread per worker (``LocalCluster(threads_per_worker=1)``, ``dask worker
    --nthreads 1``) and as many worker processes as cores (CPU) or GPUs.

    While a task runs, glibc's malloc thresholds are raised above the small
    ``MALLOC_TRIM_THRESHOLD_`` that Dask's nanny sets (which slows a CPU forward
    pass down markedly) and restored afterwards; see the "Scaling out" guide.

    Examples
    --------
    >>> from dask.distributed import Client, LocalCluster  # doctest: +SKIP
    >>> client = Client(LocalCluster(n_workers=2))  # doctest: +SKIP
    >>> extractor = CNNFeatureExtractor("resnet18")  # doctest: +SKIP
    >>> X = transform(extractor, paths, client=client, progress=True)  # doctest: +SKIP
    """
    reject_bool(partition_size, "partition_size", "transform")
    reject_bool(torch_threads, "torch_threads", "transform")
    client = _get_client(client)
    job = _make_job(extractor)
    if progress is None:
        progress = bool(extractor.progress)

    workers = _workers_by_host(client)
    parts, lengths = _partitions(X, partition_size, sum(workers.values()))
    name = f"sktransfer-embed-{uuid.uuid4().hex[:12]}"
    job_node = dask.delayed(job, name=f"sktransfer-extractor-{job.key}", pure=True)
    tasks = [
        dask.delayed(_embed_partition, pure=True)(
            job_node, part, torch_threads, workers, dask_key_name=(name, i)
        )
        for i, part in enumerate(parts)
    ]
    futures = client.compute(tasks, resources=resources)
    try:
        if progress:
            with client.as_current():  # progress() talks to the current client
                distributed.progress(futures)
        results = client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
    return _assemble(results, lengths)


@contextlib.contextmanager
@validate_params(
    {"client": _CLIENT, "torch_threads": _TORCH_THREADS},
    prefer_skip_nested_validation=True,
)
def parallel_backend(
    client=None, *, torch_threads="auto", **backend_params
) -> Iterator[distributed.Client]:
    """Run scikit-learn's ``n_jobs`` parallelism on a Dask cluster.

    Inside the block, ``GridSearchCV(..., n_jobs=-1)``, ``cross_validate`` and
    anything else that uses joblib run their jobs as Dask tasks (joblib's
    ``"dask"`` backend), and torch uses ``torch_threads`` threads on every
    worker thread. Estimators (a ``Pipeline`` with a
    :class:`~sktransfer.CNNFeatureExtractor`, a ``FineTuneClassifier``) are
    pickled to the workers; results equal the sequential run.

    Parameters
    ----------
    client : distributed.Client, default=None
        The cluster; ``None`` uses the default client.
    torch_threads : int, "auto" or None, default="auto"
        torch threads per worker thread while the block runs; the previous
        setting is restored on exit. ``"auto"`` shares each machine's cores among
        the task slots of the workers on it (``max(1, cores // slots)``), so
        concurrent fits do not oversubscribe the machine. ``None`` leaves the
        workers alone (Dask's nanny starts them with ``OMP_NUM_THREADS=1``).
        Applied when entering (workers should be idle then) and to workers that
        join later. Unless ``None``, glibc's malloc thresholds are also raised
        for the block, as in :func:`transform`.
    **backend_params
        Passed to ``joblib.parallel_config(backend="dask", ...)``, e.g.
        ``resources={"GPU": 1}`` to run each fit on a worker with a free GPU, or
        ``scatter=[X]`` to send a large ``X`` to the workers once.

    Yields
    ------
    client : distributed.Client

    Examples
    --------
    >>> from sklearn.model_selection import GridSearchCV  # doctest: +SKIP
    >>> search = GridSearchCV(pipeline, grid, n_jobs=-1)  # doctest: +SKIP
    >>> with parallel_backend(client):  # doctest: +SKIP
    ...     search.fit(paths, y)
    """
    reject_bool(torch_threads, "torch_threads", "parallel_backend")
    client = _get_client(client)
    name = None
    if torch_threads is not None:
        name = f"sktransfer-torch-threads-{uuid.uuid4().hex[:12]}"
        plugin = _TorchThreads(torch_threads, _slots_by_host(client), name)
        client.register_plugin(plugin, name=name)
    try:
        with joblib.parallel_config(backend="dask", client=client, **backend_params):
            yield client
    finally:
        if name is not None:
            client.unregister_worker_plugin(name)


@validate_params({"client": _CLIENT}, prefer_skip_nested_validation=True)
def clear_worker_cache(client=None) -> None:
    """Drop the backbones that :func:`transform` keeps on every worker.

    Parameters
    ----------
    client : distributed.Client, default=None
        The cluster; ``None`` uses the default client.
    """
    _get_client(client).run(_clear_cache)


# --------------------------------------------------------------------------
# Validation and client-side helpers
# --------------------------------------------------------------------------
def _get_client(client):
    if client is not None:
        return client
    try:
        return distributed.default_client()
    except ValueError:
        raise ValueError(
            "No Dask client: pass client=Client(...) or create one first, e.g. "
            "client = Client(LocalCluster()) for this machine or "
            "Client('tcp://scheduler:8786') for a cluster."
        ) from None


def _make_job(extractor: CNNFeatureExtractor) -> _Job:
    spec = clone(extractor).set_params(progress=False)
    spec._validate_params()  # bad parameters fail here, not on every worker
    check_model(spec.model)
    params = spec.get_params(deep=False)
    key = dask.base.tokenize(type(spec).__module__, type(spec).__qualname__, params)
    return _Job(key, spec)


def _workers_by_host(client) -> dict[str, int]:
    """Worker processes per machine, from the scheduler's view."""
    return dict(Counter(get_address_host(a) for a in client.nthreads()))


def _slots_by_host(client) -> dict[str, int]:
    """Task slots (worker threads) per machine, from the scheduler's view."""
    slots: Counter[str] = Counter()
    for address, nthreads in client.nthreads().items():
        slots[get_address_host(address)] += nthreads
    return dict(slots)


def _as_paths(X) -> list[str]:
    if isinstance(X, (str, bytes, Path)):
        raise InvalidImageError(
            f"Expected a collection of image paths, got a single path {X!r}; wrap "
            "it in a list."
        )
    if isinstance(X, np.ndarray) and not (X.ndim == 1 and X.dtype.kind in "OUS"):
        raise InvalidImageError(
            "sktransfer.distributed.transform embeds image files: X must be paths, "
            f"got an array of shape {X.shape} and dtype {X.dtype}. For images in "
            "memory, call extractor.transform(X), or write them to files first."
        )
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # pandas Series
        X = X.to_numpy()
    items = list(X)
    paths = []
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike)):
            raise InvalidImageError(
                "sktransfer.distributed.transform embeds image files: X must hold "
                f"str or path-like items, got {type(item).__name__} at index {i}. "
                "For images in memory, call extractor.transform(X)."
            )
        paths.append(os.fspath(item))
    return paths


def _partitions(X, partition_size, n_slots: int) -> tuple[list, list[int] | None]:
    """The partitions to embed (lists or Dask delayed objects) and their lengths."""
    if dask.is_dask_collection(X):
        return _dask_partitions(X, partition_size), None
    paths = _as_paths(X)
    if not paths:
        raise InvalidImageError("Got an empty list of images; need at least one image.")
    if partition_size == "auto":
        size = math.ceil(len(paths) / (4 * max(1, n_slots)))
        partition_size = min(_MAX_AUTO_PARTITION, max(1, size))
    parts = [
        paths[start : start + partition_size]
        for start in range(0, len(paths), partition_size)
    ]
    return parts, [len(part) for part in parts]


def _dask_partitions(X, partition_size) -> list:
    import dask.array as da
    import dask.bag as db

    if isinstance(X, db.Bag):
        if partition_size != "auto":
            raise ValueError(
                "A Dask bag keeps its own partitions; leave partition_size='auto' "
                f"(got {partition_size!r}) and use bag.repartition(npartitions=...) "
                "to change them."
            )
        return list(X.to_delayed(optimize_graph=True))
    if isinstance(X, da.Array):
        if X.ndim != 1 or X.dtype.kind not in "OUS":
            raise InvalidImageError(
                "A Dask array given to sktransfer.distributed.transform must be a 1-D "
                f"array of paths, got shape {X.shape} and dtype {X.dtype}."
            )
        if X.shape[0] == 0:
            raise InvalidImageError(
                "Got an empty array of images; need at least one image."
            )
        if partition_size != "auto":
            X = X.rechunk(partition_size)
        return list(X.to_delayed(optimize_graph=True).ravel())
    raise InvalidImageError(
        "X must be a list or 1-D array of paths, a dask.bag.Bag or a 1-D "
        f"dask.array.Array of paths; got {type(X).__name__}. Convert a Dask "
        "DataFrame column with .to_dask_array(lengths=True) or .to_bag()."
    )


def _assemble(results: list[np.ndarray], lengths: list[int] | None) -> np.ndarray:
    if lengths is not None:
        got = [len(r) for r in results]
        if got != lengths:  # cannot happen unless a task returned the wrong rows
            raise RuntimeError(
                f"Distributed embedding returned partitions of {got} rows for "
                f"partitions of {lengths} paths; please report this as a bug."
            )
    blocks = [r for r in results if len(r)]
    if not blocks:
        raise InvalidImageError("Got an empty collection of images; need at least one.")
    return np.concatenate(blocks, axis=0)
