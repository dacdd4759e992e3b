"""The name under which transformers' Whisper takes and returns its key/value cache.

transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns on every call and is
announced for removal in 5.40); 4.x knows only ``past_key_values``. hush supports both, so callers
read the name once from the model's ``forward`` signature, pass the cache as ``{name: cache}`` and
read it back with ``getattr(output, name)``.
"""

from __future__ import annotations

import inspect

from torch import nn

NEW_NAME = "cache"
OLD_NAME = "past_key_values"


def cache_keyword(model: nn.Module) -> str:
    """``"cache"`` where ``model.forward`` takes it, else ``"past_key_values"``."""
    parameters = inspect.signature(type(model).forward).parameters
    return NEW_NAME if NEW_NAME in parameters else OLD_NAME
