"""Parameter constraints the estimators share, in scikit-learn's constraint
language; each estimator merges them into its ``_parameter_constraints`` (as
scikit-learn's ``KNeighborsClassifier`` merges ``NeighborsBase``'s)."""

from __future__ import annotations

import os
from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
)
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


def reject_bool(value, name: str, caller: str) -> None:
    """What ``Interval(Integral, ...)`` lets through: ``True`` is not a count."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidParameterError(
            f"The {name!r} parameter of {caller} must be an int in the range "
            f"[1, inf), not a bool. Got {value!r} instead."
        )
