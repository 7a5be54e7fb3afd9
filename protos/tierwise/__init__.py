"""tierwise: route every LLM prompt to the cheapest tier that answers it well enough.

The import name ``tierwise`` is this folder; its subpackages are the repository's
top-level folders (see docs/architecture.md):

- ``tierwise.v1``: the generated gRPC contract (protoc's output for ``tierwise/v1/tierwise.proto``)
- ``tierwise.cache``: the semantic cache
- ``tierwise.classifier``: the adequacy classifier and its model registry
- ``tierwise.router``: the serving process (request path, policies, providers, ledger, budgets, ...)
- ``tierwise.training``: training, evaluation, the demo and the command line
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tierwise")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
