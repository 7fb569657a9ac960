"""Distributed embedding throughput on a 1-worker vs a 2-worker LocalCluster.

Both clusters run in the same process, one after the other, on the same JPEG
files (photo crops, decoded and resized by the workers), with one thread per
worker. Each is warmed up first (every worker builds its backbone and the files
are in the page cache), then timed as the best of ``--repeat`` runs. Two torch
thread settings are measured:

* ``torch_threads=1``: one core per worker, so the ratio shows how well the
  work spreads over workers (2.0 is perfect);
* ``torch_threads="auto"``: what a user gets by default. One worker then uses
  every core through torch's own threads, so the ratio compares process
  parallelism with torch's intra-op parallelism on the same cores.

An in-process ``extractor.transform`` with one torch thread is printed for scale.

    python benchmarks/bench_distributed.py [--model resnet18] [--n 192]
        [--partition-size 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from _common import best_of, photos, write_jpegs
from distributed import Client, LocalCluster

from sktransfer import CNNFeatureExtractor
from sktransfer import distributed as skd


def throughput(n_workers: int, extractor, paths, args) -> dict:
    """Images per second for each torch thread setting on ``n_workers`` workers."""
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers, timeout=120)
        results = {}
        for threads in (1, "auto"):

            def run(threads=threads):
                skd.transform(
                    extractor,
                    paths,
                    client=client,
                    partition_size=args.partition_size,
                    torch_threads=threads,
                )

            run()  # warm-up: backbones built, files cached
            loads = client.run(skd._cache_loads)
            assert all(loads.values()), f"a worker never ran a partition: {loads}"
            results[threads] = len(paths) / best_of(run, args.repeat)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--partition-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    extractor = CNNFeatureExtractor(args.model, weights=None)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(photos(args.n, size=(240, 320)), Path(tmp) / "jpeg")
        load_before = os.getloadavg()[0]

        torch.set_num_threads(1)
        local = CNNFeatureExtractor(args.model, weights=None).fit(paths[:1])
        local.transform(paths[:8])
        local_ips = args.n / best_of(lambda: local.transform(paths), args.repeat)

        one = throughput(1, extractor, paths, args)
        two = throughput(2, extractor, paths, args)
        load_after = os.getloadavg()[0]

    print(
        f"model={args.model} n={args.n} partition_size={args.partition_size} "
        f"cores={os.cpu_count()} load average {load_before:.1f} -> {load_after:.1f}"
    )
    print(f"in-process transform, 1 torch thread: {local_ips:7.1f} img/s")
    for threads in (1, "auto"):
        print(
            f"torch_threads={threads!s:>4}: 1 worker {one[threads]:7.1f} img/s, "
            f"2 workers {two[threads]:7.1f} img/s, "
            f"ratio 2/1 = {two[threads] / one[threads]:.2f}"
        )


if __name__ == "__main__":
    main()
