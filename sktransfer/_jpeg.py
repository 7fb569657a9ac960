"""What a GPU JPEG decoder needs to know about a file, read from its bytes.

Opening each file with Pillow to learn this holds the GIL for every file in
the reading threads; walking the JPEG markers in Python touches only the
header (a few hundred bytes of a photo, past any EXIF block): the frame
header (SOF: coding process, sample precision, component count) and the
EXIF orientation, which Pillow would read from the same segments.
"""

from __future__ import annotations

from dataclasses import dataclass

# Start-of-frame markers and their coding processes (ITU T.81, table B.1).
# nvJPEG decodes Huffman-coded sequential frames in batches; progressive ones
# it Huffman-decodes on the host, one by one; arithmetic-coded, lossless and
# hierarchical ones not at all.
_SEQUENTIAL = {0xC0, 0xC1}  # baseline, extended sequential (Huffman)
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_OTHER_FRAMES = {0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF}
_START_OF_SCAN, _END_OF_IMAGE = 0xDA, 0xD9
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
_APP1, _EXIF = 0xE1, b"Exif\0\0"
ORIENTATION_TAG = 0x0112  # EXIF
# TIFF field types Pillow reads as one int (SHORT, LONG, SSHORT, SLONG) ->
# width in bytes; it reads BYTE as bytes, which counts as no orientation
_INT_TYPES = {3: 2, 4: 4, 8: 2, 9: 4}


@dataclass(frozen=True)
class JpegHeader:
    """A JPEG's frame header and EXIF orientation (1 when absent)."""

    marker: int  # the start-of-frame marker's second byte (0xC0: baseline)
    precision: int  # bits per sample
    components: int
    orientation: int
    complete: bool  # ends with an end-of-image marker (trailing zeros allowed)

    @property
    def gpu_mode(self) -> str | None:
        """``"RGB"``/``"GRAY"`` where nvJPEG decodes the file in a batch.

        Baseline or extended sequential, 8-bit, 3 or 1 components, complete.
        Progressive files would be Huffman-decoded on the host one by one,
        and a file cut short might decode without an error: Pillow takes
        both (draft decoding in threads; an error that names the file).
        CMYK / YCCK (4 components) and 12-bit files nvJPEG does not take.
        """
        if self.marker not in _SEQUENTIAL or self.precision != 8:
            return None
        if not self.complete:
            return None
        return {3: "RGB", 1: "GRAY"}.get(self.components)


def read_header(data: bytes) -> JpegHeader | None:
    """The header of JPEG ``data``, or ``None`` (not a JPEG, or unreadable).

    Walks the marker segments from the start-of-image marker to the first
    start-of-scan; the orientation comes from the first APP1 EXIF segment,
    as Pillow takes it.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    pos, size = 2, len(data)
    frame, orientation = None, None
    while pos + 2 <= size:
        if data[pos] != 0xFF:
            return None  # not a marker where one must be: corrupt
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_START_OF_SCAN, _END_OF_IMAGE):
            break
        if pos + 4 > size:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) < length - 2:
            return None  # cut short inside the header
        if marker == _APP1 and orientation is None and segment.startswith(_EXIF):
            orientation = exif_orientation(segment[len(_EXIF) :])
        elif frame is None and (
            marker in _SEQUENTIAL or marker in _PROGRESSIVE or marker in _OTHER_FRAMES
        ):
            if len(segment) < 6:
                return None
            frame = (marker, segment[0], segment[5])
        pos += 2 + length
    if frame is None:
        return None
    complete = data.rstrip(b"\0").endswith(b"\xff\xd9")
    return JpegHeader(*frame, orientation=orientation or 1, complete=complete)


def exif_orientation(tiff: bytes) -> int:
    """The orientation (1-8) in IFD0 of an EXIF TIFF block; 1 when absent
    or unreadable, as :func:`sktransfer._decode.exif_orientation` reads it."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8 or int.from_bytes(tiff[2:4], order) != 42:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for i in range(int.from_bytes(tiff[ifd : ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
        if len(entry) < 12:
            return 1
        if int.from_bytes(entry[:2], order) != ORIENTATION_TAG:
            continue
        width = _INT_TYPES.get(int.from_bytes(entry[2:4], order))
        if width is None or int.from_bytes(entry[4:8], order) != 1:
            return 1  # not one integer: Pillow gives a tuple or bytes
        signed = int.from_bytes(entry[2:4], order) in (8, 9)
        value = int.from_bytes(entry[8 : 8 + width], order, signed=signed)
        return value if 1 <= value <= 8 else 1
    return 1
