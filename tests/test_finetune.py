"""FineTuneClassifier: labels, freezing, BatchNorm policy, optimizer, skorch params."""

from __future__ import annotations

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from skorch.callbacks import Callback
from skorch.dataset import ValidSplit
from torch.nn.modules.batchnorm import _BatchNorm

from sktransfer import FineTuneClassifier, InvalidImageError, UnknownBackboneError
from sktransfer._backbones import build_backbone

TINY = "mobilenet_v3_small"  # the fastest torchvision backbone on a CPU


def tiny(**params) -> FineTuneClassifier:
    defaults = dict(
        weights=None,
        max_epochs=1,
        head_epochs=1,
        batch_size=4,
        random_state=0,
        image_size=64,
    )
    return FineTuneClassifier(TINY, **{**defaults, **params})


@pytest.fixture(scope="module")
def fitted():
    """A fitted tiny classifier (string labels) shared by read-only tests.

    On the CPU: its tests compare predictions exactly or at atol=1e-6, and with
    a copy restored on the CPU.
    """
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    X[4:, :, :16] = 255
    y = np.array(["cat"] * 4 + ["dog"] * 4)
    return tiny(device="cpu").fit(X, y), X, y


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _under(name: str, entries) -> bool:
    return any(name == e or name.startswith(e + ".") for e in entries)


def _last_linear(clf) -> torch.nn.Linear:
    """The new head's output layer."""
    head = clf.module_.get_submodule(clf.head_)
    return head[-1] if isinstance(head, torch.nn.Sequential) else head


# ------------------------------------------------------------- basic contract
def test_string_labels_classes_predict_proba(fitted):
    clf, X, y = fitted
    assert clf.classes_.tolist() == ["cat", "dog"]
    assert set(clf.predict(X)) <= {"cat", "dog"}
    proba = clf.predict_proba(X)
    assert proba.shape == (8, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # score is the accuracy of the most probable class.
    assert clf.score(X, y) == accuracy_score(y, clf.classes_[proba.argmax(axis=1)])
    # one image or a batch: the same probabilities (eval mode)
    np.testing.assert_allclose(clf.predict_proba(X[:1]), proba[:1], atol=1e-6)


def test_integer_and_given_classes(images):
    y = np.array([7, 3, 7, 3, 7, 3, 7, 3])
    clf = tiny(classes=[7, 3], max_epochs=0).fit(images, y)
    assert clf.classes_.tolist() == [7, 3]
    assert set(clf.predict(images)) <= {3, 7}


def test_paths_pil_and_images_of_different_sizes(tmp_path, jpeg_paths, labels):
    clf = tiny(device="cpu").fit(jpeg_paths, labels)  # compared at atol=1e-6
    pil = [Image.open(p).convert("RGB") for p in jpeg_paths[:3]]
    np.testing.assert_allclose(
        clf.predict_proba(pil), clf.predict_proba(jpeg_paths[:3]), atol=1e-6
    )
    sizes = [(30, 40), (48, 32), (36, 36), (50, 20)]
    paths = []
    for i, (h, w) in enumerate(sizes * 2):
        path = tmp_path / f"odd_{i}.png"
        Image.fromarray(np.full((h, w, 3), 30 * i, np.uint8)).save(path)
        paths.append(str(path))
    clf = tiny().fit(paths, labels)
    assert clf.predict(paths).shape == (8,)


def test_random_state_reproducible_and_global_rng_untouched(images, labels):
    def fitted_state(seed):  # on the CPU: bit-identical reruns
        clf = tiny(random_state=seed, frozen_layers=4, device="cpu")
        return _state(clf.fit(images, labels).module_)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = fitted_state(3)
    assert torch.equal(torch.get_rng_state(), before)
    b = fitted_state(3)
    c = fitted_state(4)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(a[name], c[name]) for name in a)


# ------------------------------------------------------------------ freezing
class _AtStart(Callback):
    """The network's state when training begins (pretrained body, new head)."""

    def on_train_begin(self, net, **kwargs):
        self.state_ = _state(net.module_)


