"""sktransfer: transfer learning with pretrained CNNs as a scikit-learn workflow."""

from ._backbones import layer_groups, list_backbones
from ._extractor import CNNFeatureExtractor
from ._finetune import FineTuneClassifier
from ._imagenet import ImageNetClassifier
from ._scoring import top_k_scorer, top_k_scorers
from .datasets import load_image_folder
from .exceptions import (
    ImageDecodeError,
    InvalidImageError,
    SktransferError,
    UnknownBackboneError,
    UnknownLayerError,
    WeightsError,
    WeightsNotAvailableError,
)
from .inspection import (
    explain,
    plot_confusion_matrix,
    plot_explanation,
    plot_top_losses,
)
from .persistence import load_model, save_model

__version__ = "0.1.0.dev0"

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
