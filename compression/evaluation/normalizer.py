"""Text normalisation lives in :mod:`model_store.normalizer` (the server scores live CER with it too)."""

from model_store.normalizer import normalize, raw

__all__ = ["normalize", "raw"]
