"""JPEG headers read from the bytes agree with Pillow's reading of the same files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sktransfer._decode import exif_orientation, read_encoded
from sktransfer._jpeg import exif_orientation as tiff_orientation
from sktransfer._jpeg import read_header


def _photo() -> np.ndarray:
    from skimage import data

    return np.array(Image.fromarray(data.astronaut()).resize((96, 72)))


def _pillow_reference(data: bytes) -> tuple[str | None, int]:
    """What a GPU decoder was told before, read by opening the file with Pillow."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = exif_orientation(image)
            if image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
                return None, orientation
            if image.info.get("progressive") or image.info.get("progression"):
                return None, orientation
            if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
                return None, orientation
            return ("RGB" if image.mode == "RGB" else "GRAY"), orientation
    except (OSError, ValueError, SyntaxError):
        return None, 1


def _encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _variants() -> dict[str, bytes]:
    rgb = Image.fromarray(_photo())
    jpeg = _encode(rgb, quality=90)
    variants = {
        "baseline": jpeg,
        "baseline 4:4:4": _encode(rgb, quality=95, subsampling=0),
        "optimized": _encode(rgb, quality=80, optimize=True),
        "progressive": _encode(rgb, quality=90, progressive=True),
        "grey": _encode(rgb.convert("L"), quality=90),
        "grey progressive": _encode(rgb.convert("L"), progressive=True),
        "cmyk": _encode(rgb.convert("CMYK"), quality=90),
        "truncated": jpeg[: len(jpeg) // 2],
        "header only": jpeg[:200],
        "trailing zeros": jpeg + b"\0" * 64,
        "with icc and comment": _encode(rgb, icc_profile=b"\0" * 300, comment=b"hi"),
        "png": _encode(rgb, "PNG"),
        "garbage": b"\xff\xd8\xff\x00 not a jpeg",
        "empty": b"",
    }
    for orientation in range(1, 9):
        variants[f"orientation {orientation}"] = _encode(
            rgb, quality=90, exif=_exif(orientation)
        )
    variants["orientation 9 (invalid)"] = _encode(rgb, exif=_exif(9))
    variants["sideways progressive"] = _encode(rgb, progressive=True, exif=_exif(6))
    return variants


@pytest.mark.parametrize("name", list(_variants()))
def test_header_from_bytes_agrees_with_pillow(name, tmp_path):
    data = _variants()[name]
    path = tmp_path / "image.jpg"
    path.write_bytes(data)
    encoded = read_encoded(str(path))
    assert (encoded.gpu_mode, encoded.orientation) == _pillow_reference(data), name
    assert encoded.data == data


def test_header_reports_the_frame():
    variants = _variants()
    baseline = read_header(variants["baseline"])
    assert (baseline.marker, baseline.precision, baseline.components) == (0xC0, 8, 3)
    assert baseline.complete and baseline.gpu_mode == "RGB"
    assert read_header(variants["progressive"]).marker == 0xC2
    assert read_header(variants["cmyk"]).components == 4
    assert not read_header(variants["truncated"]).complete
    assert read_header(variants["header only"]) is None  # cut inside the header
    assert read_header(variants["png"]) is None


def _tiff(order: str, entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A TIFF header and IFD0 of ``(tag, type, count, value bytes)`` entries."""
    mark = b"II" if order == "little" else b"MM"
    out = mark + (42).to_bytes(2, order) + (8).to_bytes(4, order)
    out += len(entries).to_bytes(2, order)
    for tag, kind, count, value in entries:
        out += tag.to_bytes(2, order) + kind.to_bytes(2, order)
        out += count.to_bytes(4, order) + value.ljust(4, b"\0")
    return out + (0).to_bytes(4, order)


@pytest.mark.parametrize("order", ["little", "big"])
def test_exif_orientation_in_either_byte_order(order):
    """Cameras write big-endian ("MM") EXIF, Pillow little-endian."""
    other = (0x010F, 2, 4, b"Cam\0")  # Make, before the orientation
    for orientation in range(1, 9):
        block = _tiff(order, [other, (0x0112, 3, 1, orientation.to_bytes(2, order))])
        assert tiff_orientation(block) == orientation
        # and Pillow reads the same file the same way
        rgb = Image.fromarray(_photo())
        data = _encode(rgb, exif=b"Exif\0\0" + block)
        assert read_header(data).orientation == _pillow_reference(data)[1]
    as_long = _tiff(order, [(0x0112, 4, 1, (6).to_bytes(4, order))])
    assert tiff_orientation(as_long) == 6
    assert tiff_orientation(_tiff(order, [other])) == 1
    assert tiff_orientation(_tiff(order, [(0x0112, 3, 2, b"\0\6\0\6")])) == 1
    assert tiff_orientation(b"XX" + bytes(20)) == 1
    assert tiff_orientation(_tiff(order, [(0x0112, 3, 1, b"")])[:14]) == 1
