"""CNNFeatureExtractor: embeddings, scikit-learn citizenship, input forms."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from sktransfer import CNNFeatureExtractor, InvalidImageError


@pytest.fixture(scope="module")
def fitted():
    """A fitted resnet18 extractor (random seeded weights) shared by the module.

    On the CPU in float32: its tests compare embeddings exactly or at
    atol=1e-5, which float16 autocast on CUDA (device="auto") does not meet,
    nor bfloat16 (precision="auto" on CPUs with native bfloat16), whose
    rounding amplifies last-bit differences of the inputs.
    """
    X = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    return CNNFeatureExtractor(
        "resnet18", weights=None, batch_size=4, device="cpu", precision="float32"
    ).fit(X)


@pytest.mark.parametrize(
    ("model", "width"),
    [
        ("alexnet", 4096),
        ("vgg16", 4096),
        ("resnet18", 512),
        ("resnet50", 2048),
        ("googlenet", 1024),
        ("inception_v3", 2048),
        ("mobilenet_v2", 1280),
        ("mobilenet_v3_small", 1024),
        ("efficientnet_lite0", 1280),
    ],
)
def test_default_embedding_width(model, width, images):
    extractor = CNNFeatureExtractor(model, weights=None).fit(images[:1])
    assert extractor.n_features_out_ == width
    assert extractor.get_feature_names_out().shape == (width,)


def test_default_embedding_is_the_input_of_the_classifier(images):
    """AlexNet's default embedding is fc7 after ReLU: what feeds classifier.6."""
    # compared with a float32 forward of the module on the CPU
    extractor = CNNFeatureExtractor(
        "alexnet", weights=None, device="cpu", precision="float32"
    ).fit(images)
    Z = extractor.transform(images[:2])
    module = extractor.backbone_.module
    batch = torch.stack(
        [
            extractor.backbone_.preprocessing(
                torch.from_numpy(im).permute(2, 0, 1)[None]
            )[0]
            for im in images[:2]
        ]
    )
    with torch.inference_mode():
        hidden = module.classifier[:6](
            torch.flatten(module.avgpool(module.features(batch)), 1)
        )
    np.testing.assert_allclose(Z, hidden.numpy(), rtol=1e-5, atol=1e-5)
    assert (Z >= 0).all()  # after the ReLU


def test_pipeline_svc_on_arrays_and_jpeg_paths(images, labels, jpeg_paths):
    pipe = Pipeline(
        [("cnn", CNNFeatureExtractor("vgg16", weights=None)), ("svm", SVC())]
    )
    assert pipe.fit(images, labels).predict(images).shape == (8,)
    predicted = pipe.fit(jpeg_paths, labels).predict(jpeg_paths)
    assert set(predicted) <= {"cat", "dog"}


