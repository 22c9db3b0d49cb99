"""``python -m genserve.cli``: the same commands as the ``genserve`` console script."""

from genserve.cli.commands import main

main()
