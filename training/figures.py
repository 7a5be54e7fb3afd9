"""Report figures: matplotlib on its file-only backend, imported only when a figure is drawn
(the CLI and the server start without it)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Lay out, write and close ``figure``; the parent folder is created."""
    import matplotlib.pyplot as plt

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure.tight_layout()
        figure.savefig(target, dpi=dpi)
    finally:
        plt.close(figure)
    return target