def test_output_is_float32_and_batch_independent(fitted, images):
    full = fitted.transform(images)
    assert full.dtype == np.float32 and full.shape == (8, 512)
    single = np.concatenate(
        [fitted.transform(images[i : i + 1]) for i in range(len(images))]
    )
    other = clone(fitted).set_params(batch_size=3).fit(images).transform(images)
    np.testing.assert_allclose(single, full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(other, full, rtol=1e-4, atol=1e-5)


def test_seeded_random_weights_agree_across_clones(fitted, images):
    np.testing.assert_array_equal(
        clone(fitted).fit(images).transform(images), fitted.transform(images)
    )


def test_array_layouts_give_the_same_embedding(fitted, images):
    nhwc = fitted.transform(images)
    nchw = images.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(fitted.transform(nchw), nhwc, atol=1e-5)
    # Float input is resized in float, uint8 in uint8 (rounded like PIL): the
    # two agree up to that 1/255 quantisation.
    floats = images.astype(np.float32) / 255
    np.testing.assert_allclose(fitted.transform(floats), nhwc, rtol=0.05, atol=0.02)
    in_255 = fitted.transform(images.astype(np.float64))
    np.testing.assert_allclose(in_255, fitted.transform(floats), rtol=1e-4, atol=1e-5)
    pil = [Image.fromarray(im) for im in images]
    np.testing.assert_allclose(fitted.transform(pil), nhwc, atol=1e-5)


def test_jpeg_paths_and_pathlib(fitted, jpeg_paths):
    from pathlib import Path

    Z = fitted.transform(jpeg_paths)
    np.testing.assert_array_equal(fitted.transform([Path(p) for p in jpeg_paths]), Z)
    np.testing.assert_array_equal(fitted.transform(np.array(jpeg_paths)), Z)


def test_grayscale_is_replicated_and_alpha_dropped(images):
    grey = images[..., 0]
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu").fit(grey)
    replicated = np.repeat(grey[..., None], 3, axis=-1)
    rgb = CNNFeatureExtractor("resnet18", weights=None, device="cpu").fit(replicated)
    np.testing.assert_allclose(
        extractor.transform(grey), rgb.transform(replicated), atol=1e-6
    )
    rgba = np.concatenate([images, np.zeros_like(images[..., :1])], axis=-1)
    np.testing.assert_allclose(
        CNNFeatureExtractor("resnet18", weights=None, device="cpu")
        .fit(rgba)
        .transform(rgba),
        rgb.fit(images).transform(images),
        atol=1e-6,
    )


def test_other_image_size_at_transform_time_is_fine(fitted, rng):
    big = rng.integers(0, 256, size=(2, 70, 50, 3), dtype=np.uint8)
    assert fitted.transform(big).shape == (2, 512)


def test_preprocessing_comes_from_the_weights():
    extractor = CNNFeatureExtractor("inception_v3", weights=None)
    extractor.fit(np.zeros((1, 32, 32, 3), np.uint8))
    assert extractor.backbone_.preprocessing.crop_size == 299
    lite0 = CNNFeatureExtractor("efficientnet_lite0", weights=None).fit(
        np.zeros((1, 8, 8), np.uint8)
    )
    assert lite0.backbone_.preprocessing.mean == (0.5, 0.5, 0.5)
    assert lite0.backbone_.preprocessing.interpolation == "bicubic"


@pytest.mark.parametrize(
    ("pooling", "width"),
    [("avg", 256), ("max", 256), ("avgmax", 512), (None, 256 * 14 * 14)],
)
def test_layer_and_pooling(pooling, width, images):
    extractor = CNNFeatureExtractor(
        "resnet18", weights=None, layer="layer3", pooling=pooling, device="cpu"
    )
    Z = extractor.fit(images[:2]).transform(images[:2])
    assert Z.shape == (2, width)
    if pooling == "avgmax":
        avg = (
            clone(extractor)
            .set_params(pooling="avg")
            .fit(images[:2])
            .transform(images[:2])
        )
        np.testing.assert_allclose(Z[:, :256], avg, atol=1e-6)


def test_layer_of_a_timm_model(images):
    extractor = CNNFeatureExtractor("timm/resnet18", weights=None, layer="layer2")
    assert extractor.fit(images[:1]).transform(images[:1]).shape == (1, 128)


def test_normalize_gives_unit_vectors(images):
    Z = CNNFeatureExtractor(
        "resnet18", weights=None, normalize=True, device="cpu"
    ).fit_transform(images)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)


def test_bare_module(images):
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 5),
    )
    before = [p.clone() for p in module.parameters()]
    extractor = CNNFeatureExtractor(module).fit(images)
    assert extractor.transform(images).shape == (8, 8)
    assert extractor.backbone_.module is not module
    assert all(
        torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True)
    )


def test_set_output_pandas(fitted, images):
    frame = clone(fitted).set_output(transform="pandas").fit(images).transform(images)
    assert list(frame.columns[:2]) == ["cnnfeatureextractor0", "cnnfeatureextractor1"]
    assert frame.shape == (8, 512)


def test_joblib_round_trip_is_identical(fitted, images, tmp_path):
    path = tmp_path / "extractor.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(images), fitted.transform(images))


def test_clone_and_params(fitted):
    params = fitted.get_params()
    assert params["model"] == "resnet18" and params["weights"] is None
    unfitted = clone(fitted)
    assert not hasattr(unfitted, "backbone_")
    assert unfitted.set_params(pooling="max").pooling == "max"


