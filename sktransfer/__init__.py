"""sktransfer: transfer learning with pretrained CNNs as a scikit-learn workflow.

The public names load on first use (PEP 562): ``sktransfer --help`` and a
saved model that needs neither skorch nor matplotlib do not import them.
"""

import importlib
from typing import TYPE_CHECKING

from .exceptions import (
    ImageDecodeError,
    InvalidImageError,
    SktransferError,
    UnknownBackboneError,
    UnknownLayerError,
    WeightsError,
    WeightsNotAvailableError,
)

__version__ = "0.1.0.dev0"

if TYPE_CHECKING:  # what __getattr__ loads, for type checkers and the API docs
    from ._backbones import layer_groups, list_backbones
    from ._extractor import CNNFeatureExtractor
    from ._finetune import FineTuneClassifier
    from ._imagenet import ImageNetClassifier
    from ._scoring import top_k_scorer, top_k_scorers
    from .datasets import load_image_folder
    from .inspection import (
        explain,
        plot_confusion_matrix,
        plot_explanation,
        plot_top_losses,
    )
    from .persistence import load_model, save_model

_HOMES = {
    "CNNFeatureExtractor": "._extractor",
    "FineTuneClassifier": "._finetune",
    "ImageNetClassifier": "._imagenet",
    "explain": ".inspection",
    "layer_groups": "._backbones",
    "list_backbones": "._backbones",
    "load_image_folder": ".datasets",
    "load_model": ".persistence",
    "plot_confusion_matrix": ".inspection",
    "plot_explanation": ".inspection",
    "plot_top_losses": ".inspection",
    "save_model": ".persistence",
    "top_k_scorer": "._scoring",
    "top_k_scorers": "._scoring",
}

__all__ = [
    "CNNFeatureExtractor",
    "FineTuneClassifier",
    "ImageDecodeError",
    "ImageNetClassifier",
    "InvalidImageError",
    "SktransferError",
    "UnknownBackboneError",
    "UnknownLayerError",
    "WeightsError",
    "WeightsNotAvailableError",
    "__version__",
    "explain",
    "layer_groups",
    "list_backbones",
    "load_image_folder",
    "load_model",
    "plot_confusion_matrix",
    "plot_explanation",
    "plot_top_losses",
    "save_model",
    "top_k_scorer",
    "top_k_scorers",
]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'sktransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
