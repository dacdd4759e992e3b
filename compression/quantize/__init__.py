"""Quantized variants of a stored Whisper: torch dynamic int8, CTranslate2 int8, bitsandbytes LLM.int8
and NF4, and half-precision GPU copies, each published into the store with real bytes on disk."""
