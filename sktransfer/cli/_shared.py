"""What the sub-commands share: the parser, argument types, common options,
input collection and tables."""

from __future__ import annotations

import argparse
import glob
import os
from pathlib import Path

import numpy as np

PROG = "sktransfer"


class UsageError(Exception):
    """A wrong command line: exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def word_or_int_at_least(word: str, low: int):
    """``word`` itself, or an integer of at least ``low``."""

    def parse(text: str):
        if text == word:
            return word
        try:
            return int_at_least(low)(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {word!r} or an integer >= {low}, got {text!r}"
            ) from None

    return parse


def add_common(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """``--model``, ``--weights``, ``--batch-size``, ``--device``, ``--quiet``
    (with ``model``) and ``--debug``."""
    if model:
        parser.add_argument(
            "--model",
            default="resnet18",
            help="backbone name (see 'sktransfer models'; default: resnet18)",
        )
        parser.add_argument(
            "--weights",
            default="DEFAULT",
            help="DEFAULT, a weights name (IMAGENET1K_V1), a local .pth/.safetensors "
            "file, or 'none' for a random network",
        )
        parser.add_argument("--batch-size", type=int_at_least(1), default=32)
        parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
        parser.add_argument(
            "-q", "--quiet", action="store_true", help="no progress bar"
        )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks instead of one-line errors",
    )


def weights(args) -> str | None:
    return None if str(args.weights).lower() == "none" else args.weights


def print_table(header, rows) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)
            ).rstrip()
        )


def collect(
    inputs: list[str],
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """File names (and labels for an image folder) from INPUT arguments.

    A single folder with class sub-folders is an image folder
    ``root/<class>/<image>``: its labels are returned too. Otherwise each
    argument is an image file, a folder standing for the image files below
    it (sorted, hidden names skipped), a glob pattern (``'photos/*.jpg'``)
    or a ``.txt`` file listing image paths, one per line (relative to the
    list's folder), in the order given.
    """
    from ..datasets import IMAGE_EXTENSIONS, _class_files, load_image_folder

    if len(inputs) == 1 and os.path.isdir(inputs[0]):
        with os.scandir(inputs[0]) as scan:
            entries = list(scan)
        if any(e.is_dir() and not e.name.startswith(".") for e in entries):
            data = load_image_folder(inputs[0])
            return data.filenames, data.target, data.target_names
    filenames: list[str] = []
    for path in inputs:
        if os.path.isdir(path):
            files = _class_files(Path(path), IMAGE_EXTENSIONS, skipped=[])
            if not files:
                raise ValueError(
                    f"Folder {path!r} holds no image files (extensions: "
                    f"{', '.join(IMAGE_EXTENSIONS)})."
                )
            filenames.extend(os.path.join(path, f) for f in files)
        elif path.lower().endswith(".txt") and os.path.isfile(path):
            filenames.extend(_listed(path))
        elif os.path.exists(path):
            filenames.append(path)
        elif glob.has_magic(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise FileNotFoundError(f"No file matches {path!r}.")
            filenames.extend(m for m in matches if os.path.isfile(m))
        else:
            raise FileNotFoundError(f"Input {path!r} does not exist.")
    return np.asarray(filenames), None, None


def _listed(path: str) -> list[str]:
    """The image paths a ``.txt`` file lists (blank lines and ``#`` comments
    skipped), relative to its folder."""
    folder = os.path.dirname(path)
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle]
    files = [
        line if os.path.isabs(line) else os.path.join(folder, line)
        for line in lines
        if line and not line.startswith("#")
    ]
    if not files:
        raise ValueError(f"{path!r} lists no image paths (one per line).")
    return files


def check_folder_of(path: Path, what: str) -> None:
    """Fail early (before any training) when ``path``'s folder is missing."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"Folder {str(parent)!r} for {what} does not exist.")
