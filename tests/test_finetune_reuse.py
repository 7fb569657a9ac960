"""What FineTuneClassifier computes once and keeps never changes a result.

The recipe is set by the parameters alone; running the network from the
stored output of what stays fixed (a cut) and keeping those outputs across
fits (the store) only make it faster. Each test pins a way in which reuse
once went wrong: a network the shortcut cannot follow, weights or images
that the store's keys missed, fits beside each other in threads, another
fit in the process, and the head's phase that skorch could not see.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
import subprocess
import sys
import threading
import time
import types
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import sklearn
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback, LRScheduler
from torch import nn
from torch.nn import functional as F

from sktransfer import (
    CNNFeatureExtractor,
    FineTuneClassifier,
    _builders,
    _cache,
    _families,
    _tap,
)
from sktransfer._devices import float32_grouped_convolutions
from sktransfer._finetune import cut as _cut
from sktransfer._finetune import fingerprint as _fp
from sktransfer._finetune import rows as _rows
from sktransfer._groups import children_groups
from sktransfer._images import check_images
from sktransfer._randomness import FitRandomness

TINY = "mobilenet_v3_small"


def tiny(**params) -> FineTuneClassifier:
    defaults = dict(
        model=TINY,
        weights=None,
        max_epochs=1,
        head_epochs=1,
        batch_size=4,
        random_state=0,
        image_size=64,
        precision="float32",  # results compared across paths
        device="cpu",  # exact comparisons with CPU references
    )
    return FineTuneClassifier(**{**defaults, **params})


@pytest.fixture
def computed(monkeypatch):
    """How many images go through the network from their pixels, per call."""
    counts = []
    original = _rows._from_images

    def counting(rows, cut, images, missing, *args, **kwargs):
        counts.append(len(missing))
        return original(rows, cut, images, missing, *args, **kwargs)

    monkeypatch.setattr(_rows, "_from_images", counting)
    return counts


class _Fits(Callback):
    """Counts the fits that train (an estimator fitted inside a fit would)."""

    count = 0

    def on_train_begin(self, net, **kwargs):
        type(self).count += 1


def _same_as_whole(clf, images, labels, atol=1e-6):
    """``clf`` fitted gives what running the whole network in every step gives."""
    plain = clone(clf).set_params(cache_frozen=False).fit(images, labels)
    np.testing.assert_allclose(
        clf.predict_proba(images), plain.predict_proba(images), atol=atol
    )
    return plain


# ----------------------------------------------- networks the shortcut meets
class Plain(nn.Module):
    """A small network of the user's own: stem, body, classifier."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.body = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = self.body(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Branchy(Plain):
    """A forward that branches on values and asserts on its input: symbolic
    tracing (torch.fx) cannot follow it."""

    def forward(self, x):
        assert x.shape[1] == 3, "an RGB batch"
        x = self.stem(x)
        if x.mean() > -1e9:
            x = self.body(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Skipping(Plain):
    """The classifier reads an early layer's output too: no single stored
    output stands for what comes before the head."""

    def __init__(self):
        super().__init__(width=24)

    def forward(self, x):
        a = self.stem(x)
        b = self.body(a)
        pooled = [torch.flatten(F.adaptive_avg_pool2d(t, 1), 1) for t in (a, b)]
        return self.fc(torch.cat(pooled, dim=1))


_SCALE = torch.tensor(0.5)  # a module-level tensor constant


class Constant(Plain):
    def forward(self, x):
        x = self.body(self.stem(x) * _SCALE)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Pair(nn.Module):
    """Pooled features and a scaled copy, sequence first: (2, batch, features)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((16,), 2.0))

    def forward(self, x):
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return torch.stack([pooled, pooled * self.scale])


class SequenceFirst(Plain):
    """A fixed module's output is no batch: its first dimension is 2 (as
    many as the probe's training images) whatever the batch size."""

    def __init__(self):
        super().__init__()
        self.pair = Pair()

    def forward(self, x):
        return self.fc(self.pair(self.body(self.stem(x))).mean(0))


class Twice(Plain):
    """A fixed module runs twice."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        x = self.mix(self.mix(self.body(self.stem(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("frozen_layers", [1, "all"])
def test_an_untraceable_network_fits_once(frozen_layers, images, labels):
    _Fits.count = 0
    clf = tiny(model=Branchy(), frozen_layers=frozen_layers, callbacks=[_Fits()])
    clf.fit(images, labels)
    assert _Fits.count == 1  # no fit inside the fit
    assert clf.prefix_cached_ == (frozen_layers == 1)
    _same_as_whole(clf, images, labels)


def test_a_network_that_cannot_be_cut_runs_whole_with_one_warning(images, labels):
    clf = tiny(model=Skipping(), frozen_layers="all", max_epochs=2)
    with pytest.warns(UserWarning, match="the whole network runs") as caught:
        clf.fit(images, labels)
    assert len([w for w in caught if "whole network" in str(w.message)]) == 1
    assert not clf.prefix_cached_
    _same_as_whole(clf, images, labels)
    clf.set_params(frozen_layers=1).fit(images, labels)  # here it can be cut
    assert clf.prefix_cached_


@pytest.mark.parametrize("network", [SequenceFirst, Twice])
def test_the_cut_ends_before_a_fixed_module_that_gives_no_batch_or_runs_twice(
    network, images, labels
):
    clf = tiny(model=network(), frozen_layers="all")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf.fit(images, labels)  # a sequence first crashed storing rows
    assert not [w for w in caught if "whole network" in str(w.message)]
    assert clf._cut("train").boundary == "body"
    _same_as_whole(clf, images, labels)


@pytest.fixture
def constnet():
    family = _families.Family(
        "constant",
        lambda m: isinstance(m, Constant),
        children_groups,
        added_names=("constnet",),
        build=lambda name: Constant(),
    )
    _families.register_family(family)
    yield "constnet"
    _families.unregister_family(family)


def test_a_network_with_a_tensor_constant_fits_again(constnet, images, labels):
    first = tiny(model=constnet, frozen_layers=1).fit(images, labels)
    second = tiny(model=constnet, frozen_layers=1).fit(images, labels)
    assert first.prefix_cached_ and second.prefix_cached_
    np.testing.assert_array_equal(
        first.predict_proba(images), second.predict_proba(images)
    )
    _same_as_whole(second, images, labels)


def test_googlenet_with_and_without_auxiliary_heads(images, labels):
    params = dict(model="googlenet", image_size=64, max_epochs=1)
    with_aux = tiny(frozen_layers=2, aux_loss_weight=0.3, **params)
    with_aux.fit(images, labels)
    assert with_aux.aux_heads_ and with_aux.prefix_cached_
    _same_as_whole(with_aux, images, labels)
    without = tiny(frozen_layers=1, aux_loss_weight=0.0, **params).fit(images, labels)
    assert not without.aux_heads_ and without.prefix_cached_
    _same_as_whole(without, images, labels)


def test_a_timm_model(images, labels):
    clf = tiny(model="timm/resnet18", frozen_layers=3).fit(images, labels)
    assert clf.prefix_cached_
    _same_as_whole(clf, images, labels)


def test_a_plan_is_probed_once_per_network_structure(images, labels, monkeypatch):
    probes = []
    probe = _cut._probe
    monkeypatch.setattr(_cut, "_probe", lambda *a: probes.append(1) or probe(*a))
    monkeypatch.setattr(_cut, "_plans", type(_cut._plans)(max_items=64))
    first = tiny(frozen_layers=3, head_epochs=0).fit(images, labels)
    second = tiny(frozen_layers=3, head_epochs=0).fit(images, labels)
    assert len(probes) == 1  # another network of the same structure
    assert second._cut("train") is not first._cut("train")
    assert second._cut("train").module is second.module_
    np.testing.assert_array_equal(
        first.predict_proba(images), second.predict_proba(images)
    )
    tiny(frozen_layers=2, head_epochs=0).fit(images, labels)  # other parts train
    tiny(frozen_layers=3, head_epochs=0, image_size=48).fit(images, labels)
    tiny(frozen_layers=3, head_epochs=0, head_hidden=None).fit(images, labels)
    assert len(probes) == 4


@pytest.mark.parametrize("frozen_layers", [3, "all"])
def test_computed_once_or_in_every_step_alike(frozen_layers, images, labels):
    """``cache_frozen=False`` trains the same recipe (views, the head's
    phase, dropout) without the stored outputs: the same model."""
    clf = tiny(frozen_layers=frozen_layers, head_epochs=2, max_epochs=2)
    clf.fit(images, labels)
    plain = _same_as_whole(clf, images, labels)
    a, b = clf.module_.state_dict(), plain.module_.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)


def test_predictions_through_the_store_equal_the_whole_network(images, labels):
    clf = tiny(frozen_layers=3, max_epochs=1).fit(images, labels)
    stored = clf.predict_proba(images)
    unstored = clf.set_params(cache=None).predict_proba(images)
    whole = clf.set_params(cache_frozen=False).predict_proba(images)
    np.testing.assert_allclose(stored, whole, atol=1e-6)
    np.testing.assert_allclose(unstored, whole, atol=1e-6)


def test_a_prediction_finds_its_rows_namespace_once(images, labels, monkeypatch):
    """Not once per batch: it walks every skipped module; and a later
    prediction, after the weights changed, finds it again."""
    clf = tiny(frozen_layers=3, max_epochs=1).fit(images, labels)
    found = []
    namespace = _rows.namespace
    monkeypatch.setattr(
        _rows, "namespace", lambda *a: found.append(namespace(*a)) or found[-1]
    )
    clf.set_params(batch_size=2).predict_proba(images)
    assert len(found) == 1 and len(images) > 2
    with torch.no_grad():
        next(clf.module_.get_submodule(clf.frozen_modules_[0]).parameters()).mul_(2)
    after = clf.predict_proba(images)
    assert len(found) == 2 and found[1] != found[0]
    whole = clf.set_params(cache_frozen=False).predict_proba(images)
    np.testing.assert_allclose(after, whole, atol=1e-6)


# ------------------------------------------------------ what keys the store
def test_a_checkpoint_gets_its_own_rows(tmp_path, images, labels):
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"checkpoint_{seed}.pth"
        torch.save(Plain().state_dict(), path)
        paths.append(str(path))
    model = Plain()
    for path in paths:  # the second must not be served the first's rows
        clf = tiny(model=model, weights=path, frozen_layers=1).fit(images, labels)
        alone = clone(clf).set_params(cache=None).fit(images, labels)
        np.testing.assert_array_equal(
            clf.predict_proba(images), alone.predict_proba(images)
        )


def _palette_image(palette: list[int]) -> Image.Image:
    image = Image.fromarray((np.arange(32 * 48) % 4).astype(np.uint8).reshape(32, 48))
    image = image.convert("P")
    image.putpalette(palette)
    return image


def _upright(orientation: int | None) -> Image.Image:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    if orientation is not None:
        image.getexif()[0x0112] = orientation  # EXIF orientation
    return image


def test_image_keys_cover_what_decoding_reads():
    palettes = [_palette_image([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)]
    palettes.append(_palette_image([255, 255, 255, 9, 9, 9, 90, 90, 90, 0, 0, 0] * 64))
    oriented = [_upright(None), _upright(6)]
    for pair in (palettes, oriented):
        keys = _cache.image_keys(check_images(pair))
        assert keys[0] != keys[1]
        extractor = CNNFeatureExtractor(TINY, weights=None, device="cpu").fit(pair)
        first, second = extractor.transform(pair[:1]), extractor.transform(pair[1:])
        assert not np.allclose(first, second, rtol=1e-3, atol=0)
        unstored = extractor.set_params(cache=None).transform(pair[1:])
        np.testing.assert_array_equal(second, unstored)


def test_store_keys_on_what_changes_the_outputs(images, labels, computed):
    def fit(**params):
        tiny(**{"frozen_layers": "all", **params}).fit(images, labels)

    fit()
    fit(lr=0.5, head_hidden=None, max_epochs=2)  # the head's settings: a hit
    assert sum(computed) == 8
    fit(image_size=48)  # other input size
    fit(frozen_layers=3, head_epochs=0)  # other cut point
    fit(precision="bfloat16")  # other precision
    fit(model=Branchy(), frozen_layers=1, head_epochs=0)  # other network
    assert sum(computed) == 5 * 8


def test_disk_store_shared_and_damaged_rows_recomputed(
    images, labels, tmp_path, computed
):
    store = tmp_path / "frozen"
    first = tiny(frozen_layers="all", cache=store).fit(images, labels)
    # the fit's cut, and the one a group earlier (stored on the way): 8
    # images x 2 views each
    spaces = {
        np.load(next(space.rglob("*.npy"))).ndim: space for space in store.iterdir()
    }
    assert sorted(spaces) == [1, 3]  # embeddings; feature maps
    assert [len(list(space.rglob("*.npy"))) for space in spaces.values()] == [16, 16]
    damaged = sorted(spaces[1].rglob("*.npy"))[0]  # an embedding: from the maps
    np.save(damaged, np.full(np.load(damaged).shape, np.nan, np.float32))
    again = clone(first).fit(images, labels)
    assert computed == [8]
    assert np.isfinite(np.load(damaged)).all()
    relative = damaged.relative_to(spaces[1])
    for space in spaces.values():  # that image's maps too: from the pixels
        damaged = space / relative
        np.save(damaged, np.full(np.load(damaged).shape, np.nan, np.float32))
    again = clone(first).fit(images, labels)
    assert computed == [8, 1]  # only the damaged image
    np.testing.assert_allclose(  # (its row alone in a batch: the last bits)
        again.predict_proba(images), first.predict_proba(images), atol=1e-6
    )


def test_no_store_with_cache_none(images, labels, computed):
    tiny(frozen_layers="all", cache=None).fit(images, labels)
    tiny(frozen_layers="all", cache=None).fit(images, labels)
    assert computed == [8, 8]
    assert _rows.resolve_store("memory").nbytes == 0


@pytest.mark.parametrize("cuts, from_pixels", [(["all", 3], 16), ([3, "all"], 8)])
def test_grid_search_computes_each_image_once_per_cut_point(
    cuts, from_pixels, images, labels, computed
):
    """Per cut point each image once (a fold's test images were the other
    fold's training images; other rates and the refit find them). The head
    trains alone on the same stored outputs as a head-only candidate: the
    top group's candidates compute those from their own, when they come
    first."""
    search = GridSearchCV(
        tiny(max_epochs=1), {"frozen_layers": cuts, "lr": [1e-3, 1e-2]}, cv=2
    ).fit(images, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert sum(computed) == from_pixels


@pytest.mark.parametrize("cuts", [["all", 5], [5, "all"]])
def test_neighbouring_cut_points_share_the_frozen_work(cuts, images, labels, computed):
    """``"all"`` (6 groups) and the top group's cut: the head's outputs are
    computed through the top group's input, which is stored on the way, or
    from it; each image goes through the frozen part once, in either order."""
    grid = {"frozen_layers": cuts, "lr": [1e-3, 1e-2]}
    search = GridSearchCV(tiny(max_epochs=1), grid, cv=2).fit(images, labels)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert sum(computed) == len(images)


def test_rows_on_the_way_are_kept_within_a_bound(images, labels, computed, monkeypatch):
    monkeypatch.setattr(_rows, "LOWER_BYTES", 0)
    for cut in ("all", 5):
        tiny(frozen_layers=cut).fit(images, labels)
    assert sum(computed) == 2 * len(images)


# ------------------------------------------------------ reproducible fits
def test_fits_beside_each_other_in_threads_are_reproducible(images, labels):
    def fit(seed):  # dropout in the trained part and in the head
        clf = tiny(frozen_layers=3, head_epochs=2, max_epochs=2, random_state=seed)
        clf.fit(images, labels)
        head = clf.module_.get_submodule(clf.head_)
        return torch.cat([p.detach().flatten() for p in head.parameters()]).numpy()

    alone = {seed: fit(seed) for seed in (1, 2)}
    assert not np.array_equal(alone[1], alone[2])
    with ThreadPoolExecutor(2) as pool:
        for _ in range(2):
            together = dict(zip((1, 2), pool.map(fit, (1, 2)), strict=True))
            for seed in (1, 2):
                np.testing.assert_array_equal(together[seed], alone[seed])


def test_other_fits_in_the_process_change_nothing(images, labels, monkeypatch):
    """No process-wide memory (of heads, traced graphs, ...) changes what a
    fit does: after a grid search's other candidates, it trains the same
    way (no estimator fitted in it, none skipped) to the same model, bit for
    bit."""
    fits = []
    fit_method = FineTuneClassifier.fit
    monkeypatch.setattr(
        FineTuneClassifier, "fit", lambda *a, **k: fits.append(1) or fit_method(*a, **k)
    )
    weights = np.array([1, 1, 1, 3, 1, 1, 7, 1]) / 7  # renormalised inexactly

    def fit(**params):
        fits.clear()
        clf = tiny(frozen_layers=3, head_epochs=3, max_epochs=1, **params)
        clf.fit(images, labels, sample_weight=weights)
        assert len(fits) == 1 and clf.history[:, "phase"].count("head") == 3
        return clf.predict_proba(images)

    alone = fit()
    tiny(frozen_layers="all", max_epochs=3).fit(images, labels, sample_weight=weights)
    tiny(frozen_layers=2).fit(images, labels)
    np.testing.assert_array_equal(fit(), alone)
    np.testing.assert_array_equal(fit(cache=None), alone)


# ---------------------------------------------------------- skorch's contract
def test_dataset_and_predict_nonlinearity_are_refused(images, labels):
    with pytest.raises(ValueError, match=r"dataset=.*not supported"):
        tiny(dataset=torch.utils.data.TensorDataset).fit(images, labels)
    with pytest.raises(ValueError, match=r"dataset__\* are not supported"):
        tiny(dataset__length=8).fit(images, labels)
    with pytest.raises(ValueError, match="predict_nonlinearity=None is not supported"):
        tiny(predict_nonlinearity=None).fit(images, labels)


class _Rates(Callback):
    def initialize(self):
        self.rates_ = []
        return self

    def on_batch_begin(self, net, training=False, **kwargs):
        if training:
            self.rates_.append(net.optimizer_.param_groups[0]["lr"])


def test_a_users_lr_scheduler_sets_the_rates(images, labels):
    rates = _Rates()
    step = LRScheduler(policy="StepLR", step_size=1, gamma=0.5)
    tiny(frozen_layers="all", max_epochs=3, lr=0.1, callbacks=[step, rates]).fit(
        images, labels
    )
    assert rates.rates_ == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_sample_weight_is_routed_through_a_pipeline(images, labels):
    weights = np.r_[np.ones(4), np.full(4, 3.0)]
    direct = tiny(frozen_layers="all").fit(images, labels, sample_weight=weights)
    with sklearn.config_context(enable_metadata_routing=True):
        clf = tiny(frozen_layers="all").set_fit_request(sample_weight=True)
        pipe = Pipeline([("clf", clf)]).fit(images, labels, sample_weight=weights)
    np.testing.assert_array_equal(
        pipe.predict_proba(images), direct.predict_proba(images)
    )


def test_private_state_is_no_parameter(images, labels):
    clf = tiny(frozen_layers=3).fit(images, labels)
    assert set(clf.get_params()) == set(tiny().get_params())


# ------------------------------------------------- threads and processes
@contextlib.contextmanager
def _held_in_thread_a(module, target, arg, when=lambda m: True):
    """Thread A runs ``target(arg)`` and stops as it enters ``module`` (where
    ``when(module)``) until the caller sets the event yielded."""
    inside, go = threading.Event(), threading.Event()

    def hold(m, args):
        if threading.current_thread().name == "A" and when(m):
            inside.set()
            go.wait(10)

    handle = module.register_forward_pre_hook(hold)
    a = threading.Thread(target=target, args=(arg,), name="A")
    a.start()
    try:
        assert inside.wait(10)
        yield go
    finally:
        go.set()
        a.join()
        handle.remove()


def test_two_threads_predicting_with_one_estimator_run_their_own_network(
    images, labels
):
    """A cut replaces the skipped modules' forward while it runs: another
    thread's pass through the same network waits meanwhile instead of
    running through the replacements (and storing what they gave)."""
    clf = tiny(model=Plain(), frozen_layers="all", head_epochs=0, cache=None)
    clf.fit(images, labels)
    cut = clf._cut("train")
    batch = clf.preprocessing_(torch.from_numpy(images).permute(0, 3, 1, 2))
    expected = cut.rows(batch)
    head = clf.module_.get_submodule(clf.head_)
    with _held_in_thread_a(head, cut, torch.ones_like(expected)) as go:
        with ThreadPoolExecutor(1) as pool:
            rows = pool.submit(cut.rows, batch)
            time.sleep(0.3)  # without the lock it ran through A's stubs by now
            go.set()
            torch.testing.assert_close(rows.result(10), expected, rtol=0, atol=0)


def test_a_plan_made_while_another_thread_predicts(images, labels):
    """Planning a cut (as the first prediction after loading a model does)
    runs the network in its training modes: a prediction in another thread
    waits for it, instead of switching modes under the probe (which then
    found no cut) or running in the probe's modes."""
    clf = tiny(frozen_layers=3, head_epochs=0).fit(images, labels)
    expected = clf.predict_proba(images)
    clf.__dict__.pop("_cuts")  # planned again, as after unpickling
    _cut._plans.clear()  # and probed again
    dropout = next(m for m in clf.module_.modules() if isinstance(m, nn.Dropout))
    training = lambda m: m.training  # noqa: E731  (A stops inside its probe)
    with _held_in_thread_a(dropout, clf._cut, "train", when=training) as go:
        with ThreadPoolExecutor(1) as pool:
            proba = pool.submit(clf.predict_proba, images)
            time.sleep(0.3)  # without the lock it ran in A's modes by now
            go.set()
            np.testing.assert_allclose(proba.result(10), expected, atol=1e-6)
    assert clf._cut("train") is not None  # A's plan, unharmed
    np.testing.assert_allclose(clf.predict_proba(images), expected, atol=1e-6)


def test_loader_workers_forked_after_a_fit_do_not_hang(tmp_path):
    """Files decode in a thread pool of the batch's own: a forked DataLoader
    worker, after the parent decoded batches, does not wait on its threads."""
    out = _run_in_a_new_process(
        tmp_path,
        "import numpy as np\n"
        "from PIL import Image\n"
        "from sktransfer import FineTuneClassifier\n"
        "X = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)\n"
        f"paths = [f'{tmp_path}/{{i}}.png' for i in range(8)]\n"
        "for x, path in zip(X, paths): Image.fromarray(x).save(path)\n"
        "y = ['a', 'b'] * 4\n"
        "params = dict(weights=None, max_epochs=1, head_epochs=0, image_size=32,\n"
        "    cache_frozen=False, device='cpu')\n"
        "FineTuneClassifier('mobilenet_v3_small', **params).fit(paths, y)\n"
        "FineTuneClassifier('mobilenet_v3_small', **params,\n"
        "    iterator_train__num_workers=2).fit(paths, y)\n"
        "print('fitted')\n",
    )
    assert "fitted" in out


def test_loader_workers_forked_while_another_thread_runs_the_network(tmp_path):
    """A worker forked while another thread holds the network's lock (a
    prediction beside this one) gets a lock of its own, not a copy that
    stays held: it fetches the stored rows instead of waiting forever."""
    out = _run_in_a_new_process(
        tmp_path,
        "import threading, time\n"
        "import numpy as np\n"
        "from sktransfer import FineTuneClassifier\n"
        "from sktransfer._finetune.cut import module_lock\n"
        "X = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8)\n"
        "clf = FineTuneClassifier('mobilenet_v3_small', weights=None, max_epochs=1,\n"
        "    frozen_layers=3, image_size=64, device='cpu', precision='float32',\n"
        "    iterator_valid__num_workers=1, iterator_valid__timeout=20)\n"
        "expected = clf.fit(X, ['a', 'b'] * 4).predict_proba(X)  # rows stored\n"
        "def beside():\n"
        "    with module_lock(clf.module_):\n"
        "        held.set(); time.sleep(1)\n"
        "held = threading.Event()\n"
        "threading.Thread(target=beside).start(); held.wait()\n"
        "assert np.allclose(clf.predict_proba(X), expected, atol=1e-6)\n"
        "print('predicted')\n",
    )
    assert "predicted" in out


def _run_in_a_new_process(tmp_path, source: str) -> str:
    """What a script prints, run in a fresh interpreter (forking safely)."""
    script = tmp_path / "script.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_warm_start_follows_settings_changed_after_the_fit(images, labels):
    """Cuts and training modes are kept per the settings they depend on: a
    warm start after ``set_params(bn="train")`` trains the frozen groups'
    BatchNorm statistics, with a cut or without, as a fresh copy does."""

    def warm(clf):
        clf.set_params(bn="train").fit(images, labels)
        return {k: v.clone() for k, v in clf.module_.state_dict().items()}

    def fitted(cache_frozen):
        clf = tiny(frozen_layers=3, head_epochs=0, warm_start=True, lr=1e-4)
        return clf.set_params(cache_frozen=cache_frozen, cache=None).fit(images, labels)

    whole = fitted(False)
    copy = pickle.loads(pickle.dumps(whole))  # nothing kept from the first fit
    expected = warm(copy)
    cut = fitted(True)
    with pytest.warns(UserWarning, match="cannot run from the output"):
        from_cut = warm(cut)  # BatchNorm trains before the cut: none is kept
    for state in (warm(whole), from_cut):
        for name, tensor in expected.items():
            torch.testing.assert_close(state[name], tensor, atol=1e-6, rtol=0)


# ------------------------------------- what keys a plan and a cut's rows
class Shifted(Plain):
    """The root shifts its input by a buffer of its own, before the stem."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))

    def forward(self, x):
        x = self.body(self.stem(x - self.shift))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Scale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale), persistent=False)

    def forward(self, x):
        return x * self.scale


class Routed(Plain):
    """A private flag decides whether the stem's output reaches the head."""

    def __init__(self, skip: bool):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)
        self._skip = skip

    def forward(self, x):
        a = self.stem(x)
        b = self.body(a) + (a if self._skip else 0)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(b, 1), 1))


