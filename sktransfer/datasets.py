"""Datasets on disk: image folders in the ``root/<class>/<image>`` layout."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._suggest import did_you_mean

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

#: File extensions read as images by default (compared case-insensitively).
IMAGE_EXTENSIONS = (
    ".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp",
)  # fmt: skip


def load_image_folder(root, *, return_X_y=False, categories=None, extensions=None):
    """Load the file names and labels of an image folder ``root/<class>/<image>``.

    The layout of torchvision's ``ImageFolder``: every sub-folder of ``root`` is
    a class, named after the folder, holding its images (also in nested
    folders). Like :func:`sklearn.datasets.load_files`, only file names are
    returned; sktransfer's estimators read the images lazily from them.

    Classes and files are sorted, so the result is deterministic: ``target``
    ``i`` is ``target_names[i]``, the ``i``-th class folder in sorted order.
    Hidden files and folders (names starting with ``"."``, such as
    ``.DS_Store`` or ``.ipynb_checkpoints``) are skipped silently.

    **Files that are not images** are recognised by their extension: files
    whose extension is not in ``extensions``, files directly in ``root`` and
    class folders without any image are skipped with one warning that lists
    them. Files with an image extension are not opened here: a corrupt one
    raises :class:`~sktransfer.ImageDecodeError`, naming the file, when the
    images are read.

    Parameters
    ----------
    root : str or path-like
        The folder that holds one sub-folder per class.
    return_X_y : bool, default=False
        Return ``(filenames, target)`` instead of a Bunch.
    categories : list of str, default=None
        Load only these classes (folder names); ``None`` loads all.
        ``target`` then counts within ``sorted(categories)``.
    extensions : tuple of str, default=None
        File extensions read as images, compared case-insensitively;
        ``None`` means :data:`IMAGE_EXTENSIONS` (``.jpg``, ``.png``, ...).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``filenames`` (ndarray of str, ``root`` joined with each file's path),
        ``target`` (ndarray of int), ``target_names`` (list of str) and
        ``root`` (str).
    (filenames, target) : tuple
        When ``return_X_y`` is True.

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist.
    NotADirectoryError
        ``root`` is a file.
    ValueError
        ``root`` has no class folders, no images, or ``categories`` names a
        class that is not there.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sktransfer.datasets import load_image_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["cat", "dog"]:
    ...     (root / name).mkdir()
    ...     for i in range(2):
    ...         Image.new("RGB", (8, 8)).save(root / name / f"{i}.png")
    >>> data = load_image_folder(root)
    >>> data.target_names, data.target.tolist()
    (['cat', 'dog'], [0, 0, 1, 1])
    >>> [Path(f).relative_to(root).as_posix() for f in data.filenames[:2]]
    ['cat/0.png', 'cat/1.png']
    """
    root_str = os.fspath(root)
    path = Path(root_str).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"Image folder {root_str!r} does not exist. Expected a folder with one "
            "sub-folder of images per class: root/<class>/<image>."
        )
    if not path.is_dir():
        raise NotADirectoryError(
            f"{root_str!r} is a file, not an image folder. Pass the folder that "
            "holds one sub-folder per class (root/<class>/<image>)."
        )
    suffixes = _check_extensions(extensions)
    skipped: list[str] = []
    class_dirs = []
    with os.scandir(path) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            class_dirs.append(entry.name)
        else:
            skipped.append(f"{entry.name} (not in a class folder)")
    if not class_dirs:
        raise ValueError(
            f"Image folder {root_str!r} has no class sub-folders (found "
            f"{len(skipped)} file(s) directly in it). Expected root/<class>/<image>: "
            "put each class' images in a folder named after the class."
        )
    class_dirs = _select(class_dirs, categories, root_str)

    filenames: list[str] = []
    target: list[int] = []
    target_names: list[str] = []
    for name in class_dirs:
        files = _class_files(path / name, suffixes, skipped)
        if not files:
            skipped.append(f"{name}/ (a class folder without images)")
            continue
        target_names.append(name)
        filenames.extend(os.path.join(root_str, name, f) for f in files)
        target.extend([len(target_names) - 1] * len(files))
    if not filenames:
        raise ValueError(
            f"Image folder {root_str!r} holds no image files: none of its class "
            f"folders {class_dirs[:5]} has a file with an extension in {suffixes}."
        )
    if skipped:
        shown = ", ".join(skipped[:5]) + (
            f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        warnings.warn(
            f"load_image_folder skipped {len(skipped)} item(s) in {root_str!r} that "
            f"are not images in a class folder: {shown}. Image extensions: "
            f"{', '.join(suffixes)} (change with extensions=).",
            UserWarning,
            stacklevel=2,
        )
    X, y = np.asarray(filenames, dtype=str), np.asarray(target, dtype=np.int64)
    if return_X_y:
        return X, y
    return Bunch(filenames=X, target=y, target_names=target_names, root=root_str)


def _check_extensions(extensions) -> tuple[str, ...]:
    if extensions is None:
        return IMAGE_EXTENSIONS
    if isinstance(extensions, str):
        extensions = (extensions,)
    suffixes = tuple(
        e.lower() if str(e).startswith(".") else f".{str(e).lower()}"
        for e in extensions
    )
    if not suffixes:
        raise ValueError(
            "extensions is empty; give at least one, e.g. ('.jpg', '.png')."
        )
    return suffixes


def _select(class_dirs: list[str], categories, root: str) -> list[str]:
    if categories is None:
        return class_dirs
    if isinstance(categories, str):
        categories = [categories]
    missing = [c for c in categories if c not in class_dirs]
    if missing:
        hint = did_you_mean(missing[0], class_dirs)
        raise ValueError(
            f"categories {missing} are not class folders of {root!r}.{hint} "
            f"Classes found: {class_dirs[:10]}{' ...' if len(class_dirs) > 10 else ''}."
        )
    return sorted(set(categories))


def _class_files(
    folder: Path, suffixes: tuple[str, ...], skipped: list[str]
) -> list[str]:
    """Image files below ``folder`` (relative, sorted), skipping hidden names."""
    files = []
    for dirpath, dirnames, names in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(names):
            if name.startswith("."):
                continue
            relative = name if rel == "." else os.path.join(rel, name)
            if os.path.splitext(name)[1].lower() in suffixes:
                files.append(relative)
            else:
                skipped.append(os.path.join(folder.name, relative))
    return sorted(files)
