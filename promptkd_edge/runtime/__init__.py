"""Runtime for apps: load a bundle and classify images. Imports no torch unless the torch backend is asked for.

`Classifier` and `Prediction` load on first use, so light submodules (`runtime.cpu`) import without numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptkd_edge.runtime.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from promptkd_edge.runtime import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
