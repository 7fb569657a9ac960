"""``python -m sktransfer.cli``: the ``sktransfer`` command."""

from . import console

console()