@pytest.mark.parametrize("model, k", [("resnet18", 2), (TINY, 3)])
def test_frozen_groups_bit_identical_and_next_group_trains(model, k, images, labels):
    pretrained = build_backbone(model, weights=None)
    reference = _state(pretrained.module)
    start = _AtStart()
    clf = FineTuneClassifier(
        model,
        weights=None,
        frozen_layers=k,
        max_epochs=1,
        batch_size=4,
        lr=1e-2,
        random_state=0,
        image_size=64,
        callbacks=[start],
        device="cpu",  # bit-identical to the CPU-built reference
    ).fit(images, labels)
    after = _state(clf.module_)
    frozen = [e for group in pretrained.groups[:k] for e in group]
    frozen_names = [n for n in reference if _under(n, frozen)]
    assert any(n.endswith("running_mean") for n in frozen_names)  # BN buffers too
    for name in frozen_names:
        assert torch.equal(after[name], reference[name]), name
    trained = pretrained.groups[k]
    assert any(
        not torch.equal(after[n], reference[n])
        for n, _ in pretrained.module.named_parameters()
        if _under(n, trained)
    )
    head = [n for n in after if _under(n, [clf.head_])]
    assert head and any(not torch.equal(after[n], start.state_[n]) for n in head)
    assert clf.n_frozen_groups_ == k
    # frozen parameters are outside the optimizer, every other one is inside it
    in_optimizer = {id(p) for g in clf.optimizer_.param_groups for p in g["params"]}
    for name, param in clf.module_.named_parameters():
        assert (id(param) in in_optimizer) == (not _under(name, frozen)), name
        assert param.requires_grad == (not _under(name, frozen)), name


def test_all_frozen_trains_only_the_head(images, labels):
    pretrained = build_backbone(TINY, weights=None)
    reference = _state(pretrained.module)
    # device="cpu": bit-identical to the CPU-built reference
    clf = tiny(frozen_layers="all", lr=1e-2, device="cpu").fit(images, labels)
    after = _state(clf.module_)
    for name, value in reference.items():
        if not _under(name, [clf.head_]):
            assert torch.equal(after[name], value), name
    trainable = [n for n, p in clf.module_.named_parameters() if p.requires_grad]
    assert trainable and all(_under(n, [clf.head_]) for n in trainable)
    assert _last_linear(clf).out_features == 2


class _RecordModes(Callback):
    """Records the training flag of every BatchNorm layer at each training
    batch of the unfrozen groups' phase."""

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training and net.history[-1, "phase"] == "train":  # the step's modes
            self.modes_.append(
                {
                    n: m.training
                    for n, m in net.module_.named_modules()
                    if isinstance(m, _BatchNorm)
                }
            )

    def initialize(self):
        self.modes_ = []
        return self


@pytest.mark.parametrize("bn", ["frozen", "eval", "train"])
def test_batchnorm_policy_every_epoch(bn, images, labels):
    recorder = _RecordModes()
    clf = tiny(frozen_layers=2, bn=bn, max_epochs=2, batch_size=8, callbacks=[recorder])
    clf.fit(images, labels)
    frozen = [e for group in clf.layer_groups_[:2] for e in group]
    assert len(recorder.modes_) == 2  # 2 epochs x 1 batch
    for modes in recorder.modes_:
        for name, training in modes.items():
            if _under(name, frozen):
                assert training == (bn == "train"), name
            else:
                assert training == (bn != "eval"), name


def test_discriminative_learning_rates(images, labels):
    clf = tiny(frozen_layers=4, lr=0.02, backbone_lr_ratio=0.25, max_epochs=0)
    clf.fit(images, labels)
    head = {id(p) for p in clf.module_.get_submodule(clf.head_).parameters()}
    lrs = {}
    for group in clf.optimizer_.param_groups:
        kind = "head" if all(id(p) in head for p in group["params"]) else "backbone"
        lrs[kind] = group["lr"]
    assert lrs == {"head": pytest.approx(0.02), "backbone": pytest.approx(0.005)}


# ------------------------------------------------------------ frozen prefix
def test_frozen_prefix_computed_once_matches_uncached(images, labels):
    params = dict(frozen_layers=3, augment=False, max_epochs=2, lr=1e-2, image_size=64)
    params |= dict(head_epochs=2)
    start = _AtStart()
    cached = FineTuneClassifier(
        "resnet18", weights=None, batch_size=4, random_state=0, device="cpu", **params
    )  # on the CPU: the two runs agree to atol=1e-5
    cached.set_params(callbacks=[start]).fit(images, labels)
    plain = clone(cached).set_params(cache_frozen=False).fit(images, labels)
    assert cached.prefix_cached_ and not plain.prefix_cached_
    np.testing.assert_allclose(
        cached.predict_proba(images), plain.predict_proba(images), atol=1e-5
    )
    a, b = _state(cached.module_), _state(plain.module_)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    assert not torch.equal(a["fc.5.weight"], start.state_["fc.5.weight"])  # trained
    assert not torch.equal(
        a["layer4.1.conv2.weight"], start.state_["layer4.1.conv2.weight"]
    )


