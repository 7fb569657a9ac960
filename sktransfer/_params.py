"""Parameter constraints the estimators share, in scikit-learn's constraint
language; each estimator merges them into its ``_parameter_constraints`` (as
scikit-learn's ``KNeighborsClassifier`` merges ``NeighborsBase``'s)."""

from __future__ import annotations

import os
from numbers import Integral

import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn
from torchvision.models import WeightsEnum

from ._devices import PRECISIONS

BACKBONE = {
    "model": [str, nn.Module],
    "weights": [str, os.PathLike, WeightsEnum, None],
    "device": [str, torch.device],
}
PRECISION = {"precision": [StrOptions(set(PRECISIONS))]}
INFERENCE = {
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "n_jobs": [Interval(Integral, 1, None, closed="left"), None],
    "progress": ["boolean"],
    "decoder": [StrOptions({"auto", "cpu", "gpu"})],
}
