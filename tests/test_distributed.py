"""sktransfer.distributed on a real 2-process LocalCluster (loopback only)."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from distributed import Client, LocalCluster, get_task_stream  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

from sktransfer import CNNFeatureExtractor, InvalidImageError  # noqa: E402
from sktransfer import _dask_worker as worker_side  # noqa: E402
from sktransfer import distributed as skd  # noqa: E402

N_IMAGES = 240
MODEL = "mobilenet_v3_small"  # ~8 ms per image on one CPU thread
# On the CPU, in this process and on the workers: distributed embeddings are
# compared with the in-process reference at atol=1e-5, and grid searches on the
# cluster with sequential ones exactly.
CPU = {"weights": None, "device": "cpu"}


@pytest.fixture(scope="module")
def client():
    """Two worker processes with one thread each, on 127.0.0.1, never the default."""
    with (
        LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        yield client


@pytest.fixture(scope="module")
def many_paths(tmp_path_factory):
    """``N_IMAGES`` distinct 32x32 JPEG files."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(42)
    paths = []
    for i in range(N_IMAGES):
        path = root / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def extractor():
    return CNNFeatureExtractor(MODEL, **CPU)


@pytest.fixture(scope="module")
def reference(extractor, many_paths):
    """The in-process embedding that every distributed run must reproduce."""
    fitted = CNNFeatureExtractor(MODEL, **CPU).fit(many_paths)
    return fitted.transform(many_paths)


def _executing(dask_worker):
    return [ts.key for ts in dask_worker.state.executing]


# --------------------------------------------------------------------------
# Distributed embedding
# --------------------------------------------------------------------------
def test_transform_equals_local_in_order_loading_once_per_worker(
    client, extractor, many_paths, reference
):
    client.run(worker_side._clear_cache)
    out = skd.transform(extractor, many_paths, client=client, partition_size=10)

    assert out.dtype == np.float32
    assert out.shape == reference.shape and len(out) == N_IMAGES
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0)
    # 24 partitions ran, on both workers, and each worker built the backbone once.
    loads = client.run(worker_side._cache_loads)
    assert len(loads) == 2
    for worker, counts in loads.items():
        assert list(counts.values()) == [1], (worker, counts)
    assert set(client.run(worker_side._malloc_users_now).values()) == {0}
    # The caller's extractor is neither fitted nor modified.
    assert not hasattr(extractor, "backbone_")


def test_second_call_reuses_worker_backbones_and_fitted_input(
    client, many_paths, reference
):
    fitted = CNNFeatureExtractor(MODEL, **CPU).fit(many_paths[:1])
    before = client.run(worker_side._cache_loads)
    out = skd.transform(fitted, many_paths[:40], client=client, partition_size=4)
    np.testing.assert_allclose(out, reference[:40], atol=1e-5, rtol=0)
    assert client.run(worker_side._cache_loads) == before  # nothing was rebuilt


def test_transform_dask_bag_and_array(client, extractor, many_paths, reference):
    paths = many_paths[:30]
    bag = db.from_sequence(paths, npartitions=4)
    np.testing.assert_allclose(
        skd.transform(extractor, bag, client=client), reference[:30], atol=1e-5, rtol=0
    )
    array = da.from_array(np.array(paths, dtype=object), chunks=7)
    out = skd.transform(extractor, array, client=client, partition_size=11)
    np.testing.assert_allclose(out, reference[:30], atol=1e-5, rtol=0)


def test_bag_with_empty_partitions(client, extractor, many_paths, reference):
    bag = db.from_sequence(many_paths[:6], npartitions=3).filter(
        lambda p: not p.endswith(("0000.jpg", "0001.jpg"))
    )  # the first partition (paths 0 and 1) is now empty
    out = skd.transform(extractor, bag, client=client)
    np.testing.assert_allclose(out, reference[2:6], atol=1e-5, rtol=0)


