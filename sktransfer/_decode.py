"""Image files and PIL images -> uint8 ``(3, H, W)`` tensors, as displayed.

One place decides how a file becomes pixels, whichever decoder runs: Pillow
on the CPU (here) or nvJPEG on a GPU (:mod:`sktransfer._gpu_decode`). Both
read the file's bytes with :func:`read_encoded`, which also reports what a
GPU decoder needs to know (is it a baseline/progressive JPEG with 1 or 3
components, and its EXIF orientation), and both turn the decoded pixels
upright with :func:`orient`: a phone photo stored sideways with an
orientation tag is embedded as it is displayed.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ._jpeg import ORIENTATION_TAG, read_header
from .exceptions import ImageDecodeError


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to ``(..., H, W)`` pixels.

    The same transforms as :func:`PIL.ImageOps.exif_transpose`; 1 and unknown
    values leave the image as it is. Works on any device.
    """
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:  # stored rotated 90 degrees counter-clockwise
        return image.transpose(-2, -1).flip(-1)
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.transpose(-2, -1).flip(-2)
    return image


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


@dataclass
class Encoded:
    """A file's bytes and what decides who decodes them.

    ``gpu_mode`` is ``"RGB"`` or ``"GRAY"`` for JPEGs an nvJPEG decoder takes
    (baseline, 8-bit, 3 or 1 components, complete), ``None`` for everything
    else (PNG, CMYK, progressive, truncated, ...).
    """

    path: str
    data: bytes
    orientation: int
    gpu_mode: str | None


def read_encoded(path: str) -> Encoded:
    """Read ``path`` and inspect its JPEG header, if any (nothing is decoded,
    and Pillow is not involved: :func:`sktransfer._jpeg.read_header`)."""
    name = str(path)
    data = _read_bytes(name)
    header = read_header(data)
    if header is None:  # not a JPEG, or unreadable: Pillow reports it
        return Encoded(name, data, 1, None)
    return Encoded(name, data, header.orientation, header.gpu_mode)


def _read_bytes(name: str) -> bytes:
    try:
        with open(name, "rb") as file:
            return file.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"Image file {name!r} does not exist.") from exc
    except IsADirectoryError as exc:
        raise ImageDecodeError(
            f"{name!r} is a directory, not an image file.", path=name
        ) from exc


def decode_file(path: str | os.PathLike, draft: int | None = None) -> torch.Tensor:
    """Decode ``path`` on the CPU to an upright ``(3, H, W)`` uint8 tensor.

    ``draft`` lets JPEG decoding downscale in the DCT domain (several times
    faster on photos) while both sides stay >= ``draft``, the size the resize
    goes to. The header is read once, by the decoder (no GPU inspection).
    """
    name = os.fspath(path)
    return _decode_bytes(_read_bytes(name), name, draft)


def decode_encoded(encoded: Encoded, draft: int | None = None) -> torch.Tensor:
    """Pillow decoding of bytes read by :func:`read_encoded`."""
    return _decode_bytes(encoded.data, encoded.path, draft)


def _decode_bytes(data: bytes, path: str, draft: int | None) -> torch.Tensor:
    name = f"image file {path!r}"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", (draft, draft))
            return pil_to_tensor(image, name=name)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"Cannot decode {name}: not an image format Pillow can read.", path=path
        ) from exc
    except ImageDecodeError as exc:  # already names the file
        exc.path = path
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"Cannot decode {name}: {exc}", path=path) from exc


def pil_to_tensor(image: Image.Image, name: str) -> torch.Tensor:
    """An opened PIL image -> upright ``(3, H, W)`` uint8 tensor."""
    try:
        orientation = exif_orientation(image)
        image.load()
        rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"Cannot decode {name}: {exc}") from exc
    pixels = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
    return orient(pixels, orientation)
