"""Model files: save_model / load_model keep an estimator with its record,
and refuse what they cannot load with a message that says why."""

from __future__ import annotations

import copy
import pickle
import sys
import types

import joblib
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sktransfer
from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    load_model,
    save_model,
)
from sktransfer.persistence import FORMAT, FORMAT_VERSION


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    y = np.array(["cat"] * 5 + ["dog"] * 3)
    clf = FineTuneClassifier(
        "mobilenet_v3_small",
        weights=None,
        max_epochs=1,
        batch_size=4,
        image_size=64,
        random_state=0,
        device="cpu",
    ).fit(X, y)
    return clf, X, y


def test_a_model_and_its_record_round_trip(finetuned, tmp_path):
    clf, X, y = finetuned
    path = tmp_path / "model.joblib"
    record = save_model(clf, path, y=y, source="photos/")
    model = load_model(path)
    np.testing.assert_array_equal(
        model.estimator.predict_proba(X), clf.predict_proba(X)
    )
    assert model.record == record
    assert record["classes"] == ["cat", "dog"]
    assert record["counts"] == {"cat": 5, "dog": 3} and record["n_images"] == 8
    assert record["backbone"] == "mobilenet_v3_small" and record["source"] == "photos/"
    assert record["versions"]["sktransfer"] == sktransfer.__version__
    assert record["versions"]["torch"] == torch.__version__
    assert record["estimator"].startswith("FineTuneClassifier('mobilenet_v3_small'")


def test_a_pipeline_of_features_round_trips(tmp_path, images, labels):
    pipe = make_pipeline(
        CNNFeatureExtractor("resnet18", weights=None, device="cpu"),
        StandardScaler(),
        LogisticRegression(),
    ).fit(images, labels)
    save_model(pipe, tmp_path / "p.joblib", y=labels)
    model = load_model(tmp_path / "p.joblib")
    assert model.record["backbone"] == "resnet18"
    np.testing.assert_array_equal(model.estimator.predict(images), pipe.predict(images))


def test_a_model_saved_with_cuda_loads_on_a_cpu(finetuned, tmp_path, monkeypatch):
    clf, X, y = finetuned
    gpu = copy.deepcopy(clf)
    gpu.__dict__["device"] = "cuda"  # as a net fitted with device="cuda" pickles
    save_model(gpu, tmp_path / "gpu.joblib", y=y)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="CUDA|cuda"):
        model = load_model(tmp_path / "gpu.joblib")
    assert str(model.estimator.device) == "cpu"
    np.testing.assert_array_equal(
        model.estimator.predict_proba(X), clf.predict_proba(X)
    )


def test_bad_model_files(tmp_path, finetuned):
    with pytest.raises(FileNotFoundError, match="'nowhere.joblib' does not exist"):
        load_model("nowhere.joblib")
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"\x89PNG not a model at all")
    with pytest.raises(ValueError, match="damaged or not a model file"):
        load_model(garbage)
    other = tmp_path / "other.joblib"
    joblib.dump({"weights": [1, 2]}, other)
    with pytest.raises(ValueError, match="not an sktransfer model file"):
        load_model(other)
    truncated = tmp_path / "truncated.joblib"
    save_model(finetuned[0], truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(ValueError, match="damaged"):
        load_model(truncated)
    with pytest.raises(NotFittedError):
        save_model(LogisticRegression(), tmp_path / "unfitted.joblib")
    with pytest.raises(FileNotFoundError, match="Folder 'no/such' does not exist"):
        save_model(finetuned[0], "no/such/model.joblib")


def _file(path, version: str, estimator, format_version=FORMAT_VERSION):
    header = {
        "format": FORMAT,
        "format_version": format_version,
        "record": {"versions": {"sktransfer": version}},
    }
    with open(path, "wb") as file:
        pickle.dump(header, file)
        joblib.dump(estimator, file)


def test_a_file_of_another_version_loads_or_names_both_versions(tmp_path):
    ours = sktransfer.__version__
    loadable = tmp_path / "old.joblib"
    _file(loadable, "0.0.1", LogisticRegression().fit(np.eye(2), [0, 1]))
    with pytest.warns(
        UserWarning, match=f"written by sktransfer 0.0.1; this is sktransfer {ours}"
    ):
        assert load_model(loadable).estimator.predict(np.eye(2)).tolist() == [0, 1]
    # an estimator whose class this version no longer has
    module = types.ModuleType("sktransfer_gone")
    exec("class Net:\n    pass", module.__dict__)
    module.Net.__module__ = "sktransfer_gone"
    sys.modules["sktransfer_gone"] = module
    try:
        _file(tmp_path / "gone.joblib", "0.0.1", module.Net())
    finally:
        del sys.modules["sktransfer_gone"]
    with pytest.raises(
        ValueError, match=f"written by sktransfer 0.0.1, and sktransfer {ours} cannot"
    ):
        load_model(tmp_path / "gone.joblib")
    _file(tmp_path / "new.joblib", "9.0", None, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="sktransfer 9.0 in a newer format"):
        load_model(tmp_path / "new.joblib")
