"""Measuring variants on the corpus: the evaluation runner, latency, comparison tables.

Text normalisation and error scoring live in :mod:`model_store.normalizer` and
:mod:`model_store.scoring`, shared with the server.
"""
