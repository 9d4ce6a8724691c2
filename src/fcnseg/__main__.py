"""``python -m fcnseg``: the command line, as the ``fcnseg`` script runs it."""

import sys

from .cli import main

sys.exit(main())
