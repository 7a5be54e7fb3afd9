"""The core install, simulated: what the ``train`` and ``analytics`` extras bring cannot be imported.

``install()`` puts a finder first on ``sys.meta_path`` that refuses those modules the way a missing
package does (``ModuleNotFoundError`` with its name), so a process that runs it first behaves as
``pip install tierwise`` without extras would. It imports nothing but the standard library and
``tierwise.cache.extras`` (itself standard library only): it runs before anything else.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

from tierwise.cache.extras import EXTRA_OF

# What the extras bring that tierwise imports by name (test_core_install checks it against pyproject).
BLOCKED = frozenset(EXTRA_OF)


class RefuseExtras(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.split(".")[0]
        if top in BLOCKED:
            print(f"core_only: refused import of {fullname}", file=sys.stderr)
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def install() -> None:
    already = [name for name in sys.modules if name.split(".")[0] in BLOCKED]
    if already:
        raise RuntimeError(f"already imported before the block: {already}")
    sys.meta_path.insert(0, RefuseExtras())


# A process that starts the tierwise command line with the extras refused:
#   python -c "$CLI_WITHOUT_EXTRAS" serve -c config.yaml
CLI_WITHOUT_EXTRAS = (
    "import tests.core_only as c; c.install(); from tierwise.training.cli.app import main; main()"
)