def test_large_prefix_goes_to_a_temporary_file(images, labels, monkeypatch, tmp_path):
    params = dict(frozen_layers=2, augment=False, device="cpu")  # bit-identical runs
    in_memory = _state(tiny(**params).fit(images, labels).module_)
    monkeypatch.setattr("sktransfer._finetune.rows.MEMORY_LIMIT_BYTES", 0)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    seen = []

    class Look(Callback):
        def on_epoch_begin(self, net, **kwargs):
            seen.extend(type(rows.data) for rows in net._fit_data.rows.values())

    clf = tiny(**params, callbacks=[Look()]).fit(images, labels)
    assert clf.prefix_cached_
    assert seen and set(seen) == {np.memmap}
    assert list(tmp_path.iterdir()) == []  # none left (unlinked at once)
    on_disk = _state(clf.module_)
    assert all(torch.equal(in_memory[name], on_disk[name]) for name in in_memory)


def test_prefix_computed_once_unless_random_augmentation(images, labels):
    def cached(**params):
        return tiny(max_epochs=0, **params).fit(images, labels).prefix_cached_

    assert cached(frozen_layers="all")  # augment=True: fixed views
    assert cached(frozen_layers=2, augment="flip")
    assert cached(frozen_layers="all", augment=False)
    assert not cached(frozen_layers="all", augment="random")
    assert not cached(frozen_layers=2, augment=lambda image: image)
    assert not cached(frozen_layers=0, augment=False)
    assert not cached(frozen_layers=2, augment=False, bn="train")
    assert not cached(frozen_layers=2, cache_frozen=False)


# ------------------------------------------------------------- augmentation
def test_custom_augmentation_only_on_training_batches(images, labels):
    seen = []

    def augment(image):
        seen.append(tuple(image.shape))
        return image.flip(-1)

    clf = tiny(augment=augment).fit(images, labels)
    assert seen == [(3, 32, 32)] * 8  # 1 epoch x 8 training images
    clf.predict_proba(images)
    assert len(seen) == 8  # never at predict time


def test_default_augmentation_changes_training_only(images, labels):
    inputs = []
    # device="cpu": the network's inputs are compared with CPU tensors
    clf = tiny(
        augment="random",
        tta=False,
        head_epochs=0,
        train_split=ValidSplit(2, stratified=True),
        device="cpu",
    )
    clf.initialize_module = _hooked(clf.initialize_module, clf, inputs)
    clf.fit(images, labels)
    expected = clf.preprocessing_(torch.from_numpy(images).permute(0, 3, 1, 2))
    train = [x for x, training in inputs if training]
    evaluated = [x for x, training in inputs if not training]
    # 4 training images; 4 validation images, after the 4 training images
    # once more unaugmented, and mirrored (the head's standardisation
    # statistics, of both views)
    assert len(train) == 1 and len(evaluated) == 3
    assert train[0].shape == (4, 3, 64, 64)  # image_size=64
    views = torch.cat([expected, expected.flip(-1)])
    assert not any(torch.allclose(row, ref) for row in train[0] for ref in views)
    assert all(
        any(torch.allclose(row, ref) for ref in views)
        for batch in evaluated
        for row in batch
    )
    inputs.clear()
    clf.predict_proba(images)
    assert len(inputs) == 2 and not any(training for _, training in inputs)
    torch.testing.assert_close(torch.cat([x for x, _ in inputs]), expected)


def _hooked(initialize_module, clf, records, output=False):
    """Wrap initialize_module: record the network's inputs (or outputs) and mode."""

    def wrapper():
        initialize_module()
        if output:
            clf.module_.register_forward_hook(
                lambda module, args, out: records.append((out, module.training))
            )
        else:
            clf.module_.register_forward_pre_hook(
                lambda module, args: records.append((args[0].clone(), module.training))
            )
        return clf

    return wrapper