def test_grid_search_with_two_jobs(images, labels):
    # On the CPU: the workers' embeddings match the reference below at atol=1e-5.
    extractor = CNNFeatureExtractor("mobilenet_v3_small", weights=None, device="cpu")
    pipe = Pipeline([("cnn", extractor), ("svm", SVC())])
    grid = [0.1, 10.0]
    search = GridSearchCV(pipe, {"svm__C": grid}, cv=2, n_jobs=2).fit(images, labels)
    # The reference: embed once (fit learns nothing from the data), then the same
    # stratified folds as GridSearchCV's cv=2, in this process.
    Z = clone(extractor).fit_transform(images)
    folds = list(StratifiedKFold(2).split(Z, labels))
    means = []
    for C in grid:
        scores = [
            SVC(C=C).fit(Z[train], labels[train]).score(Z[test], labels[test])
            for train, test in folds
        ]
        means.append(np.mean(scores))
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], means)
    assert search.best_params_ == {"svm__C": grid[int(np.argmax(means))]}


@pytest.mark.parametrize("column", [["path"], "path"])
def test_column_transformer_with_a_path_column(fitted, jpeg_paths, column):
    """ColumnTransformer passes a one-column DataFrame for ``["path"]`` and a
    Series for ``"path"``: both are read as paths, next to tabular columns."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"path": jpeg_paths, "x": np.arange(8.0) - 2.5})
    extractor = clone(fitted)  # float32: compared with fitted's at atol=1e-5
    columns = ColumnTransformer(
        [("img", extractor, column), ("num", "passthrough", ["x"])]
    )
    out = columns.fit_transform(frame)
    assert out.shape == (8, 512 + 1)
    np.testing.assert_allclose(out[:, :512], fitted.transform(jpeg_paths), atol=1e-5)
    np.testing.assert_array_equal(out[:, 512], frame["x"])
    np.testing.assert_array_equal(columns.transform(frame.iloc[::-1]), out[::-1])


def test_one_column_of_paths(fitted, jpeg_paths):
    pd = pytest.importorskip("pandas")
    expected = fitted.transform(jpeg_paths)
    frame = pd.DataFrame({"path": jpeg_paths, "x": np.arange(8.0)})
    for column in (
        frame[["path"]],  # a one-column DataFrame
        np.array(jpeg_paths, dtype=object)[:, None],  # (n, 1) object array
        np.array(jpeg_paths)[:, None],  # (n, 1) str array
        np.array([Path(p) for p in jpeg_paths], dtype=object)[:, None],
    ):
        np.testing.assert_array_equal(fitted.transform(column), expected)
    # A table is still not an image batch, with or without a path column.
    with pytest.raises(InvalidImageError, match="got dtype object"):
        fitted.transform(frame)
    with pytest.raises(InvalidImageError, match="got dtype object"):
        fitted.transform(np.array([[1.5], [2.5]], dtype=object))


def test_progress_bar_is_shown(fitted, images, capsys):
    clone(fitted).set_params(progress=True).fit(images).transform(images)
    assert "Embedding (resnet18)" in capsys.readouterr().err


def test_refits_share_one_read_only_module(images):
    # device="cpu": exact equality, and on CUDA transform moves a private copy
    a = CNNFeatureExtractor("resnet18", weights=None, device="cpu").fit(images)
    b = clone(a).set_params(layer="layer3").fit(images)
    assert a.backbone_ is not b.backbone_
    assert a.backbone_.module is b.backbone_.module  # no rebuild, no copy
    np.testing.assert_array_equal(
        a.transform(images), clone(a).fit(images).transform(images)
    )
    assert b.transform(images).shape == (8, 256)  # its own tap on the same module


def test_cuda_device_without_cuda_is_a_clear_error(images):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        CNNFeatureExtractor("resnet18", weights=None, device="cuda").fit(images)
    with pytest.raises(ValueError, match="Invalid device 'gpu0'"):
        CNNFeatureExtractor("resnet18", weights=None, device="gpu0").fit(images)


def test_transform_is_thread_safe(fitted, images):
    """Concurrent transforms on one fitted extractor (joblib threads, servers)."""
    from concurrent.futures import ThreadPoolExecutor

    expected = fitted.transform(images)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: fitted.transform(images), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-5)


def test_mirrored_array_views_are_taken(images):
    """Negative strides (``X[:, :, ::-1]``) are copied, not refused by torch."""
    extractor = CNNFeatureExtractor("resnet18", weights=None, device="cpu").fit(images)
    mirrored = images[:, :, ::-1]
    np.testing.assert_array_equal(
        extractor.transform(mirrored), extractor.transform(mirrored.copy())
    )