class Prescaled(Plain):
    """A module without parameters (in no layer group, left in training mode)
    runs before the stem."""

    def __init__(self, scale: float):
        super().__init__()
        self.pre = Scale(scale)

    def forward(self, x):
        return super().forward(self.pre(x))


class Act(nn.Module):
    """A setting that is a function: one of two lambdas of one name."""

    def __init__(self, scale: float):
        super().__init__()
        self.fn = (lambda x: x * 3.0) if scale else (lambda x: x)

    def forward(self, x):
        return self.fn(x)


def _prescaled(scale: float) -> Prescaled:
    torch.manual_seed(0)
    return Prescaled(scale)


def _acted(scale: float) -> Plain:
    torch.manual_seed(0)
    network = Plain()
    network.stem.append(Act(scale))
    return network


def _shifted(shift: float) -> Shifted:
    torch.manual_seed(0)
    network = Shifted()
    network.shift.fill_(shift)
    return network


def _scaled(scale: float) -> Plain:
    torch.manual_seed(0)
    network = Plain()
    network.stem.insert(0, Scale(scale))
    return network


@pytest.mark.parametrize(
    "make",
    [_shifted, _scaled, _prescaled, _acted],
    ids=["ancestor's buffer", "non-persistent buffer", "module before", "lambda"],
)
def test_rows_are_keyed_by_every_tensor_before_the_cut(make, images, labels):
    """Networks that differ only in a tensor of a module around the skipped
    ones, in a buffer that is not saved, in a module that runs before them,
    or in a function they hold, get rows of their own."""
    head_only = dict(frozen_layers="all", head_epochs=0)
    tiny(model=make(0.0), **head_only).fit(images, labels)  # rows in the store
    served = tiny(model=make(3.0), **head_only).fit(images, labels)
    alone = tiny(model=make(3.0), cache=None, **head_only).fit(images, labels)
    np.testing.assert_array_equal(
        served.predict_proba(images), alone.predict_proba(images)
    )


