"""``python -m symode``: the ``symode`` command."""

import sys

from .bench.cli import main

sys.exit(main())
