"""The ``tierwise`` command: ``app`` builds the command tree, one module per report command."""
