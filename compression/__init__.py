"""Compressing Whisper models and measuring what the compression costs in accuracy."""
