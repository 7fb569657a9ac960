"""What a fine-tuning fit feeds its network: the cuts, their rows, the datasets.

:class:`Feeding` answers skorch's requests for data (``get_dataset``,
``get_split_datasets``, ``get_iterator``): a fit's images and, computed
once, the rows of each phase's cut (:mod:`.cut`, :mod:`.rows`), split for
validation; to predict, the training cut's rows batch by batch. It fits the
new head's standardisation to the training images' embeddings.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from skorch.dataset import ValidSplit
from torch.utils.data import DataLoader, Subset

from .._devices import autocast
from .._images import Images, check_images
from .._pipeline import preprocessed_batches
from .._tap import forward_tap
from . import rows as _rows
from .cut import Cut, plan_cut
from .data import Collate, FitData, PredictData, channels_last
from .freeze import batch_norm_trains, set_train_modes
from .head import standardizer
from .loader import DeviceLoader


class Feeding:
    """skorch's data hooks of :class:`~sktransfer._finetune.net.FineTuneNet`
    (which gives ``_trains``, ``_fixed`` and ``_set_training``)."""

    def _augment(self):
        """``augment`` resolved: ``True`` is the fixed views when groups are
        frozen (their rows computed once), else random crops."""
        if self.augment is True:
            return "flip" if self.n_frozen_groups_ > 0 else "random"
        return self.augment

    def _views(self) -> tuple[str, ...]:
        """The fixed views of each image: with its mirror image where
        training flips images."""
        flips = self._augment() in ("flip", "random")
        return ("center", "flip") if flips else ("center",)

    def _eval_views(self) -> tuple[str, ...]:
        """The views whose predictions are averaged (``tta``)."""
        return self._views() if self.tta else ("center",)

    def _cut(self, phase: str) -> Cut | None:
        """The cut before what trains in ``phase``, planned once per network
        and the settings it depends on; ``None`` where rows are not used
        (``cache_frozen=False``, ``compile``) or cannot give the whole
        network's outputs (then it runs whole)."""
        cuts = self.__dict__.setdefault("_cuts", {})
        device = self._device()
        key = (phase, self.bn, self._autocast_dtype(device), str(device))
        if key not in cuts:
            cuts[key] = None
            if self.cache_frozen and not self.compile:
                cuts[key] = self._plan(phase)
        return cuts[key]

    def _plan(self, phase: str) -> Cut | None:
        if phase == "train" and self._head_only():
            return self._cut("head")
        if self.n_frozen_groups_ == 0 and phase == "train":
            return None
        if phase == "lower" and len(self.layer_groups_) < 2:
            return None
        trains, fixed = self._trains(phase), self._fixed(phase)
        device = self._device()
        cut, why = plan_cut(
            self.module_,
            self.preprocessing_.crop_size,
            trained={id(p) for p in self.module_.parameters() if trains(p)},
            training_modes=lambda: set_train_modes(self.module_, fixed, self.bn),
            main_only=phase == "head",
            device=device,
            dtype=self._autocast_dtype(device),
        )
        self.__dict__.pop("_modes", None)  # the probe left the network in eval mode
        if cut is None and phase != "lower":
            when = " while the head trains alone" if phase == "head" else ""
            warnings.warn(
                f"{self.backbone_name_} cannot run from the output of what stays "
                f"fixed{when} ({why}): the whole network runs in every step "
                "instead, which gives the same results more slowly.",
                UserWarning,
                stacklevel=4,
            )
        return cut

    def _rows(self, images: Images, phases, views, spaces=None, set_size=None):
        """``{phase: rows}`` of ``phases``' cuts (``spaces``: their namespaces,
        kept across a prediction's batches). A chain from the head's cut goes
        through the cut a group lower (stored, for a grid search's candidates
        that train the top group) where the set's rows there (``set_size``
        images) come to at most :data:`~.rows.LOWER_BYTES`."""
        self._set_training(False)
        chain = list(phases)
        if self.cache is not None and (phases[0] == "head" or self._head_only()):
            lower = self._cut("lower")
            size = 4 * (set_size or len(images)) * len(views)  # float32, all views
            if lower and size * math.prod(lower.activation.shape) <= _rows.LOWER_BYTES:
                chain.insert(0, "lower")
        device = self._device()
        computed = _rows.compute_rows(
            images,
            [self._cut(phase) for phase in chain],
            views,
            preprocessing=self.preprocessing_,
            batch_size=self._batch_size(len(images)),
            device=device,
            dtype=self._autocast_dtype(device),
            store=_rows.resolve_store(self.cache),
            namespaces=spaces,
            through_first=chain[0] == "lower",
        )
        rows = dict(zip(chain, computed, strict=True))
        if "lower" in rows:
            rows.pop("lower").release()
        return rows

    # ---------------------------------------------------------------- data
    def get_dataset(self, X, y=None):
        """The images of ``X`` (a fit's :class:`FitData` passes through); to
        predict with a network that trained from a cut, fetched as that
        cut's rows (from the ``cache`` store where it has them)."""
        if isinstance(X, FitData):  # a fit's, or a prediction's
            return X
        n_channels = self.n_channels_in_
        images = X if isinstance(X, Images) else check_images(X, n_channels=n_channels)
        fetch = None  # the training cut's rows, where the net has one
        if getattr(self, "initialized_", False) and self._augment() in ("flip", False):
            if self._cut("train") is not None:
                fetch = functools.partial(fetch_rows, self, len(images), {})
        return PredictData(images, fetch, draft=self._draft())

    def get_split_datasets(self, X, y=None, **fit_params):
        """A fit's data: its images, and the rows of each phase's cut,
        computed once (or taken from the store), split by ``train_split``
        or, for early stopping, a stratified ``validation_fraction``; a new
        head's standardisation is fitted to the training part."""
        data, images = X, X.images
        data.drafts = {"train": self._draft(), "head": self.preprocessing_.resize_size}
        phases = []
        if self._augment() in ("flip", False) and self._cut("train") is not None:
            phases.append("train")
        if self.head_epochs_ and self._cut("head") is not None:
            phases.append("head")
        data.rows = self._rows(images, phases, self._views()) if phases else {}
        self.prefix_cached_ = "train" in data.rows
        train, valid = self._split(data, y, **fit_params)
        if self.__dict__.pop("_fresh", False):
            indices = train.indices if isinstance(train, Subset) else range(len(train))
            self._start_head(data, np.asarray(indices))
        return train, valid

    def _draft(self) -> int:
        # JPEGs decode in the DCT domain to at least the resize size; random
        # crops keep twice that, so a crop of a quarter of the area stays sharp
        # (the head's phase, on fixed views, decodes as its rows do).
        draft = self.preprocessing_.resize_size
        return 2 * draft if self._augment() not in ("flip", False) else draft

    def _split(self, dataset, y, **fit_params):
        if self.train_split is not None:
            return self.train_split(dataset, y, **fit_params)
        if self._patience() is None:
            return dataset, None
        if self.validation_fraction is None:
            raise ValueError(
                f"early_stopping={self.early_stopping!r} needs held-out data, but "
                "validation_fraction=None and train_split=None. Set "
                "validation_fraction (e.g. 0.1) or pass a train_split."
            )
        n, n_classes = len(y), len(self.classes_)
        n_valid = math.ceil(self.validation_fraction * n)
        if n_valid < n_classes or n - n_valid < n_classes:
            raise ValueError(
                "early_stopping holds out validation_fraction="
                f"{self.validation_fraction} of {n} images = {n_valid}, but a "
                f"stratified split needs at least {n_classes} images (one per "
                "class) on each side. Change validation_fraction, add images, or "
                "disable early_stopping."
            )
        split = ValidSplit(
            self.validation_fraction, stratified=True, random_state=self.seed_
        )
        return split(dataset, y, **fit_params)

    def _start_head(self, data: FitData, indices: np.ndarray) -> None:
        """Fit the new head's standardisation to the embeddings (its input,
        the pretrained network in eval mode) of every view of the training
        images: from the deepest rows computed, else from the images."""
        head = self.module_.get_submodule(self.head_)
        scaler = standardizer(head)
        if scaler is None:
            return
        self._set_training(False)
        device = self._device()
        size = self._batch_size(len(indices))
        phase = next((p for p in ("head", "train") if p in data.rows), None)
        if phase is not None:
            cut, rows = self._cut(phase), data.rows[phase]
            run = functools.partial(cut, tap=head, take_input=True)
            starts = range(0, len(indices), size)
            blocks = (rows.take(indices[i : i + size]) for i in starts)
            views = (block[:, v] for block in blocks for v in range(block.shape[1]))
        else:
            run = functools.partial(
                forward_tap, self.module_, tap=head, take_input=True
            )
            images = data.images.subset(indices)
            batches = preprocessed_batches(images, self.preprocessing_, size, device)
            views = (_rows.VIEWS[v](b) for b in batches for v in self._views())
        with torch.inference_mode(), autocast(device, self._autocast_dtype(device)):
            found = [run(channels_last(x.to(device))) for x in views]
        scaler.fit(torch.cat([f.float().flatten(1).cpu() for f in found]))

    def get_iterator(self, dataset, training=False):
        """skorch's iterator; a ``DataLoader`` gets sktransfer's collate
        function, and on CUDA loads ahead (:class:`~.loader.DeviceLoader`)."""
        prefix = "iterator_train" if training else "iterator_valid"
        iterator = self.iterator_train if training else self.iterator_valid
        kwargs = self.get_params_for(prefix)
        size = kwargs.get("batch_size", self.batch_size)
        kwargs["batch_size"] = len(dataset) if size == -1 else size
        loader_class = isinstance(iterator, type) and issubclass(iterator, DataLoader)
        if loader_class:
            kwargs.setdefault("collate_fn", Collate(self.classes_))
            n, size = len(dataset), kwargs["batch_size"]
            if training and n > size and n % size == 1:
                # a last batch of one image fails BatchNorm layers that train
                # (1x1 maps: one value per channel); fastai drops the rest too
                trains = batch_norm_trains(self.module_, self.frozen_modules_, self.bn)
                kwargs.setdefault("drop_last", trains)
        loader = iterator(dataset, **kwargs)
        device = self._device()
        if loader_class and device.type == "cuda":
            return DeviceLoader(loader, device)
        return loader


def fetch_rows(net, set_size: int, spaces: dict, batch: Images) -> torch.Tensor:
    """A prediction's rows of the training cut for a batch of its images
    (``spaces``: the cuts' namespaces, found once); a partial of it pickles
    for spawned loader workers (whose cuts miss in ``spaces``: found again)."""
    rows = net._rows(batch, ["train"], net._eval_views(), spaces, set_size)
    return torch.from_numpy(rows["train"].data)