# ------------------------------------------------------------- aux heads
@pytest.mark.parametrize(
    "model, heads",
    [("googlenet", ("aux1.fc2", "aux2.fc2")), ("inception_v3", ("AuxLogits.fc",))],
)
def test_aux_heads_train_and_main_head_predicts(model, heads, tmp_path):
    X = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    y = np.array(["a", "b"])
    outputs = []
    weights = None
    if model == "googlenet":  # a local weights file: "pretrained" weights
        weights = tmp_path / "googlenet.pth"
        module = build_backbone(model, None, aux_logits=True).module
        torch.save(module.state_dict(), weights)
    clf = FineTuneClassifier(
        model,
        weights=weights,
        frozen_layers=2,
        max_epochs=1,
        batch_size=2,
        random_state=0,
        tta=False,
        cache_frozen=False,  # the whole network runs in training
        device="cpu",  # the recorded outputs are read with .numpy()
        head_epochs=0,  # no head-only twin (a clone: it would carry the hook)
    )
    clf.initialize_module = _hooked(clf.initialize_module, clf, outputs, output=True)
    if model == "googlenet":
        with pytest.warns(UserWarning, match="no pretrained auxiliary heads"):
            clf.fit(X, y)
    else:
        clf.fit(X, y)
    assert clf.aux_heads_ == heads
    for head in heads:
        assert clf.module_.get_submodule(head).out_features == 2
    train_outputs = [out for out, training in outputs if training]
    (train_out,) = train_outputs
    assert isinstance(train_out, tuple)
    assert [o.shape for o in train_out] == [(2, 2)] * (1 + len(heads))
    proba = clf.predict_proba(X)
    (eval_out, training) = outputs[-1]
    assert not training and isinstance(eval_out, torch.Tensor)  # main head only
    # raw outputs are bfloat16 under CPU autocast where precision="auto" means it
    logits = eval_out.float()
    np.testing.assert_allclose(proba, torch.softmax(logits, 1).numpy(), atol=1e-6)


def test_aux_heads_dropped_when_their_branch_is_frozen(images, labels):
    clf = FineTuneClassifier(
        "googlenet",
        weights=None,
        frozen_layers="all",
        max_epochs=1,
        batch_size=8,
        random_state=0,
        augment=False,
    ).fit(images, labels)
    assert clf.aux_heads_ == ()
    assert clf.module_.aux1 is None and clf.prefix_cached_


def test_aux_loss_weight_is_applied(images, labels):
    clf = FineTuneClassifier(
        "googlenet",
        weights=None,
        frozen_layers=2,
        aux_loss_weight=0.5,
        label_smoothing=0.0,
        device="cpu",
    )
    main, aux = torch.randn(4, 2), torch.randn(4, 2)
    clf.classes_inferred_ = np.array(["cat", "dog"])
    clf.class_index_ = {"cat": 0, "dog": 1}
    clf.aux_heads_ = ("aux1.fc2",)
    clf._initialize_criterion()
    y = np.array(["cat", "dog", "dog", "cat"])
    target = torch.tensor([0, 1, 1, 0])
    expected = torch.nn.functional.cross_entropy(main, target) + 0.5 * (
        torch.nn.functional.cross_entropy(aux, target)
    )
    loss = clf.get_loss((main, aux), y, training=True)
    torch.testing.assert_close(loss, expected)
    eval_loss = clf.get_loss(main, y, training=False)
    torch.testing.assert_close(
        eval_loss, torch.nn.functional.cross_entropy(main, target)
    )


# --------------------------------------------------- validation, early stop
def test_early_stopping_takes_numpy_booleans_and_integers():
    patience = [
        FineTuneClassifier(early_stopping=value)._patience()
        for value in (True, np.True_, False, np.False_, None, 3, np.int64(2))
    ]
    assert patience == [5, 5, None, None, None, 3, 2]


def test_stratified_validation_and_early_stopping_restores_best(images, labels):
    snapshots = {}
    valid_labels = []

    class Snap(Callback):
        def on_epoch_begin(self, net, dataset_valid=None, **kw):
            valid_labels.append(sorted(labels[dataset_valid.indices]))

        def on_epoch_end(self, net, **kw):
            snapshots[len(net.history)] = _state(net.module_)

    clf = tiny(
        frozen_layers=3,
        early_stopping=2,
        validation_fraction=0.25,
        max_epochs=8,
        lr=1e-3,
        head_epochs=0,
        callbacks=[Snap()],
        device="cpu",  # bit-identical restored weights
    ).fit(images, labels)
    assert valid_labels[0] == ["cat", "dog"]  # stratified: one of each
    history = clf.history[:, "valid_loss"]
    best_epoch = int(np.argmin(history)) + 1
    final = _state(clf.module_)
    for name, value in snapshots[best_epoch].items():
        assert torch.equal(final[name], value), name


