"""``python -m lightning_landscape``: the same command line as ``lightning-landscape``."""

import sys

from lightning_landscape.cli.main import main

sys.exit(main())
