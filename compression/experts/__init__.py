"""Language experts (DistilWhisper CLSR) and their baselines: training and publishing.

The CLSR layers themselves are in :mod:`model_store.backends.experts` (the server loads them).
"""