@pytest.mark.parametrize("change", ["assign", "data", "numpy"])
def test_changed_weights_are_digested_again(change, images, labels):
    """Weights are digested for every fit and prediction: loaded with
    ``assign=True`` (new tensors), or written through ``.data`` or numpy,
    which move no version counter."""
    torch.manual_seed(0)
    clf = tiny(model=Plain(), frozen_layers="all", head_epochs=0).fit(images, labels)
    clf.predict_proba(images)  # rows stored
    conv = clf.module_.stem[0]
    if change == "assign":
        conv.load_state_dict(
            {"weight": 2 * conv.weight, "bias": conv.bias}, assign=True
        )
    elif change == "data":
        conv.weight.data.mul_(2)
    else:
        conv.weight.detach().numpy()[...] *= 2
    served = clf.predict_proba(images)
    computed = clf.set_params(cache=None).predict_proba(images)
    np.testing.assert_array_equal(served, computed)


def test_plans_are_shared_only_by_networks_that_run_alike(images, labels):
    """A network whose forward reads a private flag is no structure twin of
    one whose flag differs: it is probed itself (and runs whole)."""
    head_only = dict(frozen_layers="all", head_epochs=0, cache=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny(model=Routed(False), **head_only).fit(images, labels)
    with pytest.warns(UserWarning, match="cannot run from the output"):
        clf = tiny(model=Routed(True), **head_only).fit(images, labels)
    assert clf._cut("train") is None
    assert np.isfinite(clf.predict_proba(images)).all()


def test_forward_hooks_key_plans_and_rows():
    """Hooks that change what a module computes (trained depthwise
    convolutions in float32 under CPU autocast) are part of its settings
    where they act; sktransfer's tap hooks, which change nothing, are not."""
    conv = nn.Conv2d(4, 4, 3, groups=4)
    before = _fp.settings_of(conv)
    _tap.forward_tap(nn.Sequential(conv), torch.ones(1, 4, 5, 5), conv, take_input=True)
    assert _fp.settings_of(conv) == before
    float32_grouped_convolutions(conv)
    assert _fp.settings_of(conv) != before  # under CPU autocast
    float32 = _fp.neutral_hooks(torch.device("cpu"), None)
    assert _fp.settings_of(conv, float32) == before  # they act under it only


@pytest.mark.parametrize("augment", ["random", lambda image: image.flip(-2)])
def test_the_heads_phase_trains_on_fixed_views_whatever_the_augmentation(
    augment, jpeg_paths, labels
):
    """The head trains alone on the fixed views whether their frozen output
    is stored or the whole network runs: random crops (and a user's
    augmentation) start with the unfrozen groups."""

    def head(cache_frozen):
        clf = tiny(frozen_layers=0, head_epochs=2, max_epochs=0, augment=augment)
        clf.set_params(cache_frozen=cache_frozen, cache=None).fit(jpeg_paths, labels)
        head = clf.module_.get_submodule(clf.head_)
        return torch.cat([p.detach().flatten() for p in head.parameters()])

    torch.testing.assert_close(head(True), head(False), atol=1e-6, rtol=0)


def test_a_seeded_build_is_the_same_while_other_threads_draw():
    """A network built with random weights (``weights=None``) draws from
    generators of its own, not torch's process-wide one that other threads
    (another fit's build) draw from meanwhile."""

    def build(interfere: bool):
        first = torch.rand(4)
        if interfere:
            other = threading.Thread(target=torch.rand, args=(1000,))
            other.start()
            other.join()
        return torch.cat([first, torch.rand(4)])

    torch.testing.assert_close(
        _builders._seeded(lambda: build(True)),
        _builders._seeded(lambda: build(False)),
        rtol=0,
        atol=0,
    )


class Mixing(nn.Module):
    """Patches mixed by a layer that draws random numbers in training."""

    def __init__(self, mix: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 8, stride=8)
        self.mix = mix
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        if isinstance(self.mix, nn.MultiheadAttention):
            tokens = self.mix(tokens, tokens, tokens, need_weights=False)[0]
        else:
            tokens = self.mix(tokens)
        return self.fc(tokens.mean(1))


@pytest.mark.parametrize("mix", [nn.RReLU(), nn.AlphaDropout(0.2)], ids=type)
def test_random_layers_draw_from_the_fits_generators(mix, images, labels):
    """RReLU's slopes and alpha dropout's masks come from the fit's own
    generators: whatever torch's global seed, one ``random_state``, one model."""

    def fit(global_seed):
        torch.manual_seed(0)
        network = Mixing(mix)
        torch.manual_seed(global_seed)
        clf = tiny(model=network, frozen_layers=0, head_epochs=0, max_epochs=2)
        return clf.fit(images, labels).predict_proba(images)

    np.testing.assert_array_equal(fit(1), fit(2))


def test_attention_dropout_out_of_reach_warns(images, labels):
    """Dropout inside fused attention draws where no mode reaches: the fit
    says that it is reproducible alone only."""
    torch.manual_seed(0)
    network = Mixing(nn.MultiheadAttention(16, 2, dropout=0.2, batch_first=True))
    clf = tiny(model=network, frozen_layers=0, head_epochs=0, max_epochs=1)
    with pytest.warns(UserWarning, match="reproducible alone, not beside other"):
        clf.fit(images, labels)


@pytest.mark.parametrize("p", [0.2, 1.0])
def test_alpha_dropout_of_the_fits_generators_follows_torchs(p):
    """Kept units scaled, dropped ones at SELU's saturation (all zero at
    ``p=1``), as torch's own alpha dropout gives them."""
    x = torch.randn(4000)
    with FitRandomness(0):
        ours = F.alpha_dropout(x, p, training=True)
    theirs = F.alpha_dropout(x, p, training=True)
    if p == 1:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        return
    saturation = 1.7580993408473766
    a = ((saturation**2 * p + 1) * (1 - p)) ** -0.5
    for out in (ours, theirs):
        kept = torch.isclose(out, a * x + saturation * a * p)
        assert abs(float(kept.float().mean()) - (1 - p)) < 0.03
        dropped = torch.full_like(out[~kept], -saturation * a * (1 - p))
        torch.testing.assert_close(out[~kept], dropped)


# ------------------------------------------- what else keys a plan or rows
_NET_SOURCE = """
import torch
from torch import nn
from torch.nn import functional as F

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.body(self.stem(x) * FACTOR)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
"""


def _net_defined(factor: float) -> nn.Module:
    """``Net`` as a notebook cell defines it, run again with another factor."""
    namespace = {"__name__": "__main__"}
    exec(_NET_SOURCE.replace("FACTOR", repr(factor)), namespace)  # noqa: S102
    torch.manual_seed(0)
    return namespace["Net"]()


@pytest.mark.parametrize("store", ["memory", "folder"])
def test_a_class_defined_again_with_another_forward_gets_rows_of_its_own(
    store, images, labels, tmp_path
):
    cache = "memory" if store == "memory" else str(tmp_path / "store")
    params = dict(frozen_layers="all", head_epochs=0, cache=cache)
    tiny(model=_net_defined(1.0), **params).fit(images, labels)
    served = tiny(model=_net_defined(-3.0), **params).fit(images, labels)
    alone = tiny(model=_net_defined(-3.0), **{**params, "cache": None})
    np.testing.assert_allclose(
        served.predict_proba(images),
        alone.fit(images, labels).predict_proba(images),
        atol=1e-6,
    )


class ArrayScaled(Plain):
    """Its forward reads a numpy array attribute, changed in place later."""

    def __init__(self):
        super().__init__()
        self.scale = np.array([1.0], dtype=np.float32)

    def forward(self, x):
        return super().forward(x * torch.from_numpy(self.scale))


class Opaque:
    """A setting sktransfer cannot compare: known by identity alone."""

    factor = 1.0


class OpaqueScaled(Plain):
    def __init__(self):
        super().__init__()
        self.setting = Opaque()

    def forward(self, x):
        return super().forward(x * self.setting.factor)


@pytest.mark.parametrize("network", [ArrayScaled, OpaqueScaled])
def test_settings_changed_in_place_are_seen(network, images, labels):
    torch.manual_seed(0)
    clf = tiny(model=network(), frozen_layers="all", head_epochs=0)
    clf.fit(images, labels).predict_proba(images)  # rows stored, if any
    if network is ArrayScaled:
        clf.module_.scale[...] = 3.0  # digested: its bytes
    else:
        clf.module_.setting.factor = 3.0  # unseen: no rows are stored for it
    served = clf.predict_proba(images)
    computed = clone(clf).set_params(cache=None)
    computed.__dict__.update({k: v for k, v in clf.__dict__.items() if k.endswith("_")})
    np.testing.assert_allclose(served, computed.predict_proba(images), atol=1e-6)


def test_an_identity_is_never_another_objects():
    first = Opaque()
    token = _fp.fingerprint(first)
    assert _fp.fingerprint(first) == token and _fp.is_opaque(("list", token))
    del first
    tokens = {_fp.fingerprint(Opaque()) for _ in range(50)}  # ids reused
    assert token not in tokens and len(tokens) == 50
    items = [Opaque() for _ in range(6)]  # a set's order follows its reprs
    kept = _fp.fingerprint(frozenset(items))
    assert all(_fp.fingerprint(frozenset(items)) == kept for _ in range(10))


def test_an_opaque_setting_keeps_no_network_alive(images, labels):
    """A plan's key holds an opaque setting weakly: a network whose setting
    refers back to it is freed with its estimator."""
    network = OpaqueScaled()
    network.setting.owner = network
    clf = tiny(model=network, frozen_layers="all", head_epochs=0).fit(images, labels)
    fitted = weakref.ref(clf.module_)
    del clf, network
    gc.collect()
    assert fitted() is None


class Gated(nn.Module):
    """A one-value buffer decides whether the stem's output reaches the
    head: the same structure, another route."""

    def __init__(self, skip: bool):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, 10)
        self.register_buffer("skip", torch.tensor(skip))

    def forward(self, x):
        a = self.stem(x)
        b = self.body(a) + (a if self.skip else 0)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(b, 1), 1))


