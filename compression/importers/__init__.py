"""Turning a Whisper checkpoint (bundled CTranslate2 weights, a local directory, a hub id) into a variant."""
