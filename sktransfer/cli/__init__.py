"""The ``sktransfer`` command: list backbones, embed, evaluate, fit and predict.

One module a sub-command (:mod:`.models`, :mod:`.embed`, :mod:`.evaluate`
with its :mod:`.report`, :mod:`.fit`, :mod:`.predict`). Every sub-command
has ``--help``. Errors print one line on stderr and exit with status 1 (2 for
a wrong command line; ``predict`` exits with 3 when it skipped unreadable
files); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import warnings

from . import embed, evaluate, fit, models, predict
from ._shared import PROG, Parser, UsageError
from .embed import sidecar_path

__all__ = ["console", "main", "sidecar_path"]


def console() -> None:
    """The ``sktransfer`` executable: :func:`main`, then exit with its status.

    At exit CPython collects every object that torch, torchvision and
    scikit-learn made while importing (2 s of a 12 s ``predict`` on a 2-core
    CPU); frozen, they are left to the operating system. ``atexit`` handlers
    and finalizers still run.
    """
    status = main()
    gc.freeze()
    sys.exit(status)


def main(argv=None) -> int:
    """Run the ``sktransfer`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 1 on an error, 2 on a wrong command
    line.
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "debug", False):
        with _one_line_warnings():
            return args.run(args) or 0
    try:
        with _one_line_warnings():
            return args.run(args) or 0
    except UsageError as exc:  # found once the inputs were read
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `sktransfer predict ... | head`: stop quietly
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # never a traceback: one line, non-zero exit
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (OSError, ValueError, ImportError)):
        text = f"{type(exc).__name__}: {text} (rerun with --debug for the traceback)"
    return text


@contextlib.contextmanager
def _one_line_warnings():
    """Show warnings as ``sktransfer: warning: ...`` lines, without source lines."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=ResourceWarning)
        warnings.showwarning = show
        yield


def _build_parser() -> Parser:
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Transfer learning with pretrained CNNs: embeddings, evaluation, "
        "trained models and their predictions for image files and folders.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in (models, embed, evaluate, fit, predict):
        command.add_parser(sub)
    return parser


if __name__ == "__main__":
    console()
