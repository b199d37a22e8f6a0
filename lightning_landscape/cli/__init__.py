"""The ``lightning-landscape`` command line: compare, plot, summary; it reads records, never trains.

It imports :mod:`lightning_landscape.records`, :mod:`~lightning_landscape.plots` and
:mod:`~lightning_landscape.solutions` (no Lightning). :mod:`.main` parses and dispatches,
:mod:`.compare` is ``compare`` with its shared-solutions report, :mod:`.common` what the commands share.
"""

from lightning_landscape.cli.main import CLIError, build_parser, format_table, main

__all__ = ["CLIError", "build_parser", "format_table", "main"]
