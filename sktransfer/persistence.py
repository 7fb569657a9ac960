"""Keep a fitted estimator: a model file, with a record of what it learned from.

A model file holds two pickles: a header (the format, and a record of what
the estimator was trained on: classes and their counts, backbone,
parameters, and the versions of sktransfer, torch, torchvision,
scikit-learn and skorch that wrote it), then the estimator (joblib).
:func:`load_model` reads the header first, so it refuses a file that is not
an sktransfer model, or one that another version wrote and this one cannot
load, with a message that names both versions.

Loading a pickle runs code that the file chooses: load only model files you
trust. (skops' safer format is no way out here: it cannot write a pipeline
of a CNNFeatureExtractor, whose torch tensors it cannot construct, and it
writes a FineTuneClassifier only with skorch's own torch pickles inside,
to be loaded by trusting 18 types, ``builtins.print`` among them.)
"""

from __future__ import annotations

import datetime
import pickle
import sys
import warnings
from collections import Counter
from pathlib import Path

import joblib
import numpy as np
from sklearn.utils import Bunch

from . import __version__

FORMAT = "sktransfer-model"
FORMAT_VERSION = 1

__all__ = ["load_model", "save_model"]


def save_model(estimator, path, *, y=None, source=None) -> dict:
    """Save a fitted ``estimator`` to ``path`` with a record of its training.

    Parameters
    ----------
    estimator : fitted estimator
        Any fitted scikit-learn estimator or pipeline (typically a
        :class:`~sktransfer.FineTuneClassifier` or a pipeline starting with
        a :class:`~sktransfer.CNNFeatureExtractor`). Its networks are saved
        with CPU tensors: the file loads on machines without a GPU.
    path : str or path-like
        The file to write (``.joblib`` by convention); its folder must exist.
    y : array-like, default=None
        The training labels: their counts go into the record.
    source : str, default=None
        Where the training images came from (an image folder), for the record.

    Returns
    -------
    record : dict
        What was written beside the estimator (see :func:`load_model`).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sktransfer import load_model, save_model
    >>> clf = LogisticRegression().fit(np.eye(4), [0, 1, 0, 1])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.joblib")
    >>> save_model(clf, path, y=[0, 1, 0, 1])["classes"]
    ['0', '1']
    >>> load_model(path).estimator.predict(np.eye(4)).tolist()
    [0, 1, 0, 1]
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Folder {str(path.parent)!r} does not exist.")
    record = _record(estimator, y, source)
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "record": record}
    with open(path, "wb") as file:
        pickle.dump(header, file, protocol=pickle.HIGHEST_PROTOCOL)
        joblib.dump(estimator, file)
    return record


def load_model(path) -> Bunch:
    """Load a model file written by :func:`save_model`.

    Loading a pickle runs code that the file chooses: load only files you
    trust.

    Parameters
    ----------
    path : str or path-like
        A model file.

    Returns
    -------
    model : Bunch
        ``estimator`` (fitted, ready to predict) and ``record`` (a dict:
        ``classes``, ``counts``, ``backbone``, ``estimator`` (its repr),
        ``source``, ``n_images``, ``saved`` (date) and ``versions``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is damaged, not an sktransfer model file, or written by a
        version of sktransfer whose estimator this one cannot load (the
        message names both versions).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file {str(path)!r} does not exist.")
    ours = __version__
    with open(path, "rb") as file:
        try:
            header = pickle.load(file)
        except Exception as exc:  # not a pickle, truncated, another format
            raise ValueError(
                f"Cannot read model file {str(path)!r}: it is damaged or not a "
                f"model file ({type(exc).__name__}: {exc})."
            ) from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(
                f"{str(path)!r} is not an sktransfer model file (it starts with "
                f"a {type(header).__name__}); write one with sktransfer.save_model "
                "or 'sktransfer fit'."
            )
        record = header.get("record", {})
        theirs = record.get("versions", {}).get("sktransfer", "an unknown version")
        if header.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"Model file {str(path)!r} was written by sktransfer {theirs} in a "
                f"newer format than sktransfer {ours} reads; upgrade sktransfer."
            )
        try:
            estimator = joblib.load(file)
        except Exception as exc:
            if theirs == ours:
                raise ValueError(
                    f"Cannot read model file {str(path)!r}: it is damaged "
                    f"({type(exc).__name__}: {exc})."
                ) from None
            raise ValueError(
                f"Cannot load model file {str(path)!r}: it was written by "
                f"sktransfer {theirs}, and sktransfer {ours} cannot load its "
                f"estimator ({type(exc).__name__}: {exc}). Refit it with "
                f"sktransfer {ours}, or load it with sktransfer {theirs}."
            ) from None
    if theirs != ours:
        warnings.warn(
            f"Model file {str(path)!r} was written by sktransfer {theirs}; this "
            f"is sktransfer {ours}. Check its predictions.",
            UserWarning,
            stacklevel=2,
        )
    return Bunch(estimator=estimator, record=record)


def _record(estimator, y, source) -> dict:
    classes = getattr(estimator, "classes_", None)
    record: dict = {
        "classes": None if classes is None else [str(c) for c in classes],
        "estimator": repr(estimator),
        "backbone": _backbone_name(estimator),
        "source": None if source is None else str(source),
        "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "versions": _versions(),
    }
    if y is not None:
        labels = [str(v) for v in np.asarray(y).tolist()]
        record["n_images"] = len(labels)
        record["counts"] = dict(sorted(Counter(labels).items()))
    return record


def _backbone_name(estimator) -> str | None:
    for step in getattr(estimator, "steps", [(None, estimator)]):
        part = step[1]
        backbone = getattr(part, "backbone_", None)
        if backbone is not None:
            return backbone.name
        name = getattr(part, "backbone_name_", None)
        if name is not None:
            return name
    return None


def _versions() -> dict:
    import sklearn
    import skorch
    import torch
    import torchvision

    return {
        "sktransfer": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__,
        "skorch": skorch.__version__,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
