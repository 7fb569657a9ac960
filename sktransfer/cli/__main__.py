"""``python -m sktransfer.cli``: the ``sktransfer`` command."""

import sys

from . import main

sys.exit(main())