def test_worker_killed_mid_run_gives_every_row_once(
    client, extractor, many_paths, reference, tmp_path
):
    """Partition 10 reads a FIFO, so it blocks on a known worker until we kill it."""
    blocked = 100  # the first path of partition 10
    fifo = tmp_path / "blocked.jpg"
    os.mkfifo(fifo)
    paths = list(many_paths)
    paths[blocked] = str(fifo)
    with open(many_paths[blocked], "rb") as f:
        jpeg = f.read()

    result: dict = {}

    def run():
        try:
            result["out"] = skd.transform(
                extractor, paths, client=client, partition_size=10
            )
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        # 1. Find the worker that is executing the blocked partition.
        victim = None
        deadline = time.monotonic() + 90
        while victim is None and time.monotonic() < deadline and runner.is_alive():
            for address, keys in client.run(_executing).items():
                if any(isinstance(k, tuple) and k[1] == 10 for k in keys):
                    victim = address
            time.sleep(0.05)
        assert victim is not None, f"partition 10 never started: {result}"

        # 2. Kill it for real (no graceful shutdown) and wait until it is gone.
        pid = client.run(os.getpid, workers=[victim])[victim]
        process = psutil.Process(pid)
        process.kill()
        gone, _ = psutil.wait_procs([process], timeout=30)
        assert gone, "the killed worker did not exit"

        # 3. Dask reruns partition 10 elsewhere: feed the FIFO to its new reader.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO: no reader yet
            except OSError:
                time.sleep(0.05)
                continue
            os.set_blocking(fd, True)
            os.write(fd, jpeg)
            os.close(fd)
            break
        else:
            pytest.fail("partition 10 was not retried after its worker died")
    finally:
        runner.join(timeout=120)

    assert not runner.is_alive()
    assert "error" not in result, result.get("error")
    out = result["out"]
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0)
    assert victim not in client.run(os.getpid)  # a new process replaced it
    client.wait_for_workers(2, timeout=120)
    for counts in client.run(worker_side._cache_loads).values():
        assert set(counts.values()) <= {1}


def test_progress_uses_dask_progress_bar(client, many_paths, reference, capsys):
    extractor = CNNFeatureExtractor(MODEL, **CPU, progress=True)
    out = skd.transform(extractor, many_paths[:8], client=client, partition_size=4)
    np.testing.assert_allclose(out, reference[:8], atol=1e-5, rtol=0)
    assert "100% Completed" in capsys.readouterr().out
    skd.transform(extractor, many_paths[:8], client=client, progress=False)
    assert "Completed" not in capsys.readouterr().out


def test_tasks_of_one_worker_take_turns_on_its_backbone(many_paths, reference):
    """Four threads of one process (a worker with nthreads=4) share one backbone."""
    job = skd._make_job(CNNFeatureExtractor(MODEL, **CPU))
    parts = [many_paths[i : i + 6] for i in range(0, 48, 6)]
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(
                pool.map(lambda p: worker_side._embed_partition(job, p, 1, {}), parts)
            )
        assert worker_side._cache_loads() == {job.key: 1}
    finally:
        worker_side._clear_cache()
    np.testing.assert_allclose(np.concatenate(results), reference[:48], atol=1e-5)


def test_error_on_worker_is_raised_here(client, extractor, many_paths, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        skd.transform(
            extractor, many_paths[:5] + [missing], client=client, partition_size=3
        )


# --------------------------------------------------------------------------
# Grid search on the Dask joblib backend
# --------------------------------------------------------------------------
def test_grid_search_on_dask_equals_sequential(client):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    X[8:, :, :16] = 255  # class "b": bright left half
    y = np.array(["a"] * 8 + ["b"] * 8)
    pipe = Pipeline([("cnn", CNNFeatureExtractor("resnet18", **CPU)), ("svm", SVC())])
    grid = {"cnn__pooling": ["avg", "max"], "svm__gamma": ["scale", 10.0]}

    sequential = GridSearchCV(pipe, grid, cv=2, n_jobs=1).fit(X, y)
    with skd.parallel_backend(client), get_task_stream(client) as stream:
        parallel = GridSearchCV(pipe, grid, cv=2, n_jobs=-1).fit(X, y)

    assert len(stream.data) >= 8  # the 8 fits ran as tasks on the cluster
    assert parallel.best_params_ == sequential.best_params_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        np.testing.assert_allclose(
            parallel.cv_results_[key], sequential.cv_results_[key], atol=1e-12
        )
    assert len(set(sequential.cv_results_["mean_test_score"])) > 1  # not all tied


def test_grid_search_fine_tune_classifier_on_dask(client):
    from sktransfer import FineTuneClassifier

    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    X[6:, :, :16] = 255
    y = np.array(["a"] * 6 + ["b"] * 6)
    clf = FineTuneClassifier(
        "mobilenet_v3_small", **CPU, max_epochs=2, augment=False, random_state=0
    )
    grid = {"lr": [1e-4, 1e-1]}
    sequential = GridSearchCV(clf, grid, cv=2, n_jobs=1).fit(X, y)
    with skd.parallel_backend(client), get_task_stream(client) as stream:
        parallel = GridSearchCV(clf, grid, cv=2, n_jobs=-1).fit(X, y)

    assert len(stream.data) >= 4
    assert parallel.best_params_ == sequential.best_params_
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"],
        sequential.cv_results_["mean_test_score"],
    )
    assert list(parallel.classes_) == ["a", "b"]


def _threads(_=None):
    return torch.get_num_threads()


