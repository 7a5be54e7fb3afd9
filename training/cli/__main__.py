"""``python -m tierwise.training.cli``: the ``tierwise`` command."""

from tierwise.training.cli.app import main

main()