def test_skorch_parameters_keep_working(images, labels):
    epochs, valid = [], []

    class Count(Callback):
        def on_epoch_begin(self, net, dataset_valid=None, **kw):
            valid.append(np.asarray(dataset_valid.indices))

        def on_epoch_end(self, net, **kw):
            epochs.append(len(net.history))

    clf = tiny(
        max_epochs=2,
        callbacks=[Count()],
        optimizer__weight_decay=0.123,
        iterator_train__batch_size=2,
        train_split=ValidSplit(2, stratified=True),
        device="cpu",  # valid_acc is recomputed below with predict
    ).fit(images, labels)
    assert epochs == [1, 2]
    assert clf.optimizer_.param_groups[0]["weight_decay"] == 0.123
    assert clf.history[-1, "train_batch_count"] == 2  # 4 training images / 2
    # skorch's valid_acc is the accuracy of the trained net on the held-out half.
    held_out = valid[-1]
    assert sorted(labels[held_out]) == ["cat", "cat", "dog", "dog"]  # stratified
    expected = accuracy_score(labels[held_out], clf.predict(images[held_out]))
    assert clf.history[-1, "valid_acc"] == pytest.approx(expected)
    clf.set_params(warm_start=True).fit(images, labels)
    assert len(clf.history) == 4


def test_clone_and_set_params():
    clf = FineTuneClassifier(
        "resnet18", weights=None, frozen_layers=2, lr=0.05, optimizer__momentum=0.9
    )
    twin = clone(clf)
    assert twin.get_params(deep=False).keys() == clf.get_params(deep=False).keys()
    assert twin.frozen_layers == 2 and twin.optimizer__momentum == 0.9
    assert "module" not in clf.get_params()
    assert repr(clf) == (
        "FineTuneClassifier('resnet18', weights=None, frozen_layers=2, lr=0.05, "
        "optimizer__momentum=0.9)"
    )
    shuffled = FineTuneClassifier(iterator_train__shuffle=1)  # not the default True
    assert repr(shuffled) == "FineTuneClassifier('resnet18', iterator_train__shuffle=1)"
    twin.set_params(frozen_layers="all", bn="eval")
    assert (twin.frozen_layers, twin.bn, clf.frozen_layers) == ("all", "eval", 2)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    assert clone(FineTuneClassifier(module)).model is not module


def test_gridsearch_string_labels(images, labels):
    def model(**params):  # seeded, on the CPU: a worker's fit equals this one's
        return FineTuneClassifier(
            "resnet18", weights=None, max_epochs=1, batch_size=4, image_size=64,
            random_state=0, device="cpu", **params,
        )  # fmt: skip

    grid = [0, 2, "all"]
    search = GridSearchCV(model(), {"frozen_layers": grid}, cv=2, n_jobs=2)
    search.fit(images, labels)
    means = search.cv_results_["mean_test_score"]
    assert np.isfinite(means).all()  # no candidate failed in a worker
    assert search.best_params_ == {"frozen_layers": grid[int(np.argmax(means))]}
    # The workers' scores are those of the same fits in this process.
    best = search.best_index_
    splits = [search.cv_results_[f"split{i}_test_score"][best] for i in range(2)]
    expected = cross_val_score(model(**search.best_params_), images, labels, cv=2)
    np.testing.assert_allclose(splits, expected)
    assert set(search.classes_) == {"cat", "dog"}
    assert set(search.predict(images)) <= {"cat", "dog"}


