"""Weights resolution: enum members, names, local files and the offline cache.

Files are read once per process (a small LRU keyed by path, size and mtime) so
that ``clone``/``GridSearchCV`` candidates never re-read or re-initialise them,
and always without arbitrary unpickling.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torchvision.models import WeightsEnum

from ._lru import LRU
from ._suggest import did_you_mean
from .exceptions import WeightsError, WeightsNotAvailableError

StateDict = dict[str, torch.Tensor]

# Files read once per process; a state dict can be 500 MB (VGG): keep two.
_read: LRU[StateDict] = LRU(max_items=2)


def is_weights_path(weights: object) -> bool:
    """Whether ``weights`` names a local file rather than an enum member name."""
    if isinstance(weights, Path):
        return True
    return isinstance(weights, str) and (
        weights.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))
        or os.sep in weights
        or "/" in weights
    )


def load_state_dict_file(path: str | os.PathLike) -> StateDict:
    """Read a state dict from ``.pth``/``.pt`` (weights only) or ``.safetensors``.

    A file that needs arbitrary unpickling (a pickled ``nn.Module``, custom
    classes) is refused, never executed.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise WeightsNotAvailableError(
            f"Weights file {str(path)!r} does not exist. Pass the path of a state "
            "dict saved with torch.save(model.state_dict(), path) or a .safetensors "
            "file."
        )
    return _read.get_or_create(file_identity(path), lambda: _read_state_dict(path))


def file_identity(path: str | os.PathLike) -> tuple[str, int, int]:
    """``(resolved path, size, modification time in ns)``: a file's identity
    for caches and cache keys (a rewritten file is a new identity)."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _read_state_dict(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise WeightsError(
                f"Cannot read safetensors file {str(path)!r}: {exc}"
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"Refusing to load {str(path)!r}: it needs arbitrary unpickling (for "
            "example "
            "a whole pickled model), which can execute code. Save only the tensors "
            "with "
            "torch.save(model.state_dict(), path) or use a .safetensors file."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"Cannot read weights file {str(path)!r}: {exc}") from exc
    return _unwrap_checkpoint(obj, path)


def _unwrap_checkpoint(obj: object, path: Path) -> StateDict:
    """Accept the common checkpoint layouts: a bare state dict, or one nested
    under ``state_dict``/``model``, with DataParallel's ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(
        isinstance(v, torch.Tensor) for v in obj.values()
    ):
        raise WeightsError(
            f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)."
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def torchvision_weights(name: str, weights: object) -> WeightsEnum | None:
    """Resolve ``"DEFAULT"``, a member name or a member of torchvision's enum."""
    from torchvision.models import get_model_weights

    if weights is None:
        return None
    enum = get_model_weights(name)
    if isinstance(weights, WeightsEnum):
        if type(weights) is not enum:
            raise WeightsError(
                f"Weights {weights} belong to another architecture than {name!r}; "
                f"use one of {[str(m) for m in enum]}."
            )
        return weights
    member = str(weights)
    if "." in member and member.split(".", 1)[0] == enum.__name__:
        member = member.split(".", 1)[1]
    if member == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[member]
    except KeyError:
        names = [m.name for m in enum]
        raise WeightsError(
            f"Unknown weights {weights!r} for {name!r}.{did_you_mean(member, names)} "
            f"Known: 'DEFAULT', {', '.join(repr(n) for n in names)}, a path to a "
            ".pth/.safetensors state dict, or None."
        ) from None


def cached_weights_path(weights: WeightsEnum) -> Path:
    """Where torchvision's loader keeps (and looks for) this download."""
    filename = os.path.basename(weights.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def download_torchvision_weights(weights: WeightsEnum) -> StateDict:
    """The state dict of ``weights``: the cached file, downloading it only if absent."""
    path = cached_weights_path(weights)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(path.name)
        try:
            torch.hub.download_url_to_file(
                weights.url, str(path), hash_prefix=match.group(1) if match else None
            )
        except Exception as exc:  # offline: URLError, socket errors, timeouts
            raise WeightsNotAvailableError(
                f"Pretrained weights {weights} are not available offline: "
                f"{path.name!r} "
                f"is not in {str(path.parent)!r} "
                f"(TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}) "
                f"and downloading {weights.url} failed ({type(exc).__name__}: {exc}). "
                f"Copy the file there from a machine with network access, set "
                f"TORCH_HOME to a folder holding hub/checkpoints/{path.name}, pass a "
                "local path as weights=, or use weights=None."
            ) from exc
    return load_state_dict_file(path)


def load_into(module: torch.nn.Module, state_dict: StateDict, *, source: str) -> None:
    """``load_state_dict`` with an error that says the weights are for another model."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        raise WeightsError(
            f"Weights {source} do not fit this architecture (they are for another "
            f"model or another number of classes): {' '.join(first[:3])[:600]}"
        ) from exc


def clear_cache() -> None:
    """Forget the state dicts read so far (frees their memory)."""
    _read.clear()