def test_a_plan_is_not_shared_across_a_buffer_value_that_routes(images, labels):
    params = dict(frozen_layers="all", head_epochs=0, cache=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Gated(True) cannot be cut
        tiny(model=Gated(False), **params).fit(images, labels)  # planned: a cut
        shared = tiny(model=Gated(True), **params).fit(images, labels)
        whole = tiny(model=Gated(True), cache_frozen=False, **params)
        whole.fit(images, labels)
    proba = shared.predict_proba(images)  # was NaN
    np.testing.assert_allclose(proba, whole.predict_proba(images), atol=1e-6)


def test_a_float16_fit_again_starts_a_new_gradient_scaler(images, labels):
    """Its scale backs off at an overflow: a second fit kept the first's."""
    clf = tiny(
        precision="float16",
        frozen_layers=3,
        max_epochs=2,
        lr=1e-4,
        lr_schedule="constant",
        criterion__reduction="sum",  # overflows at the first scale, 2 ** 16
    ).fit(images, labels)
    assert clf.grad_scaler_.get_scale() < 2.0**16
    first = clf.predict_proba(images)
    np.testing.assert_allclose(
        clf.fit(images, labels).predict_proba(images), first, atol=1e-6
    )


def test_predictions_in_spawned_loader_workers(images, labels):
    """macOS and Windows spawn DataLoader workers (Python 3.14 on Linux
    uses forkserver): the prediction's dataset, rows and all, is pickled."""
    clf = tiny(
        frozen_layers=3,
        iterator_valid__num_workers=1,
        iterator_valid__multiprocessing_context="spawn",
    ).fit(images, labels)
    plain = clone(clf).set_params(
        iterator_valid__num_workers=0, iterator_valid__multiprocessing_context=None
    )
    plain.__dict__.update({k: v for k, v in clf.__dict__.items() if k.endswith("_")})
    np.testing.assert_allclose(
        clf.predict_proba(images), plain.predict_proba(images), atol=1e-6
    )


def test_no_last_batch_of_one_image_where_batchnorm_trains(rng):
    """13 images at 32 px, batch_size=4: a last batch of one image has 1x1
    maps where the trained groups' BatchNorm layers are (one value per
    channel: an error). It is dropped (a different image each epoch), as
    fastai drops the rest of every epoch; where no BatchNorm trains, kept."""
    X = rng.integers(0, 256, size=(13, 32, 32, 3), dtype=np.uint8)
    y = np.array(["a"] * 6 + ["b"] * 7)
    clf = tiny(frozen_layers=4, image_size=32, early_stopping=False).fit(X, y)
    assert clf.history_[-1, "train_batch_count"] == 3
    assert clf.predict(X).shape == (13,)
    head_only = tiny(frozen_layers="all", image_size=32, early_stopping=False)
    assert head_only.fit(X, y).history_[-1, "train_batch_count"] == 4
    fixed_statistics = clf.set_params(bn="eval").fit(X, y)  # no BatchNorm trains
    assert fixed_statistics.history_[-1, "train_batch_count"] == 4


def test_fingerprints_of_arrays_and_tensors_follow_their_bytes():
    bf16 = torch.ones(3, dtype=torch.bfloat16)  # numpy has no bfloat16
    assert _fp.fingerprint(bf16) == _fp.fingerprint(bf16.clone())
    assert _fp.fingerprint(bf16) != _fp.fingerprint(bf16 * 2)
    nested = [np.zeros(2), {"t": torch.zeros(2)}]
    before = _fp.fingerprint(nested)
    nested[1]["t"][0] = 1
    assert _fp.fingerprint(nested) != before and not _fp.is_opaque(before)
    assert _fp.is_opaque(_fp.fingerprint(np.array([object()])))


def test_the_store_key_does_not_follow_what_the_process_imported(
    images, labels, computed, monkeypatch
):
    params = dict(frozen_layers="all", head_epochs=0, cache="memory")
    tiny(**params).fit(images, labels)
    monkeypatch.setitem(sys.modules, "timm", types.ModuleType("timm"))  # no version
    computed.clear()
    tiny(**params).fit(images, labels)
    assert sum(computed) == 0  # the installed versions key rows, not imports


class _Base(Plain):
    def __init__(self):
        super().__init__()


_VARIANTS = {
    "a class constant": "class Net(Base):\n    FACTOR = {v}\n"
    "    def forward(self, x):\n        return super().forward(x * self.FACTOR)\n",
    "a forward's default": "class Net(Base):\n    def forward(self, x, f={v}):\n"
    "        return super().forward(x * f)\n",
    "a decorated forward": "class Net(Base):\n    @torch.no_grad()\n"
    "    def forward(self, x):\n        return super().forward(x * {v})\n",
}


def _variant(kind: str, value: float) -> type:
    namespace = {"__name__": "__main__", "Base": _Base, "torch": torch}
    exec(_VARIANTS[kind].replace("{v}", repr(value)), namespace)  # noqa: S102
    return namespace["Net"]


def _made_by_a_factory(factor: float) -> type:
    class Net(_Base):
        def forward(self, x):
            return super().forward(x * factor)

    return Net


@pytest.mark.parametrize("kind", [*_VARIANTS, "a factory's closure"])
def test_a_class_differing_only_in_what_its_code_reads_keys_other_rows(
    kind, images, labels
):
    def make(value):
        cls = _made_by_a_factory(value) if "factory" in kind else _variant(kind, value)
        torch.manual_seed(0)
        return cls()

    assert _fp.class_digest(type(make(1.0))) != _fp.class_digest(type(make(-3.0)))
    if "decorated" in kind:  # no_grad: it cannot train
        return
    params = dict(frozen_layers="all", head_epochs=0, cache="memory")
    tiny(model=make(1.0), **params).fit(images, labels)
    served = tiny(model=make(-3.0), **params).fit(images, labels)
    alone = tiny(model=make(-3.0), **{**params, "cache": None}).fit(images, labels)
    np.testing.assert_allclose(
        served.predict_proba(images), alone.predict_proba(images), atol=1e-6
    )


def test_a_class_patched_after_a_fit_keys_other_rows(images, labels):
    cls = _variant("a class constant", 1.0)
    params = dict(frozen_layers="all", head_epochs=0, cache="memory")
    torch.manual_seed(0)
    tiny(model=cls(), **params).fit(images, labels)
    cls.forward = lambda self, x: _Base.forward(self, x * -3.0)
    fits = []
    for cache in ("memory", None):
        torch.manual_seed(0)
        fits.append(tiny(model=cls(), **{**params, "cache": cache}).fit(images, labels))
    np.testing.assert_allclose(
        fits[0].predict_proba(images), fits[1].predict_proba(images), atol=1e-6
    )


class _Lazy:
    def __getattr__(self, name):  # a lazy proxy: no AttributeError
        raise KeyError(name)


class WithLazy(Plain):
    registry = _Lazy()


def test_a_class_attribute_that_answers_no_question_is_opaque(images, labels):
    assert _fp.is_opaque(_fp.class_digest(WithLazy))
    tiny(model=WithLazy(), frozen_layers="all", head_epochs=0).fit(images, labels)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.tensor([1 + 2j]).conj(),
        lambda: torch.tensor([1 + 2j]).conj().imag,  # a negative view
        lambda: torch.eye(2).to_sparse(),
        lambda: torch.empty(2, device="meta"),
        lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
    ],
    ids=["conj", "neg", "sparse", "meta", "quantized"],
)
def test_every_kind_of_tensor_has_a_fingerprint_and_a_plan_key(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated
        tensor = make()
    _fp.fingerprint(tensor)
    _fp.tensor_key(tensor)


def test_values_count_by_value():
    masked = np.ma.array([1.0, 2.0], mask=[False, True])
    assert _fp.fingerprint(masked) != _fp.fingerprint(np.ma.array([1.0, 2.0]))
    assert _fp.fingerprint({1, 2}) == _fp.fingerprint({2, 1})
    assert _fp.fingerprint(b"ab") == _fp.fingerprint(bytearray(b"ab"))
    loop: list = [1]
    loop.append(loop)
    assert not _fp.is_opaque(_fp.fingerprint(loop))  # holds itself: no recursion
    for value in (complex(1, 2), range(3), slice(1), b"x"):
        assert not _fp.is_opaque(_fp.fingerprint(value))


def test_partial_fit_on_one_image_trains_it(images, labels):
    clf = tiny(frozen_layers=3, head_epochs=0).fit(images, labels)
    clf.partial_fit(images[:1], labels[:1])
    assert clf.history_[-1, "train_batch_count"] == 1


def test_a_class_digest_follows_every_replaced_member():
    cls = _variant("a class constant", 1.0)
    digests = set()
    for factor in range(20):  # freed functions' ids come back
        cls.FACTOR = float(factor)
        cls.forward = lambda self, x: x
        digests.add(_fp.class_digest(cls))
    assert len(digests) == 20


def test_no_image_is_hashed_for_a_network_whose_rows_are_not_stored(
    images, labels, monkeypatch
):
    hashed = []
    monkeypatch.setattr(
        _rows._cache, "image_keys", lambda imgs: hashed.append(len(imgs)) or []
    )
    torch.manual_seed(0)
    clf = tiny(model=OpaqueScaled(), frozen_layers="all", head_epochs=0)
    clf.fit(images, labels).predict_proba(images)
    assert hashed == []  # an opaque setting: no namespace, so no keys to read