def test_parallel_backend_sets_torch_threads_per_worker_and_restores(client):
    before = client.gather(client.map(_threads, range(4), pure=False))
    assert set(before) == {1}  # the nanny's OMP_NUM_THREADS=1
    with skd.parallel_backend(client, torch_threads=2):
        during = client.gather(client.map(_threads, range(4), pure=False))
        malloc_during = client.run(worker_side._malloc_users_now)
    after = client.gather(client.map(_threads, range(4), pure=False))
    assert set(during) == {2}
    assert set(after) == {1}
    # glibc's malloc thresholds are raised for the block and restored after it.
    assert set(malloc_during.values()) == {1}
    assert set(client.run(worker_side._malloc_users_now).values()) == {0}


def test_auto_threads_shares_cores_among_slots():
    assert worker_side._auto_threads(cpus=2, slots=2) == 1
    assert worker_side._auto_threads(cpus=16, slots=1) == 16
    assert worker_side._auto_threads(cpus=16, slots=3) == 5
    assert worker_side._auto_threads(cpus=2, slots=8) == 1


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -3, 2.5, "big", True, None])
def test_invalid_partition_size(client, extractor, many_paths, size):
    with pytest.raises(
        ValueError, match="'partition_size' parameter of transform must be"
    ):
        skd.transform(extractor, many_paths[:2], client=client, partition_size=size)


@pytest.mark.parametrize("threads", [0, "many", 1.5, True])
def test_invalid_torch_threads(client, extractor, many_paths, threads):
    with pytest.raises(ValueError, match="'torch_threads' parameter of transform must"):
        skd.transform(extractor, many_paths[:2], client=client, torch_threads=threads)
    with pytest.raises(
        ValueError, match="'torch_threads' parameter of parallel_backend must"
    ):
        with skd.parallel_backend(client, torch_threads=threads):
            pass


def test_invalid_client_and_options(extractor, many_paths):
    match = r"'client' parameter of {} must be an instance of .*Client.* or None"
    with pytest.raises(TypeError, match=match.format("transform")):
        skd.transform(extractor, many_paths[:2], client="tcp://127.0.0.1:8786")
    with pytest.raises(TypeError, match=match.format("parallel_backend")):
        with skd.parallel_backend("tcp://127.0.0.1:8786"):
            pass
    with pytest.raises(TypeError, match=match.format("clear_worker_cache")):
        skd.clear_worker_cache(client=3)
    with pytest.raises(ValueError, match="'resources' parameter of transform must"):
        skd.transform(extractor, many_paths[:2], resources="GPU")
    with pytest.raises(ValueError, match="'progress' parameter of transform must"):
        skd.transform(extractor, many_paths[:2], progress="yes")


EMPTY = np.array([], dtype=object)


@pytest.mark.parametrize("X", [[], EMPTY, da.from_array(EMPTY, chunks=1)])
def test_empty_input(client, extractor, X):
    with pytest.raises(InvalidImageError, match="empty"):
        skd.transform(extractor, X, client=client)


def test_non_path_input(client, extractor, many_paths):
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(InvalidImageError, match="call extractor.transform"):
        skd.transform(extractor, images, client=client)
    with pytest.raises(InvalidImageError, match="got int at index 1"):
        skd.transform(extractor, [many_paths[0], 3], client=client)
    with pytest.raises(InvalidImageError, match="single path"):
        skd.transform(extractor, many_paths[0], client=client)


def test_bag_with_partition_size(client, extractor, many_paths):
    with pytest.raises(ValueError, match="bag.repartition"):
        skd.transform(
            extractor, db.from_sequence(many_paths[:4]), client=client, partition_size=2
        )


def test_not_an_extractor(client, many_paths):
    with pytest.raises(
        TypeError,
        match=r"'extractor' parameter of transform must be an instance of "
        r"'.*CNNFeatureExtractor'. Got SVC\(\) instead",
    ):
        skd.transform(SVC(), many_paths[:2], client=client)


def test_bad_parameters_fail_before_submitting(client, many_paths):
    with pytest.raises(ValueError, match="Unknown backbone 'resnet19'"):
        skd.transform(CNNFeatureExtractor("resnet19"), many_paths[:2], client=client)


def test_no_client_and_no_default_client(extractor, many_paths):
    # The module's client is created with set_as_default=False.
    with pytest.raises(ValueError, match="No Dask client: pass client="):
        skd.transform(extractor, many_paths[:2])
    with pytest.raises(ValueError, match="No Dask client"):
        with skd.parallel_backend():
            pass


def test_import_error_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "sktransfer.distributed")
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install sktransfer\[dask\]"):
        importlib.import_module("sktransfer.distributed")
