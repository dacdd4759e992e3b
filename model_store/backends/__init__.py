"""Engines that run a stored variant: transformers (PyTorch) and CTranslate2."""
