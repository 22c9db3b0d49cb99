"""The command line (typer): ``genserve serve``, the pipeline commands, models, workflows, cluster.

May import everything, ``app/`` included; nothing imports it. ``main`` is the console entry point.
"""

from genserve.cli.commands import main

__all__ = ["main"]