# --------------------------------------------------------------- persistence
def test_joblib_round_trip_identical_predictions(fitted, tmp_path):
    clf, X, y = fitted
    path = tmp_path / "clf.joblib"
    joblib.dump(clf, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.device == "cpu"
    # device="auto" is pickled as "auto", not as the device it resolved to
    auto = tiny(max_epochs=0).fit(X, y)
    joblib.dump(auto, path)
    assert auto.device == joblib.load(path).device == "auto"


def test_model_saved_for_cuda_loads_on_cpu(fitted, tmp_path, monkeypatch):
    clf, X, _ = fitted
    expected = clf.predict_proba(X)
    state = clf.__getstate__()
    state["device"] = "cuda"  # as pickled by a net fitted with device="cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = FineTuneClassifier.__new__(FineTuneClassifier)
    with pytest.warns(UserWarning, match="CUDA|cuda"):
        restored.__setstate__(state)
    assert str(restored.device) == "cpu"
    np.testing.assert_array_equal(restored.predict_proba(X), expected)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "frozen_layers, error, match",
    [
        (6, ValueError, r"0\.\.5 or 'all' for 'resnet18'.*got 6"),
        (-1, ValueError, r"0\.\.5"),
        (1.5, TypeError, r"0\.\.5.*float"),
        (True, TypeError, r"0\.\.5.*bool"),
        ("some", ValueError, r"0\.\.5.*'some'"),
    ],
)
def test_frozen_layers_out_of_range_or_wrong_type(
    frozen_layers, error, match, images, labels
):
    clf = FineTuneClassifier("resnet18", weights=None, frozen_layers=frozen_layers)
    with pytest.raises(error, match=match):
        clf.fit(images, labels)


def test_bad_labels(images):
    clf = tiny()
    with pytest.raises(ValueError, match="at least 2 classes.*'cat'"):
        clf.fit(images, ["cat"] * 8)
    with pytest.raises(ValueError, match="8 images but y has 7 labels"):
        clf.fit(images, ["cat", "dog"] * 3 + ["cat"])
    with pytest.raises(
        ValueError, match=r"missing labels \(NaN/None\) at positions \[2\]"
    ):
        clf.fit(images, [0.0, 1.0, np.nan, 1.0, 0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"positions \[0, 5\]"):
        clf.fit(
            images, np.array([None, "a", "b", "a", "b", None, "a", "b"], dtype=object)
        )
    with pytest.raises(ValueError, match="needs labels y"):
        clf.fit(images, None)
    with pytest.raises(ValueError, match="not in classes="):
        tiny(classes=["cat", "dog"]).fit(images, ["cat", "cow"] * 4)


def test_bad_model_and_params(images, labels):
    with pytest.raises(UnknownBackboneError, match="Did you mean 'resnet18'"):
        FineTuneClassifier("resnet81", weights=None).fit(images, labels)
    with pytest.raises(ValueError, match="'bn' parameter"):
        tiny(bn="sometimes").fit(images, labels)
    with pytest.raises(ValueError, match="'backbone_lr_ratio' parameter"):
        tiny(backbone_lr_ratio=0).fit(images, labels)
    with pytest.raises(ValueError, match="'augment' parameter"):
        tiny(augment="yes").fit(images, labels)
    with pytest.raises(ValueError, match="validation_fraction=0.1 of 8 images = 1"):
        tiny(early_stopping=2).fit(images, labels)
    with pytest.raises(ValueError, match="needs held-out data"):
        tiny(early_stopping=2, validation_fraction=None).fit(images, labels)


def test_bad_images(fitted, images, labels, tmp_path):
    clf, X, _ = fitted
    with pytest.raises(InvalidImageError, match="2-D"):
        tiny().fit(images.reshape(8, -1), labels)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        tiny().fit([str(tmp_path / "missing.jpg")] * 8, labels)
    with pytest.raises(InvalidImageError, match="4 channel"):
        clf.predict(np.zeros((2, 32, 32, 4), np.uint8))
    with pytest.raises(NotFittedError):
        tiny().predict(X)


@pytest.mark.parametrize(
    "model",
    ["alexnet", "vgg11_bn", "squeezenet1_0", "densenet121", "mobilenet_v2",
     "efficientnet_lite0", "timm/resnet18"],
)  # fmt: skip
def test_head_replaced_and_groups_frozen_for_every_family(model, images, labels):
    clf = FineTuneClassifier(
        model, weights=None, frozen_layers=1, max_epochs=1, batch_size=8,
        image_size=64, random_state=0,
    ).fit(images[:4], labels[2:6])  # fmt: skip
    head = _last_linear(clf)
    assert getattr(head, "out_features", getattr(head, "out_channels", None)) == 2
    first = clf.layer_groups_[0]
    for name, param in clf.module_.named_parameters():
        assert param.requires_grad == (not _under(name, first)), name
    grouped = [e for group in clf.layer_groups_ for e in group]
    ungrouped = [
        n for n, _ in clf.module_.named_parameters()
        if not _under(n, grouped) and not _under(n, [clf.head_])
    ]  # fmt: skip
    assert ungrouped == []  # every backbone parameter belongs to a group
    proba = clf.predict_proba(images[:3])
    assert proba.shape == (3, 2)
