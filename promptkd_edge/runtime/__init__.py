"""Runtime for apps: load a bundle and classify images. Imports no torch unless the torch backend is asked for."""

from promptkd_edge.runtime.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction"]
