"""Distributed embedding throughput on a 1-worker vs a 2-worker LocalCluster.

Both clusters run side by side from the same process, on the same JPEG files
(photo crops, decoded and resized by the workers), with one thread per worker.
Each is warmed up first (every worker builds its backbone and the files are in
the page cache); then the timed runs alternate between the two clusters, so
that load from other processes affects both alike, and each is reported as the
best of ``--repeat`` runs, with the median ratio of the alternating pairs. Two
torch thread settings are measured:

* ``torch_threads=1``: one core per worker, so the ratio shows how well the
  work spreads over workers (2.0 is perfect);
* ``torch_threads="auto"``: what a user gets by default. One worker then uses
  every core through torch's own threads, so the ratio compares process
  parallelism with torch's intra-op parallelism on the same cores.

An in-process ``extractor.transform`` with one torch thread is printed for scale,
and so is the machine's own ceiling: the total throughput of two concurrent bare
one-thread forward loops (no Dask, no files) over one. On a machine shared with
other jobs that ceiling can be far below 2.0, and the Dask ratio cannot beat it.

    python benchmarks/bench_distributed.py [--model resnet18] [--n 192]
        [--partition-size 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import best_of, photos, write_jpegs
from distributed import Client, LocalCluster

from sktransfer import CNNFeatureExtractor, _dask_worker
from sktransfer import distributed as skd


def cluster(n_workers: int):
    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )


def bare_forward(model: str, n: int) -> float:
    """Images per second of a bare one-thread forward loop (no Dask, no files)."""
    torch.set_num_threads(1)
    module = CNNFeatureExtractor(model, weights=None).fit(np.zeros((1, 8, 8, 3)))
    module = module.backbone_.module
    batch = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        module(batch)
        start = time.perf_counter()
        for _ in range(max(1, n // 8)):
            module(batch)
    return max(1, n // 8) * 8 / (time.perf_counter() - start)


def machine_ceiling(model: str, n: int) -> float:
    """Total throughput of 2 concurrent bare processes over 1: the machine's limit."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        one = pool.submit(bare_forward, model, n).result()
        two = sum(pool.map(bare_forward, [model] * 2, [n] * 2))
    return two / one


def timed(client, extractor, paths, args, threads) -> float:
    start = time.perf_counter()
    skd.transform(
        extractor,
        paths,
        client=client,
        partition_size=args.partition_size,
        torch_threads=threads,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--partition-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    extractor = CNNFeatureExtractor(args.model, weights=None)
    settings = (1, "auto")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(photos(args.n, size=(240, 320)), Path(tmp) / "jpeg")
        load_before = os.getloadavg()[0]

        torch.set_num_threads(1)
        local = CNNFeatureExtractor(args.model, weights=None).fit(paths[:1])
        local.transform(paths[:8])
        local_ips = args.n / best_of(lambda: local.transform(paths), args.repeat)

        # Both clusters live side by side and the timed runs alternate between
        # them, so that a burst of load from other processes hits both alike.
        with (
            cluster(1) as one,
            Client(one, set_as_default=False) as client1,
            cluster(2) as two,
            Client(two, set_as_default=False) as client2,
        ):
            clients = {1: client1, 2: client2}
            for n_workers, client in clients.items():
                client.wait_for_workers(n_workers, timeout=120)
                for threads in settings:  # warm-up: backbones built, files cached
                    timed(client, extractor, paths, args, threads)
                loads = client.run(_dask_worker._cache_loads)
                assert all(loads.values()), f"a worker never ran a partition: {loads}"
            times = {(k, t): [] for k in clients for t in settings}
            for _ in range(args.repeat):
                for threads in settings:
                    for n_workers, client in clients.items():
                        elapsed = timed(client, extractor, paths, args, threads)
                        times[n_workers, threads].append(elapsed)
        ceiling = machine_ceiling(args.model, args.n // 2)
        load_after = os.getloadavg()[0]

    print(
        f"model={args.model} n={args.n} partition_size={args.partition_size} "
        f"repeat={args.repeat} cores={os.cpu_count()} "
        f"load average {load_before:.1f} -> {load_after:.1f}"
    )
    print(f"in-process transform, 1 torch thread: {local_ips:7.1f} img/s")
    print(
        "machine ceiling (2 bare one-thread torch processes / 1, no Dask): "
        f"{ceiling:.2f}"
    )
    for threads in settings:
        best1 = args.n / min(times[1, threads])
        best2 = args.n / min(times[2, threads])
        pairs = zip(times[1, threads], times[2, threads], strict=True)
        ratios = [one / two for one, two in pairs]
        print(
            f"torch_threads={threads!s:>4}: 1 worker {best1:7.1f} img/s, "
            f"2 workers {best2:7.1f} img/s (best of {args.repeat}), "
            f"ratio 2/1 = {best2 / best1:.2f} "
            f"(per alternating pair: median {np.median(ratios):.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
